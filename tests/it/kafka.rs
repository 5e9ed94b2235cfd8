//! Kafka end to end against Apache Kafka (a KRaft broker started per test on free
//! loopback ports, see `broker.rs`): ingest API → topic → job → views, exactly once
//! through SIGKILLs, the dead-letter topic, and keyed producing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Int32Array, Int64Array, RecordBatch};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use trendflow_connectors::decode::RecordFormat;
use trendflow_connectors::kafka::{self, encode_rows, KafkaSource, KafkaSourceOptions, RecordEncoder, RecordProducer};
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Offsets, Poll, Source};

pub(crate) use crate::broker::Broker;
use crate::support::*;

pub(crate) fn trendflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trendflow"));
    // Tests run side by side: any free port for the status endpoint.
    command.current_dir(repo()).env("TRENDFLOW_HTTP_ADDR", "127.0.0.1:0");
    command
}

pub(crate) fn ok(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && !stderr.contains("panicked"), "{command:?} failed:\n{stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// The shipped views as CSV, through `trendflow query` on a state directory.
pub(crate) fn views_csv(state: &Path, with_time: bool) -> Vec<String> {
    query_views(&["--state".as_ref(), state.as_os_str()], with_time)
}

/// The shipped views as CSV, through `trendflow query` with `from` (`--state DIR`, or
/// `--mongodb-uri URI --mongodb-database DB`).
pub(crate) fn query_views(from: &[&std::ffi::OsStr], with_time: bool) -> Vec<String> {
    let mut queries = vec![
        "SELECT category_id, products, share, best_sellers FROM category_distribution ORDER BY category_id",
        "SELECT price_level, products, avg_price, min_price, max_price FROM price_levels ORDER BY price_level",
        "SELECT category_id, products, avg_price FROM avg_price_by_category ORDER BY category_id",
        "SELECT category_id, bought_last_month FROM top_categories_by_demand ORDER BY category_id",
    ];
    if with_time {
        queries.push("SELECT window_start, category_id, products FROM category_trend ORDER BY window_start, category_id");
    }
    queries.iter().map(|sql| ok(trendflow().args(["query", sql, "--format", "csv"]).args(from))).collect()
}

/// Asserts two sets of query results are equal, showing only the first differing line.
/// Numbers agree within 1e-9 relative: sums of floats depend on the order of addition.
pub(crate) fn assert_same_csv(actual: &[String], expected: &[String], context: &str) {
    let same_cell = |a: &str, e: &str| match (a.parse::<f64>(), e.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == e,
    };
    let same_line = |a: &str, e: &str| a.split(',').count() == e.split(',').count() && a.split(',').zip(e.split(',')).all(|(x, y)| same_cell(x, y));
    assert_eq!(actual.len(), expected.len());
    for (a, e) in actual.iter().zip(expected) {
        let header = a.lines().next().unwrap_or("");
        if let Some((la, le)) = a.lines().zip(e.lines()).find(|(x, y)| !same_line(x, y)) {
            panic!("{context}: results differ under `{header}`:\n  got      {la}\n  expected {le}");
        }
        assert_eq!(a.lines().count(), e.lines().count(), "{context}: row counts differ under `{header}`");
    }
}

/// Generated products encoded as JSON records (what producers send).
pub(crate) async fn json_records(data: &Path, dead_letters: &Path) -> Vec<Vec<u8>> {
    let bindings = bindings(&data.join("products.csv"), &data.join("categories.csv"));
    let catalog = Catalog::load(&[shipped_sql()], trendflow_engine::session::batch_session_config(), &bindings.files()).await.unwrap();
    let stream = &catalog.streams()[0];
    let mut sources = bindings.open_sources(&catalog, &file_settings(dead_letters)).await.unwrap();
    let mut records = Vec::new();
    while let Poll::Batch(micro) = sources[0].poll(10_000, Duration::ZERO).await.unwrap() {
        let payload = micro.batch.project(&(0..stream.payload_schema.fields().len()).collect::<Vec<_>>()).unwrap();
        let encoded = encode_rows(RecordFormat::Json, &payload).unwrap();
        records.extend((0..payload.num_rows()).map(|i| encoded.get(i).to_vec()));
    }
    records
}

/// A minimal HTTP/1.1 request; returns the status code and body.
pub(crate) fn http(method: &str, addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_with(method, addr, path, "", body)
}

/// [`http`] with extra header lines (each ending in `\r\n`).
fn http_with(method: &str, addr: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer 413 before reading everything: a failed write is fine then.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// POSTs records to the ingest API; returns the status code and the JSON answer.
pub(crate) fn http_post(addr: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let (status, text) = http("POST", addr, path, body);
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

pub(crate) fn wait_for_line(child: &mut Child, prefix: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split(prefix).nth(1) {
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return rest.split_whitespace().next().unwrap().to_string();
        }
    }
    panic!("the process exited before printing `{prefix}`");
}

pub(crate) struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `trendflow ingest` with `args` (after `ingest --listen 127.0.0.1:0`); returns
/// the process and the address it listens on.
pub(crate) fn spawn_ingest(args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>) -> (Killed, String) {
    let mut ingest = Killed(trendflow().args(["ingest", "--listen", "127.0.0.1:0"]).args(args).stderr(Stdio::piped()).spawn().unwrap());
    let api = wait_for_line(&mut ingest.0, "listening on http://");
    (ingest, api)
}

/// Posts `records` to the products topic of the ingest API at `api`, `chunk` per
/// request, asserting each request accepted all of its records.
pub(crate) fn post_products(api: &str, records: &[Vec<u8>], chunk: usize) {
    for chunk in records.chunks(chunk) {
        let (status, body) = http_post(api, "/v1/topics/products/records", &chunk.join(&b'\n'));
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(chunk.len() as u64)), "{body}");
    }
}

