//! Fault, hostile-input and load tests: many crashes while records keep arriving
//! (some of them in the middle of a checkpoint write), a corpus of bad records
//! through both doors (the ingest API and the topic itself), and the ingest API
//! under sustained load. Each test reports its figures with [`report`].
//!
//! `scripts/test.sh` runs these one at a time, after the other tests, so that two
//! heavy tests never share the two cores.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::kafka::*;
use crate::mongo::MongoServer;
use crate::support::*;

const RECORDS_PATH: &str = "/v1/topics/products/records";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator: a failing run prints its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Whether a checkpoint write was cut short: its temp directory or pointer is still there.
fn write_in_progress(state: &Path) -> bool {
    std::fs::read_dir(state.join("checkpoints"))
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".tmp")))
        .unwrap_or(false)
}

/// The first value of a one-cell CSV query result.
fn single_value(csv: &str) -> i64 {
    csv.lines().nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no number in {csv:?}"))
}

/// Sum of the end offsets of `topic`'s partitions: records it holds.
fn records_in_topic(brokers: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).sum()
}

fn spawn_ingest(broker: &Broker, extra: &[&str]) -> (Killed, String) {
    crate::kafka::spawn_ingest(["--rate-limit", "0", "--kafka-brokers", broker.addr.as_str()].iter().chain(extra))
}

/// Crash `trendflow run` (Kafka in, MongoDB out, a checkpoint after every
/// micro-batch) ten times while the ingest API keeps accepting records: eight SIGKILLs
/// at random moments while it consumes, and two aborts in the middle of a checkpoint
/// write. Every restart must come up from the last complete checkpoint, and after the
/// last one every view in MongoDB equals the batch result over the topic and over the
/// accepted records: nothing lost, nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_while_ingesting_lose_nothing() {
    const KILLS: usize = 10;
    let total = env_or("TRENDFLOW_CHAOS_RECORDS", 200_000);
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start("crashes", &tmp.path().join("mongo"));
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", &total.to_string(), "--seed", "23", "--out"]).arg(&data));
    let records = json_records(&data, tmp.path()).await;
    let accepted_file = tmp.path().join("accepted.ndjson");
    std::fs::write(&accepted_file, records.join(&b'\n')).unwrap();
    let (_ingest, api) = spawn_ingest(&broker, &["--partitions", "4"]);
    // Records keep arriving for about 60 s, through the kills.
    let feeder = std::thread::spawn(move || {
        let chunks: Vec<&[Vec<u8>]> = records.chunks(2_000).collect();
        let pause = Duration::from_millis(60_000 / chunks.len() as u64);
        let mut accepted = 0;
        for chunk in chunks {
            let (status, body) = http_post(&api, RECORDS_PATH, &chunk.join(&b'\n'));
            assert_eq!((status, body["accepted"].as_u64()), (200, Some(chunk.len() as u64)), "{body}");
            accepted += chunk.len();
            std::thread::sleep(pause);
        }
        accepted as i64
    });

    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let state = tmp.path().join("state");
    let mongo_args = ["--mongodb-uri", &mongo.uri, "--mongodb-database", &mongo.database, "--mongodb-write-concern", "1"];
    let run = |extra: &[&str]| {
        let mut command = trendflow();
        command
            .args(["run", "--flight-addr", "none", "--checkpoint-interval-ms", "0", "--kafka-brokers", &broker.addr])
            .args(["--source", &categories])
            .args(mongo_args)
            .arg("--state")
            .arg(&state)
            .args(extra);
        command
    };
    let seed = std::process::id() as u64;
    let mut rng = Lcg(seed);
    let (mut cut_writes, mut while_ingesting, mut progress) = (0, 0, Vec::new());
    for kill in 0..KILLS {
        let log = tmp.path().join(format!("run-{kill}.log"));
        let max_rows = ["5000", "20000", "10000", "8000"][kill % 4];
        // Two of the crashes cut a checkpoint write short, after its first state file: the
        // first a delta (or full) checkpoint, the second a compaction of a chain of deltas.
        let cut = kill % 4 == 3;
        let mut command = run(&["--max-rows", max_rows, "--checkpoint-max-deltas", if cut { "2" } else { "32" }]);
        if cut {
            let at = if cut_writes == 0 { format!("checkpoint-write:{}", 2 + rng.below(3)) } else { "checkpoint-compaction:1".into() };
            command.env("TRENDFLOW_ABORT_AT", at);
        }
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = Killed(command.stdout(Stdio::null()).stderr(stderr).spawn().unwrap());
        let before = checkpointed_records(&state);
        let started = Instant::now();
        if cut {
            let exit = loop {
                if let Some(exit) = child.0.try_wait().unwrap() {
                    break exit;
                }
                assert!(started.elapsed() < Duration::from_secs(120), "run {kill} did not reach its checkpoint write (seed {seed})");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(!exit.success() && write_in_progress(&state), "run {kill} should have died mid-write: {exit:?}");
            cut_writes += 1;
        } else {
            // A random moment while it consumes: after its first new checkpoint (or 10 s).
            while checkpointed_records(&state) == before && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(rng.below(2_000)));
            let alive = child.0.try_wait().unwrap().is_none();
            assert!(alive, "run {kill} exited by itself (seed {seed}):\n{}", std::fs::read_to_string(&log).unwrap());
            child.0.kill().unwrap();
            child.0.wait().unwrap();
        }
        while_ingesting += usize::from(!feeder.is_finished());
        progress.push(checkpointed_records(&state));
    }
    let accepted = feeder.join().unwrap();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]) && progress[KILLS - 1] > 0, "no progress: {progress:?} (seed {seed})");
    let last = ok(&mut run(&["--until-idle", "--max-rows", "5000"]));
    assert!(last.contains("resumed from checkpoint") && last.contains(" 0 rejected"), "{last}");

    // Read from MongoDB; the state directory supplies only the catalog.
    let from_mongo =
        ["--mongodb-uri".as_ref(), mongo.uri.as_ref(), "--mongodb-database".as_ref(), mongo.database.as_ref(), "--state".as_ref(), state.as_os_str()];
    let in_mongo = query_views(&from_mongo, true);
    let from_topic = tmp.path().join("from_topic");
    let products = format!("products=kafka://{}/products", broker.addr);
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_topic));
    assert_same_csv(&in_mongo, &views_csv(&from_topic, true), &format!("MongoDB vs batch over the topic, seed {seed}"));
    let from_file = tmp.path().join("from_file");
    let products = format!("products=file:{}", accepted_file.display());
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_file));
    assert_same_csv(&in_mongo[..4], &views_csv(&from_file, false), &format!("MongoDB vs batch over the accepted records, seed {seed}"));
    let counted =
        single_value(&ok(trendflow().args(["query", "SELECT SUM(products) AS n FROM category_distribution", "--format", "csv"]).args(from_mongo)));
    let in_topic = records_in_topic(&broker.addr, "products", 4);
    let (lost, duplicated) = ((accepted - counted).max(0), (counted - accepted).max(0));
    report(
        "crashes_while_ingesting_lose_nothing",
        serde_json::json!({
            "records_accepted": accepted, "records_in_topic": in_topic, "records_in_views": counted,
            "kills": KILLS, "kills_while_ingesting": while_ingesting, "kills_during_checkpoint_write": cut_writes,
            "checkpointed_records_after_each_kill": progress, "lost": lost, "duplicated": duplicated, "seed": seed,
        }),
    );
    assert_eq!((lost, duplicated, in_topic), (0, 0, accepted));
    assert!(while_ingesting >= KILLS / 2, "only {while_ingesting} crashes came while records were arriving");
}

/// One hostile record, and what must become of it: accepted, or rejected with a
/// reason containing the given text.
struct Hostile {
    what: &'static str,
    record: Vec<u8>,
    rejected_because: Option<&'static str>,
}