/// Records posted to the ingest API reach the views exactly: the streamed views equal
/// the batch computation over the same records, read from the file they came from and
/// from the topic; bad records are reported per index and never produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_api_feeds_the_views_exactly() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", "3000", "--seed", "7", "--out"]).arg(&data));
    let records = json_records(&data, tmp.path()).await;
    let args = ["--partitions", "3", "--max-body-bytes", "1000000", "--kafka-brokers", &broker.addr];
    let (_ingest, api) = spawn_ingest(args);
    post_products(&api, &records, 400);
    let mixed = br#"[{"asin": "BTEST00001", "price": 12.5, "category_id": 3}, {"asin": "BTEST00002", "price": "cheap"}, {"price": 1.0}]"#;
    let (status, body) = http_post(&api, "/v1/topics/products/records", mixed);
    assert_eq!((status, body["accepted"].as_u64(), body["rejected"].as_u64()), (200, Some(1), Some(2)), "{body}");
    assert_eq!(body["errors"][0]["index"], 1, "{body}");
    assert!(body["errors"][0]["reason"].as_str().unwrap().contains("cheap"), "{body}");
    assert!(body["errors"][1]["reason"].as_str().unwrap().contains("`asin` is required"), "{body}");
    let (status, body) = http_post(&api, "/v1/topics/products/records", b"{\"asin\": 5}\n{not json");
    assert_eq!(status, 400, "{body}");
    let (status, _) = http_post(&api, "/v1/topics/products/records", &vec![b' '; 2_000_000]);
    assert_eq!(status, 413);
    let (status, body) = http_post(&api, "/v1/topics/nope/records", b"{}");
    assert!(status == 404 && body["error"].as_str().unwrap().contains("products"), "{status} {body}");

    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let streamed = tmp.path().join("streamed");
    let summary = ok(trendflow()
        .args([
            "run",
            "--until-idle",
            "--flight-addr",
            "none",
            "--max-rows",
            "700",
            "--kafka-brokers",
            &broker.addr,
            "--source",
            &categories,
            "--state",
        ])
        .arg(&streamed));
    // Every product posted, the one accepted from the mixed request, and every category.
    let expected_records = 3001 + csv_rows(&data.join("categories.csv"));
    assert!(summary.contains(&format!("processed {expected_records} records")), "{summary}");
    let from_topic = tmp.path().join("from_topic");
    let products = format!("products=kafka://{}/products", broker.addr);
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_topic));
    assert_same_csv(&views_csv(&streamed, true), &views_csv(&from_topic, true), "views");
    // The same records from the file (plus the one accepted from the mixed request).
    let expected = tmp.path().join("accepted.ndjson");
    let mut lines = records.join(&b'\n');
    lines.extend_from_slice(b"\n{\"asin\": \"BTEST00001\", \"price\": 12.5, \"category_id\": 3}\n");
    std::fs::write(&expected, lines).unwrap();
    let from_file = tmp.path().join("from_file");
    let products = format!("products=file:{}", expected.display());
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_file));
    assert_same_csv(&views_csv(&streamed, false), &views_csv(&from_file, false), "views");
}

/// With a token file, the ingest API refuses requests without a valid bearer token
/// (401); over the per-client rate it answers 429; neither produces anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_api_checks_tokens_and_rates() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, "# ingest clients\nt0ken-1\n").unwrap();
    let mut ingest = Killed(
        trendflow()
            .args(["ingest", "--listen", "127.0.0.1:0", "--rate-limit", "3", "--kafka-brokers", &broker.addr, "--token-file"])
            .arg(&tokens)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let api = wait_for_line(&mut ingest.0, "listening on http://");
    let record = br#"{"asin": "B1", "price": 1.5}"#;
    let path = "/v1/topics/products/records";
    assert_eq!(http_with("POST", &api, path, "", record).0, 401);
    assert_eq!(http_with("POST", &api, path, "Authorization: Bearer t0ken-2\r\n", record).0, 401);
    // Eight requests at once: a burst of three passes (plus what refills while they run).
    let started = Instant::now();
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || http_with("POST", &api, path, "Authorization: Bearer t0ken-1\r\n", record).0)
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refilled = (started.elapsed().as_secs_f64() * 3.0).ceil() as usize;
    assert!(admitted >= 3 && admitted <= 3 + refilled, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 8 - admitted, "{statuses:?}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(http_with("POST", &api, path, "Authorization: Bearer t0ken-1\r\n", record).0, 200, "the bucket refills");
    let mut source = products_source(&broker.addr, true, 1 << 20).await;
    assert_eq!(drain(&mut source, 100).await, (admitted + 1, 0), "only accepted requests were produced");
}

/// Positions of `products` in the current checkpoint of `state`: records covered.
pub(crate) fn checkpointed_records(state: &Path) -> i64 {
    let Some(meta) = checkpoint_meta(state) else { return 0 };
    let Some(partitions) = meta["sources"]["products"].as_object() else { return 0 };
    partitions.iter().filter(|(p, _)| !p.starts_with('-')).map(|(_, o)| o.as_i64().unwrap()).sum()
}

/// SIGKILL the job at random moments while it consumes a generated topic of three
/// partitions; after the last restart the views equal the batch result exactly, and
/// the consumer group's committed offsets reached the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_kafka_job_resumes_exactly() {
    const ROWS: i64 = 40_000;
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", &ROWS.to_string(), "--seed", "11", "--out"]).arg(&data));
    let produced = ok(trendflow()
        .args(["produce", "--partitions", "3", "--kafka-brokers", &broker.addr, "--file"])
        .arg(data.join("products.csv"))
        .arg("--state")
        .arg(tmp.path().join("producer")));
    assert!(produced.contains(&format!("produced {ROWS} records")), "{produced}");
    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let state = tmp.path().join("state");
    let run = |extra: &[&str]| {
        let mut command = trendflow();
        command
            .args(["run", "--flight-addr", "none", "--checkpoint-interval-ms", "0", "--kafka-group", "killed-job"])
            .args(["--kafka-brokers", &broker.addr, "--source", &categories, "--state"])
            .arg(&state)
            .args(extra);
        command
    };
    let seed = std::process::id() as u64;
    let mut rng = seed;
    let mut positions = vec![0];
    for max_rows in ["300", "450", "200", "350"] {
        let mut child = Killed(run(&["--max-rows", max_rows]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let step = 1_000 + (rng >> 33) as i64 % 6_000;
        let before = *positions.last().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while checkpointed_records(&state) < before + step {
            assert!(Instant::now() < deadline, "no progress past {before} within 120 s (seed {seed})");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        positions.push(checkpointed_records(&state));
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]) && positions[4] < ROWS, "kills were not mid-stream: {positions:?} (seed {seed})");
    let last = ok(&mut run(&["--until-idle", "--max-rows", "5000"]));
    assert!(last.contains("resumed from checkpoint") && last.contains(" 0 rejected"), "{last}");
    let from_topic = tmp.path().join("from_topic");
    let products = format!("products=kafka://{}/products", broker.addr);
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_topic));
    assert_same_csv(&views_csv(&state, true), &views_csv(&from_topic, true), &format!("seed {seed}"));
    let from_file = tmp.path().join("from_file");
    let products = format!("products=file:{}", data.join("products.csv").display());
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_file));
    assert_same_csv(&views_csv(&state, false), &views_csv(&from_file, false), &format!("seed {seed}"));
    assert_eq!(committed_total(&broker.addr, "killed-job", "products", 3, ROWS), ROWS);
}