fn hostile_corpus(oversized_bytes: usize) -> Vec<Hostile> {
    let hostile = |what, record: &[u8], rejected_because| Hostile { what, record: record.to_vec(), rejected_because };
    let long_title = format!(r#"{{"asin": "BLONG", "title": "{}", "price": 20.0, "category_id": 1}}"#, "t".repeat(500_000));
    let oversized = format!(r#"{{"asin": "BHUGE", "title": "{}"}}"#, "x".repeat(oversized_bytes));
    vec![
        hostile("valid", br#"{"asin": "BDUP", "price": 10.0, "category_id": 1}"#, None),
        hostile("invalid UTF-8", b"{\"asin\": \"B\xff\xfe\"}", Some("invalid UTF-8")),
        hostile("truncated JSON", br#"{"asin": "BTRUNC", "pri"#, Some("invalid JSON")),
        hostile("wrong type (text price)", br#"{"asin": "BTYPE", "price": "three"}"#, Some("three")),
        hostile("wrong type (object asin)", br#"{"asin": {"nested": 1}}"#, Some("invalid JSON")),
        hostile("not an object", b"[1, 2, 3]", Some("invalid JSON")),
        hostile("missing key", br#"{"price": 1.0}"#, Some("`asin` is required")),
        hostile("NaN price", br#"{"asin": "BNAN", "price": "NaN"}"#, Some("not a finite number")),
        hostile("infinite price", br#"{"asin": "BINF", "price": "-Infinity"}"#, Some("not a finite number")),
        hostile("integer out of range", br#"{"asin": "BBIG", "reviews": 1e400}"#, Some("reviews")),
        hostile("huge string (500 kB title)", long_title.as_bytes(), None),
        hostile("oversized record", oversized.as_bytes(), Some("larger than max_record_bytes")),
        hostile("negative price", br#"{"asin": "BNEG", "price": -5.0, "category_id": 1}"#, None),
        hostile("unknown category id", br#"{"asin": "BCAT", "price": 30.0, "category_id": 999999}"#, None),
        hostile("duplicate ASIN (an update)", br#"{"asin": "BDUP", "price": 12.0, "category_id": 1}"#, None),
    ]
}

/// A corpus of bad records through both doors. Posted to the ingest API, each bad
/// record is refused with its index and reason and never produced; written straight
/// to the topic (as a producer that bypasses the API would), each lands in the
/// dead-letter topic with its reason. The good and odd-but-valid ones are handled by
/// the documented semantics, and every count adds up: in = processed + rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_accounted_for() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let (_ingest, api) = spawn_ingest(&broker, &["--partitions", "1", "--max-body-bytes", "33554432"]);
    // Through the API: a 10 MB record is refused by size before it reaches Kafka.
    let corpus = hostile_corpus(10 << 20);
    let body = corpus.iter().map(|h| h.record.as_slice()).collect::<Vec<_>>().join(&b'\n');
    let (status, answer) = http_post(&api, RECORDS_PATH, &body);
    let expected_rejections: Vec<(usize, &str)> = corpus.iter().enumerate().filter_map(|(i, h)| h.rejected_because.map(|r| (i, r))).collect();
    let good = corpus.len() - expected_rejections.len();
    assert_eq!(
        (status, answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (200, Some(good as u64), Some(expected_rejections.len() as u64)),
        "{answer}"
    );
    for (error, (index, reason)) in answer["errors"].as_array().unwrap().iter().zip(&expected_rejections) {
        let given = error["reason"].as_str().unwrap();
        assert!(error["index"] == *index && given.contains(reason), "{}: expected `{reason}` at {index}, got {error}", corpus[*index].what);
    }
    assert_eq!(records_in_topic(&broker.addr, "products", 1), good as i64, "only accepted records were produced");

    // Straight to the topic: the same 10 MB record, which the broker takes (its
    // message.max.bytes allows 20 MiB) and the job dead-letters whole.
    let corpus = hostile_corpus(10 << 20);
    let producer = producer(&broker.addr);
    for hostile in &corpus {
        send(&producer, "products", None, &hostile.record).await;
    }
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", "10", "--out"]).arg(&data));
    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let state = tmp.path().join("state");
    let summary = ok(trendflow()
        .args(["run", "--until-idle", "--flight-addr", "none", "--kafka-brokers", &broker.addr, "--source", &categories, "--state"])
        .arg(&state));
    // The accepted products of both doors, and every category of the file.
    let categories_file = csv_rows(&data.join("categories.csv"));
    let processed = 2 * good + categories_file;
    // "processed N records in … micro-batches (…), M rejected (see …)"
    let number_before = |marker: &str| -> usize {
        let head = summary.split(marker).next().unwrap_or_default();
        head.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no number before `{marker}` in {summary}"))
    };
    let (run_processed, run_rejected) = (number_before(" records in"), number_before(" rejected"));
    assert_eq!((run_processed, run_rejected), (processed, expected_rejections.len()), "{summary}");
    let letters = read_topic(&broker.addr, "products.dlq");
    assert_eq!(letters.len(), expected_rejections.len());
    for ((headers, payload), (index, reason)) in letters.iter().zip(&expected_rejections) {
        assert!(headers["trendflow.reason"].contains(reason), "{}: {headers:?}", corpus[*index].what);
        assert_eq!(payload, &corpus[*index].record, "the original bytes are kept");
    }

    // The documented semantics of the valid oddities, through the views: products is an
    // upsert stream on asin, so each ASIN counts once however often it was sent.
    let query = |sql: &str| single_value(&ok(trendflow().args(["query", sql, "--format", "csv", "--state"]).arg(&state)));
    let asins: std::collections::BTreeSet<String> = corpus
        .iter()
        .filter(|h| h.rejected_because.is_none())
        .map(|h| serde_json::from_slice::<serde_json::Value>(&h.record).unwrap()["asin"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(asins.len(), 4, "{asins:?}");
    assert_eq!(query("SELECT SUM(products) FROM category_distribution"), 4, "every accepted ASIN counts once");
    assert_eq!(query("SELECT products FROM category_distribution WHERE category_id = 1"), 3, "a repeated ASIN is an update");
    assert_eq!(query("SELECT best_sellers FROM category_distribution WHERE category_id = 1"), 0);
    assert_eq!(
        query("SELECT CAST(max_price * 10 AS BIGINT) FROM avg_price_by_category WHERE category_id = 1"),
        200,
        "BDUP's update to 12.0 is below BLONG's 20.0"
    );
    assert_eq!(
        query("SELECT CAST(min_price * 10 AS BIGINT) FROM avg_price_by_category WHERE category_id = 1"),
        120,
        "BDUP's first price, 10.0, is replaced"
    );
    assert_eq!(
        query("SELECT products FROM category_distribution WHERE category_id = 999999 AND category_name IS NULL"),
        1,
        "unknown ids keep their own row"
    );
    assert_eq!(query("SELECT SUM(products) FROM price_levels"), 3, "prices <= 0 are unpriced");
    assert_eq!(query("SELECT COUNT(*) FROM avg_price_by_category WHERE min_price <= 0"), 0);
    let kinds: Vec<&str> = corpus.iter().map(|h| h.what).collect();
    let (by_api, dead_lettered) = (answer["rejected"].as_u64().unwrap() as usize, letters.len());
    let total = 2 * corpus.len();
    report(
        "hostile_records_are_accounted_for",
        serde_json::json!({
            "kinds": kinds, "records_in": total, "categories_in": categories_file, "processed": run_processed, "rejected_by_api": by_api,
            "dead_lettered": dead_lettered, "rejected_by_the_run": run_rejected,
        }),
    );
    assert_eq!(total + categories_file, run_processed + by_api + dead_lettered, "in = processed + rejected");
}

/// Resident and peak memory of a process, in MB (Linux).
fn memory_mb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()).unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The ingest API under sustained load (`TRENDFLOW_LOAD_SECONDS`, 60 by default)
/// from four loopback clients: no request fails, memory stays bounded, and the
/// records it accepted are exactly the records in the topic.
#[test]
fn ingest_holds_up_under_sustained_load() {
    const CLIENTS: usize = 4;
    let seconds = env_or("TRENDFLOW_LOAD_SECONDS", 60) as u64;
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", "20000", "--seed", "3", "--out"]).arg(&data));
    let records = tokio::runtime::Runtime::new().unwrap().block_on(json_records(&data, tmp.path()));
    let bodies: Arc<Vec<(Vec<u8>, u64)>> = Arc::new(records.chunks(500).map(|c| (c.join(&b'\n'), c.len() as u64)).collect());
    let (ingest, api) = spawn_ingest(&broker, &["--partitions", "4"]);
    let pid = ingest.0.id();
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, failures, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (api, bodies, stop) = (api.clone(), bodies.clone(), stop.clone());
            let (accepted, failures, requests) = (accepted.clone(), failures.clone(), requests.clone());
            std::thread::spawn(move || {
                let mut next = client;
                while !stop.load(Ordering::Relaxed) {
                    let (body, count) = &bodies[next % bodies.len()];
                    let (status, answer) = http_post(&api, RECORDS_PATH, body);
                    requests.fetch_add(1, Ordering::Relaxed);
                    match (status, answer["accepted"].as_u64()) {
                        (200, Some(n)) if n == *count => accepted.fetch_add(n, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    next += CLIENTS;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(5));
        rss.push(memory_mb(pid).0);
    }
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let (_, peak_mb) = memory_mb(pid);
    let accepted = accepted.load(Ordering::Relaxed) as i64;
    let in_topic = records_in_topic(&broker.addr, "products", 4);
    report(
        "ingest_holds_up_under_sustained_load",
        serde_json::json!({
            "seconds": elapsed.round(), "clients": CLIENTS, "requests": requests.load(Ordering::Relaxed),
            "failed_requests": failures.load(Ordering::Relaxed), "records_accepted": accepted, "records_in_topic": in_topic,
            "records_per_second": (accepted as f64 / elapsed).round(), "rss_mb_every_5s": rss, "peak_rss_mb": peak_mb,
        }),
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert_eq!(in_topic, accepted, "records accepted = records in Kafka");
    // Requests are bounded by --max-body-bytes and answered once acknowledged, so memory
    // must not grow with the number of records served.
    assert!(peak_mb < 512, "the ingest process peaked at {peak_mb} MB: {rss:?}");
}

/// Secrets never leave the process: a MongoDB password given in the URI (from the
/// environment) and the Flight SQL password appear neither in the logs nor in
/// `/status` and `/metrics`, and a connection error shows the URI redacted.
#[test]
fn secrets_stay_out_of_logs_and_status() {
    let tmp = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let uri = format!("mongodb://trend:Pa55-mongo@{closed}/?serverSelectionTimeoutMS=500");
    let output = trendflow()
        .args(["run", "--until-idle", "--flight-addr", "none", "--gen-rows", "100", "--state"])
        .arg(tmp.path().join("a"))
        .env("TRENDFLOW_MONGODB_URI", &uri)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("trend:***@") && !stderr.contains("Pa55-mongo"), "{stderr}");

    let log = tmp.path().join("job.log");
    let mut job = Killed(
        trendflow()
            .args(["run", "--flight-addr", "127.0.0.1:0", "--gen-rows", "1000", "--state"])
            .arg(tmp.path().join("b"))
            .env("TRENDFLOW_FLIGHT_AUTH", "basic:admin:Pa55-flight")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(rest) = text.split("status endpoint on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline && job.0.try_wait().unwrap().is_none(), "the job did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut seen = String::new();
    for path in ["/status", "/metrics", "/readyz"] {
        seen.push_str(&http("GET", &status, path, b"").1);
    }
    job.0.kill().unwrap();
    job.0.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains("trendflow_records_total"), "{seen}");
    assert!(!seen.contains("Pa55") && !logged.contains("Pa55"), "a secret leaked:\n{seen}\n{logged}");
}

/// A three-broker cluster, `products` replicated three ways: the leader of a partition
/// the job reads is SIGKILLed while the job consumes, and restarted later. Records are
/// written (acks=all, two in sync) while it is down and after it is back; the job goes
/// on reading from the new leader without a restart of its own; afterwards every record
/// is counted once, the group's committed offsets cover the topic, and the views equal
/// `batch` over the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_partition_leader_loses_nothing() {
    const ROWS: i64 = 30_000;
    let mut cluster = Broker::cluster(3);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", &ROWS.to_string(), "--seed", "31", "--out"]).arg(&data));
    let parts = split_csv(&data.join("products.csv"), tmp.path(), 3);
    let brokers = cluster.addr.clone();
    let produce = |file: &Path| {
        let out = ok(trendflow()
            .args(["produce", "--partitions", "3", "--kafka-brokers", &brokers, "--file"])
            .arg(file)
            .arg("--state")
            .arg(tmp.path().join("p")));
        assert!(out.contains("produced 10000 records"), "{out}");
    };
    produce(&parts[0]);
    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let state = tmp.path().join("state");
    let log = tmp.path().join("job.log");
    let mut job = spawn_logged_run(&cluster.addr, &categories, &state, &log, &["--max-rows", "300", "--kafka-group", "leader-kill"]);
    let wait_for = |records: i64| wait_for_checkpointed(&state, &log, records);
    wait_for(ROWS / 6);
    let (leader, in_sync) = cluster.leader_of("products", 0);
    assert_eq!(in_sync.len(), 3, "partition 0 is in sync on every broker before the kill");
    cluster.kill_node(leader);
    let killed_at = checkpointed_records(&state);
    // The controller fences the lost broker after its session times out and moves its
    // leaderships; records written after that, while the old leader is still down,
    // are read from the new one.
    let moved = Instant::now();
    let new_leader = loop {
        let (now, in_sync) = cluster.leader_of("products", 0);
        if now != leader && now >= 0 {
            break now;
        }
        assert!(moved.elapsed() < Duration::from_secs(60), "partition 0 has leader {now}, in sync {in_sync:?}, after losing {leader}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let failover_ms = moved.elapsed().as_millis();
    produce(&parts[1]);
    wait_for(2 * ROWS / 3);
    cluster.spawn();
    produce(&parts[2]);
    wait_for(ROWS);
    assert!(job.0.try_wait().unwrap().is_none(), "the job exited:\n{}", std::fs::read_to_string(&log).unwrap());
    let counted = single_value(&ok(trendflow()
        .args(["query", "SELECT SUM(products) AS n FROM category_distribution", "--format", "csv", "--state"])
        .arg(&state)));
    let in_topic = records_in_topic(&cluster.addr, "products", 3);
    let committed = committed_total(&cluster.addr, "leader-kill", "products", 3, ROWS);
    report(
        "a_lost_partition_leader_loses_nothing",
        serde_json::json!({
            "records": ROWS, "records_in_topic": in_topic, "records_in_views": counted, "committed_offsets": committed,
            "killed_leader": leader, "new_leader": new_leader, "checkpointed_when_killed": killed_at, "leader_moved_after_ms": failover_ms,
        }),
    );
    assert_eq!((in_topic, counted, committed), (ROWS, ROWS, ROWS), "topic, views and committed offsets hold every record once");
    let from_topic = tmp.path().join("from_topic");
    let products = format!("products=kafka://{}/products", cluster.addr);
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_topic));
    assert_same_csv(&views_csv(&state, true), &views_csv(&from_topic, true), "views after the leader kill");
}