/// The broker is killed and restarted while the job consumes: the job logs, retries,
/// goes on, and its views equal the batch result over the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    const ROWS: i64 = 20_000;
    let mut broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", &ROWS.to_string(), "--seed", "5", "--out"]).arg(&data));
    let [first, second] = <[PathBuf; 2]>::try_from(split_csv(&data.join("products.csv"), tmp.path(), 2)).unwrap();
    let produce = |file: &Path, brokers: &str| {
        ok(trendflow()
            .args(["produce", "--partitions", "2", "--kafka-brokers", brokers, "--file"])
            .arg(file)
            .arg("--state")
            .arg(tmp.path().join("p")));
    };
    produce(&first, &broker.addr);
    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let state = tmp.path().join("state");
    let log = tmp.path().join("job.log");
    let mut job = spawn_logged_run(&broker.addr, &categories, &state, &log, &["--max-rows", "200"]);
    let wait_for = |records: i64| wait_for_checkpointed(&state, &log, records);
    wait_for(ROWS / 2);
    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    broker.spawn();
    // Records produced after the restart reach the job: it reconnected by itself.
    produce(&second, &broker.addr);
    wait_for(ROWS);
    assert!(job.0.try_wait().unwrap().is_none(), "the job exited during the outage:\n{}", std::fs::read_to_string(&log).unwrap());
    // The status endpoint saw every record, and no lag is left. It hears of a micro-batch
    // just after its checkpoint is written, so it may be a moment behind.
    let log_text = std::fs::read_to_string(&log).unwrap();
    let status_addr = log_text.split("status endpoint on http://").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    let all_seen = |metrics: &str| {
        metrics.contains(&format!("trendflow_records_total{{stream=\"products\"}} {ROWS}\n"))
            && metrics.contains("trendflow_consumer_lag_records{stream=\"products\"} 0\n")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (code, metrics) = http("GET", status_addr, "/metrics", b"");
        assert_eq!(code, 200);
        if all_seen(&metrics) || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(all_seen(&metrics), "{metrics}");
    let from_topic = tmp.path().join("from_topic");
    let products = format!("products=kafka://{}/products", broker.addr);
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_topic));
    assert_same_csv(&views_csv(&state, true), &views_csv(&from_topic, true), "views");
}

/// `trendflow run` reading `brokers` with a checkpoint after every micro-batch; its log
/// goes to `log`.
pub(crate) fn spawn_logged_run(brokers: &str, categories: &str, state: &Path, log: &Path, extra: &[&str]) -> Killed {
    Killed(
        trendflow()
            .args(["run", "--flight-addr", "none", "--checkpoint-interval-ms", "0", "--kafka-brokers", brokers, "--source", categories])
            .args(extra)
            .arg("--state")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Waits until the checkpoint in `state` covers `records` products; fails with the job's
/// `log` after 180 s.
pub(crate) fn wait_for_checkpointed(state: &Path, log: &Path, records: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while checkpointed_records(state) < records {
        let stuck =
            || format!("stuck at {} of {records} records:\n{}", checkpointed_records(state), std::fs::read_to_string(log).unwrap_or_default());
        assert!(Instant::now() < deadline, "{}", stuck());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Splits a CSV file into `parts` files of about equal size, each with the header.
pub(crate) fn split_csv(path: &Path, dir: &Path, parts: usize) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    rows.chunks(rows.len().div_ceil(parts))
        .enumerate()
        .map(|(i, rows)| {
            let out = dir.join(format!("part-{i}.csv"));
            std::fs::write(&out, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
            out
        })
        .collect()
}

/// Unreachable brokers and a missing topic at start-up: one clear error line, a failing
/// exit code, no panic.
#[test]
fn unreachable_brokers_and_missing_topics_fail_clearly() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let categories = format!("categories=file:{}", shared_data("amazon_categories.csv").display());
    let output = trendflow()
        .args(["run", "--flight-addr", "none", "--kafka-brokers", &closed, "--source", &categories, "--state"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr.lines().filter(|l| l.starts_with("error:")).collect::<Vec<_>>();
    assert!(!output.status.success() && error.len() == 1 && error[0].contains(&closed) && error[0].contains("cannot reach"), "{stderr}");
    let broker = Broker::start();
    let output = trendflow()
        .args(["run", "--flight-addr", "none", "--kafka-brokers", &broker.addr, "--source", &categories, "--state"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("topic `products`") && stderr.contains("does not exist"), "{stderr}");
}

/// The offsets a consumer group committed, summed over `partitions` partitions.
/// The offsets `group` committed on `topic`, summed over its partitions, once they reach
/// `expected` or after 30 s: a job commits after each checkpoint without waiting (the
/// positions live in the checkpoint), so the commit lands a poll or so after it.
pub(crate) fn committed_total(brokers: &str, group: &str, topic: &str, partitions: i32, expected: i64) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let started = std::time::Instant::now();
    loop {
        let committed = consumer.committed_offsets(list.clone(), Duration::from_secs(10)).unwrap();
        let total = committed.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum();
        if total == expected || started.elapsed() > Duration::from_secs(30) {
            return total;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", brokers).set("message.max.bytes", "20000000").create().unwrap()
}

pub(crate) async fn send(producer: &FutureProducer, topic: &str, partition: Option<i32>, payload: &[u8]) {
    let mut record = FutureRecord::<(), [u8]>::to(topic).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

async fn products_source(brokers: &str, bounded: bool, max_record_bytes: usize) -> KafkaSource {
    let stream = Catalog::load_streams(&[shipped_sql()]).await.unwrap().remove(0);
    let mut options = KafkaSourceOptions::new(&stream, brokers, "products", "poison-test");
    options.bounded = bounded;
    options.max_record_bytes = max_record_bytes;
    KafkaSource::open(stream, options).await.unwrap()
}

/// Reads a whole topic: (headers as text, payload) of every record.
pub(crate) fn read_topic(brokers: &str, topic: &str) -> Vec<(std::collections::BTreeMap<String, String>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "reader").create().unwrap();
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < high {
        assert!(Instant::now() < deadline, "read {} of {high} records of {topic}", out.len());
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.unwrap();
        let headers = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
            .unwrap_or_default();
        out.push((headers, message.payload().unwrap_or_default().to_vec()));
    }
    out
}

async fn drain(source: &mut KafkaSource, max_rows: usize) -> (usize, u64) {
    let (mut rows, mut rejected) = (0, 0);
    loop {
        match source.poll(max_rows, Duration::from_millis(300)).await.unwrap() {
            Poll::Batch(micro) => {
                rows += micro.batch.num_rows();
                rejected += micro.rejected;
            }
            Poll::Idle => {}
            Poll::Finished => return (rows, rejected),
        }
    }
}

/// Poison records (bad JSON, wrong types, a missing key, invalid UTF-8, an oversized
/// record) land in the dead-letter topic with reason and origin, good ones are
/// processed, counts add up; a replay after a crash writes no letter twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic_once() {
    let broker = Broker::start();
    kafka::ensure_topic(&broker.addr, "products", 1).await.unwrap();
    let producer = producer(&broker.addr);
    let huge = format!("{{\"asin\": \"BIG\", \"title\": \"{}\"}}", "x".repeat(2 << 20));
    let poison: Vec<Vec<u8>> = vec![
        b"{\"asin\": \"B1\", \"price\": 3.5}".to_vec(),
        b"{\"asin\": \"B2\", \"price\": \"three\"}".to_vec(),
        b"{truncated".to_vec(),
        b"{\"price\": 1.0}".to_vec(),
        b"{\"asin\": \"B\xff\xfe\"}".to_vec(),
        huge.into_bytes(),
        b"{\"asin\": \"B3\", \"stars\": 4.5, \"category_id\": 12}".to_vec(),
        b"{\"asin\": \"B4\", \"reviews\": 1.5e400}".to_vec(),
    ];
    for payload in poison.iter().cycle().take(poison.len() * 3) {
        send(&producer, "products", None, payload).await;
    }
    let mut first = products_source(&broker.addr, true, 1 << 20).await;
    let Poll::Batch(micro) = first.poll(5, Duration::from_secs(5)).await.unwrap() else { panic!("no records") };
    let checkpoint = micro.offsets.clone();
    let (rows, rejected) = drain(&mut first, 5).await;
    assert_eq!(micro.batch.num_rows() + rows, 6, "B1 and B3 of each copy are valid");
    assert_eq!(micro.rejected + rejected, 18);
    // The job dies before its next checkpoint and resumes from `checkpoint`.
    let mut second = products_source(&broker.addr, true, 1 << 20).await;
    second.seek(&checkpoint).await.unwrap();
    drain(&mut second, 3).await;
    let letters = read_topic(&broker.addr, "products.dlq");
    assert_eq!(letters.len(), 18, "every bad record once");
    let mut offsets: Vec<i64> = letters.iter().map(|(h, _)| h["trendflow.offset"].parse().unwrap()).collect();
    offsets.sort();
    let bad: Vec<i64> = (0..24).filter(|o| !matches!(o % 8, 0 | 6)).collect();
    assert_eq!(offsets, bad);
    let reasons: Vec<&str> = letters.iter().take(6).map(|(h, _)| h["trendflow.reason"].as_str()).collect();
    for (reason, expected) in
        reasons.iter().zip(["three", "invalid JSON", "`asin` is required", "invalid UTF-8", "larger than max_record_bytes", "reviews"])
    {
        assert!(reason.contains(expected), "{reason:?} should mention {expected:?}");
    }
    assert!(letters.iter().all(|(h, _)| h["trendflow.partition"] == "0" && h["trendflow.topic"] == "products"));
    assert_eq!(letters[1].1, poison[2], "the original bytes are kept");
}

/// Records produced by `RecordProducer` carry the primary key as Kafka key, so a
/// product's updates stay in one partition, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_keys_records_by_primary_key() {
    let broker = Broker::start();
    kafka::ensure_topic(&broker.addr, "products", 4).await.unwrap();
    let stream = Catalog::load_streams(&[shipped_sql()]).await.unwrap().remove(0);
    let payload = RecordBatch::try_new(
        stream.payload_schema.clone(),
        stream
            .payload_schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "asin" => std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec!["K1", "K2", "K1", "K1"])) as _,
                _ => datafusion::arrow::array::new_null_array(f.data_type(), 4),
            })
            .collect(),
    )
    .unwrap();
    kafka::send_rows(&RecordProducer::new(&broker.addr).unwrap(), &stream, RecordEncoder::Text(RecordFormat::Json), "products", &payload, &[])
        .await
        .unwrap();
    let mut source = products_source(&broker.addr, true, 1 << 20).await;
    let mut seen = Vec::new();
    while let Poll::Batch(micro) = source.poll(10, Duration::from_secs(2)).await.unwrap() {
        let keys = micro.batch.column_by_name("_key").unwrap().as_any().downcast_ref::<datafusion::arrow::array::StringArray>().unwrap().clone();
        let parts = micro.batch.column_by_name("_partition").unwrap().as_any().downcast_ref::<Int32Array>().unwrap().clone();
        seen.extend((0..keys.len()).map(|i| (keys.value(i).to_string(), parts.value(i))));
    }
    assert_eq!(seen.len(), 4);
    let k1: Vec<i32> = seen.iter().filter(|(k, _)| k == "K1").map(|(_, p)| *p).collect();
    assert!(k1.len() == 3 && k1.iter().all(|p| *p == k1[0]), "{seen:?}");
}

/// A partition added while the source runs is found by its periodic metadata look,
/// read from its beginning, and checkpointed: a restart from that checkpoint reads
/// neither partition again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_added_mid_run_is_read_from_its_start() {
    let broker = Broker::start();
    kafka::ensure_topic(&broker.addr, "products", 1).await.unwrap();
    let record = |i: usize| format!("{{\"asin\": \"P{i}\", \"price\": {i}.5}}").into_bytes();
    let old = producer(&broker.addr);
    for i in 0..5 {
        send(&old, "products", Some(0), &record(i)).await;
    }
    let mut source = products_source(&broker.addr, false, 1 << 20).await;
    let (mut rows, mut checkpoint) = (Vec::new(), Offsets::new());
    read_until(&mut source, 5, &mut rows, &mut checkpoint).await;
    broker.add_partition("products").await;
    let new = producer(&broker.addr);
    for i in 5..8 {
        send(&new, "products", Some(1), &record(i)).await;
    }
    send(&new, "products", Some(0), &record(8)).await;
    read_until(&mut source, 9, &mut rows, &mut checkpoint).await;
    rows.sort();
    let expected: Vec<(i32, i64)> = (0..6).map(|o| (0, o)).chain((0..3).map(|o| (1, o))).collect();
    assert_eq!(rows, expected, "every record of both partitions once");
    assert_eq!((checkpoint.get(&0), checkpoint.get(&1)), (Some(&6), Some(&3)), "the checkpoint holds the new partition");
    // A restart from that checkpoint reads only what came after it.
    send(&new, "products", Some(1), &record(9)).await;
    let mut restarted = products_source(&broker.addr, true, 1 << 20).await;
    restarted.seek(&checkpoint).await.unwrap();
    assert_eq!(drain(&mut restarted, 100).await, (1, 0), "only the record sent after the checkpoint");
}

/// Polls `source` until `rows` holds `total` (partition, offset) pairs; `checkpoint`
/// gets the positions of the last micro-batch.
async fn read_until(source: &mut KafkaSource, total: usize, rows: &mut Vec<(i32, i64)>, checkpoint: &mut Offsets) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while rows.len() < total {
        assert!(Instant::now() < deadline, "read {} of {total} records: {rows:?}", rows.len());
        if let Poll::Batch(micro) = source.poll(100, Duration::from_millis(200)).await.unwrap() {
            let column = |name: &str| micro.batch.column_by_name(name).unwrap().clone();
            let parts = column("_partition");
            let parts = parts.as_any().downcast_ref::<Int32Array>().unwrap();
            let offsets = column("_offset");
            let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
            rows.extend((0..parts.len()).map(|i| (parts.value(i), offsets.value(i))));
            *checkpoint = micro.offsets;
        }
    }
}

/// Micro-batches are cut at `--max-delay-ms` as well as `--max-rows`: records that
/// stop arriving long before `--max-rows` reach the views (the per-minute windows of
/// `category_trend` included) without waiting for more records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_still_reaches_the_views() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    kafka::ensure_topic(&broker.addr, "products", 1).await.unwrap();
    let categories = format!("categories=file:{}", shared_data("amazon_categories.csv").display());
    let state = tmp.path().join("state");
    let _job = Killed(
        trendflow()
            .args(["run", "--flight-addr", "none", "--max-rows", "100000", "--max-delay-ms", "200", "--checkpoint-interval-ms", "200"])
            .args(["--kafka-brokers", &broker.addr, "--source", &categories, "--state"])
            .arg(&state)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let producer = producer(&broker.addr);
    for i in 0..7 {
        send(&producer, "products", None, format!("{{\"asin\": \"I{i}\", \"price\": 5, \"category_id\": {}}}", i % 2 + 1).as_bytes()).await;
    }
    let sql = "SELECT CAST(SUM(products) AS BIGINT) AS n, COUNT(DISTINCT window_start) AS windows FROM category_trend";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = trendflow().args(["query", sql, "--format", "csv", "--state"]).arg(&state).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        if text.lines().nth(1).is_some_and(|row| row.starts_with("7,")) {
            break;
        }
        assert!(Instant::now() < deadline, "the views never showed the 7 records: {text}{}", String::from_utf8_lossy(&output.stderr));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A stream declared `OPTIONS ('format' 'csv')` is written by `produce` as CSV lines
/// and read back as CSV: the views equal the batch over the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_records_on_kafka_feed_the_views_exactly() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", "1500", "--seed", "5", "--out"]).arg(&data));
    let sql = sql_with_products_options(tmp.path(), "'format' 'csv'");
    let products = data.join("products.csv");
    let produced = ok(trendflow().args(["produce", "--kafka-brokers", &broker.addr, "--sql"]).arg(&sql).arg("--file").arg(&products));
    assert!(produced.contains("produced 1500 records"), "{produced}");
    let (_, first) = &read_topic(&broker.addr, "products")[0];
    assert!(!first.starts_with(b"{") && first.split(|b| *b == b',').count() >= 11, "a CSV line: {}", String::from_utf8_lossy(first));

    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let streamed = tmp.path().join("streamed");
    let summary = ok(trendflow()
        .args(["run", "--until-idle", "--flight-addr", "none", "--kafka-brokers", &broker.addr, "--source", &categories, "--sql"])
        .arg(&sql)
        .arg("--state")
        .arg(&streamed));
    let expected_records = 1500 + csv_rows(&data.join("categories.csv"));
    assert!(summary.contains(&format!("processed {expected_records} records")) && summary.contains(", 0 rejected"), "{summary}");
    let from_file = tmp.path().join("from_file");
    let file = format!("products=file:{}", products.display());
    ok(trendflow().args(["batch", "--source", &file, "--source", &categories, "--state"]).arg(&from_file));
    assert_same_csv(&views_csv(&streamed, false), &views_csv(&from_file, false), "CSV stream against the batch over the file");
}

/// A dead-letter topic of several partitions (one a user declared): letters go to its
/// partition 0, where a replay after a crash looks for them, so none is written twice,
/// not even by a job that died before its first checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_to_a_partitioned_dead_letter_topic_are_written_once() {
    let broker = Broker::start();
    kafka::ensure_topic(&broker.addr, "products", 1).await.unwrap();
    kafka::ensure_topic(&broker.addr, "products.bad", 3).await.unwrap();
    let producer = producer(&broker.addr);
    for i in 0..12 {
        send(&producer, "products", None, format!("{{\"asin\": \"D{i}\", \"price\": \"p{i}\"}}").as_bytes()).await;
    }
    let open = || async {
        let stream = Catalog::load_streams(&[shipped_sql()]).await.unwrap().remove(0);
        let mut options = KafkaSourceOptions::new(&stream, &broker.addr, "products", "partitioned-letters");
        options.bounded = true;
        options.dead_letter_topic = "products.bad".into();
        KafkaSource::open(stream, options).await.unwrap()
    };
    let mut first = open().await;
    let Poll::Batch(micro) = first.poll(4, Duration::from_secs(5)).await.unwrap() else { panic!("no records") };
    let checkpoint = micro.offsets.clone();
    drain(&mut first, 4).await;
    // The job dies before its next checkpoint and resumes from `checkpoint`.
    let mut second = open().await;
    second.seek(&checkpoint).await.unwrap();
    drain(&mut second, 4).await;
    // A job that dies before its first checkpoint starts over without one.
    let mut third = open().await;
    drain(&mut third, 5).await;
    let letters = read_topic(&broker.addr, "products.bad");
    let mut offsets: Vec<i64> = letters.iter().map(|(h, _)| h["trendflow.offset"].parse().unwrap()).collect();
    offsets.sort();
    assert_eq!(offsets, (0..12).collect::<Vec<_>>(), "every record once in partition 0");
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &broker.addr).create().unwrap();
    for partition in [1, 2] {
        assert_eq!(
            consumer.fetch_watermarks("products.bad", partition, Duration::from_secs(10)).unwrap().1,
            0,
            "partition {partition} holds letters"
        );
    }
}
