//! Event time: TUMBLE / HOP windows, watermarks, late records and window-close
//! emission, streamed under random micro-batch cuts and crashes, against batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use trendflow_connectors::binding::Bindings;
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Changeset, CheckpointMeta, Offsets, Poll, Sink, Source, ViewInfo};
use trendflow_engine::runtime::Pipeline;
use trendflow_engine::session::incremental_session_config;

use crate::support::{assert_same_views, drain_options, file_settings, pipeline_dir, run_batch, Xorshift};

/// Clicks on pages, each at its own time ("%d/%m/%Y %H:%M" like the seed pipeline's
/// `date`), up to 10 minutes out of order.
const SQL: &str = r#"
CREATE EXTERNAL TABLE clicks (page VARCHAR NOT NULL, date VARCHAR)
STORED AS KAFKA LOCATION 'clicks'
OPTIONS ('format' 'json', 'event_time' 'date', 'event_time_format' '%d/%m/%Y %H:%M', 'watermark_delay' '10 minutes');

-- Updated as clicks arrive; a closed hour leaves the state.
CREATE VIEW per_hour AS
SELECT window_start, window_end, page, COUNT(*) AS clicks
FROM TUMBLE(clicks, INTERVAL '1 hour')
GROUP BY window_start, window_end, page;

-- Each hour once, final.
CREATE VIEW per_hour_final AS
SELECT window_start, page, COUNT(*) AS clicks
FROM TUMBLE(clicks, INTERVAL '1 hour')
GROUP BY window_start, page
EMIT ON WINDOW CLOSE;

-- The two busiest pages of every sliding hour, each window once, final.
CREATE VIEW busiest AS
SELECT * FROM (
    SELECT window_start, window_end, page, COUNT(*) AS clicks,
           ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY COUNT(*) DESC, page) AS rank
    FROM HOP(clicks, INTERVAL '15 minutes', INTERVAL '1 hour')
    GROUP BY window_start, window_end, page
) WHERE rank <= 2
EMIT ON WINDOW CLOSE;

-- Not windowed: late clicks are in no view at all.
CREATE VIEW per_page AS SELECT page, COUNT(*) AS clicks FROM clicks GROUP BY page;
"#;

/// Writes `n` clicks over about `hours` hours: a few minutes of disorder, 3 % of them
/// 30 to 90 minutes late, and a few dates that do not parse. Returns the file and how
/// many records are late or without a time at most (an upper bound: a straggler can
/// still be on time if the watermark has not passed it).
fn clicks(dir: &Path, n: usize, hours: u64, seed: u64) -> (PathBuf, usize) {
    let mut rng = Xorshift::new(seed);
    let mut next = move |m: u64| rng.below(m);
    let mut lines = Vec::with_capacity(n);
    let mut odd = 0;
    for i in 0..n {
        let ideal = 600 + i as u64 * hours * 60 / n as u64; // minutes since 01/03/2024 00:00
        let minute = match next(100) {
            0..=2 => {
                odd += 1;
                ideal.saturating_sub(30 + next(60))
            }
            3..=30 => ideal.saturating_sub(next(8)),
            _ => ideal,
        };
        let (day, hour, min) = (1 + minute / 1440, minute / 60 % 24, minute % 60);
        let date = if next(500) == 0 {
            odd += 1;
            "31/02/2024 99:99".to_string()
        } else {
            format!("{day:02}/03/2024 {hour:02}:{min:02}")
        };
        lines.push(format!(r#"{{"page": "p{}", "date": "{date}"}}"#, next(5)));
    }
    let path = dir.join("clicks.ndjson");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, odd)
}

/// A source that cuts micro-batches at random sizes and fails (as a crash would) after
/// a number of polls, around a real one (whose dead letters and positions it keeps).
struct Chaos {
    inner: Box<dyn Source>,
    rng: Xorshift,
    polls_left: Option<usize>,
}

#[async_trait]
impl Source for Chaos {
    fn stream(&self) -> &str {
        self.inner.stream()
    }

    fn identity(&self) -> String {
        self.inner.identity()
    }

    async fn poll(&mut self, _max_rows: usize, max_delay: Duration) -> trendflow_engine::Result<Poll> {
        if let Some(left) = self.polls_left.as_mut() {
            if *left == 0 {
                return Err(trendflow_engine::EngineError::Source { source_name: "clicks".into(), cause: "injected crash".into() });
            }
            *left -= 1;
        }
        self.inner.poll(1 + self.rng.below(97) as usize, max_delay).await
    }

    async fn seek(&mut self, offsets: &Offsets) -> trendflow_engine::Result<()> {
        self.inner.seek(offsets).await
    }

    async fn reject(&mut self, rows: &RecordBatch, reasons: &[String]) -> trendflow_engine::Result<Offsets> {
        self.inner.reject(rows, reasons).await
    }
}

/// Counts what reaches a sink per view and key, besides storing it.
struct Counting {
    store: EmbeddedStore,
    upserts: BTreeMap<String, BTreeMap<String, usize>>,
    deletes: usize,
}

#[async_trait]
impl Sink for Counting {
    async fn open(&mut self, views: &[ViewInfo]) -> trendflow_engine::Result<()> {
        self.store.open(views).await
    }

    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> trendflow_engine::Result<()> {
        let keys = changes.upserts.project(&view.key).unwrap();
        let per_key = self.upserts.entry(view.name.clone()).or_default();
        for row in crate::support::rows(&keys) {
            *per_key.entry(format!("{row:?}")).or_default() += 1;
        }
        self.deletes += changes.deletes.num_rows();
        self.store.apply(view, changes).await
    }

    async fn flush(&mut self, meta: &CheckpointMeta) -> trendflow_engine::Result<()> {
        self.store.flush(meta).await
    }

    async fn reset(&mut self, view: &ViewInfo, rows: &RecordBatch) -> trendflow_engine::Result<()> {
        self.store.reset(view, rows).await
    }
}

/// Streams the file bound in `bindings` through the pipeline, crashing after `crashes`
/// numbers of polls and restarting from the checkpoint each time; returns the views as
/// stored, what reached the sink, and the dead letters written.
async fn stream(
    sql: &Path,
    bindings: &Bindings,
    state: &Path,
    seed: u64,
    crashes: &[usize],
) -> (BTreeMap<String, RecordBatch>, Counting, Vec<String>) {
    let dead_letters = state.join("dead-letters");
    let mut sink = Counting { store: EmbeddedStore::new(state.join("store")), upserts: BTreeMap::new(), deletes: 0 };
    let mut views = Vec::new();
    for (run, polls) in crashes.iter().map(|&c| Some(c)).chain([None]).enumerate() {
        let catalog = Catalog::load(&[sql.to_path_buf()], incremental_session_config(), &bindings.files()).await.unwrap();
        let inner = bindings.open_sources(&catalog, &file_settings(&dead_letters)).await.unwrap().pop().unwrap();
        let source = Chaos { inner, rng: Xorshift::new(seed * 31 + run as u64 + 1), polls_left: polls };
        let mut pipeline = Pipeline::compile(catalog, state.to_path_buf()).await.unwrap();
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let result = pipeline.run(vec![Box::new(source)], &mut sink, &drain_options(), shutdown, &mut |_| {}).await;
        assert_eq!(result.is_err(), polls.is_some(), "run {run}: {result:?}");
        views = pipeline.view_infos();
        if polls.is_none() {
            // State holds open windows only: at most the last few hours' groups per page.
            for view in pipeline.views() {
                let (_, groups) = view.group_counts();
                assert!(view.info().name == "per_page" || groups <= 5 * 3 * 4, "{} keeps {groups} groups", view.info().name);
            }
        }
    }
    let stored = views.iter().map(|v| (v.name.clone(), sink.store.rows(&v.name).unwrap().unwrap())).collect();
    let letters = std::fs::read_to_string(dead_letters.join("clicks.ndjson")).unwrap_or_default().lines().map(String::from).collect();
    (stored, sink, letters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_stream_like_batch_under_any_cuts_disorder_late_records_and_crashes() {
    for seed in 1..=3u64 {
        let tmp = tempfile::tempdir().unwrap();
        let sql = pipeline_dir(tmp.path(), SQL);
        let (file, odd) = clicks(tmp.path(), 4_000, 30, seed);
        let mut bindings = Bindings::default();
        bindings.bind_file("clicks", &file);
        let batch_letters = tmp.path().join("batch-dead-letters");
        let expected = run_batch(&sql, &bindings, &batch_letters).await;
        let batch_letters: Vec<String> = std::fs::read_to_string(batch_letters.join("clicks.ndjson")).unwrap().lines().map(String::from).collect();
        assert!(!batch_letters.is_empty() && batch_letters.len() <= odd, "seed {seed}: {} dead letters, at most {odd} expected", batch_letters.len());
        assert!(batch_letters.iter().all(|l| l.contains("late: event time") || l.contains("no event time")), "{batch_letters:?}");
        assert!(expected["per_hour_final"].num_rows() > 50 && expected["busiest"].num_rows() > 100);

        // Uninterrupted: each closed window reaches the sink once, and nothing is deleted.
        let (stored, sink, letters) = stream(&sql, &bindings, &tmp.path().join("straight"), seed, &[]).await;
        assert_same_views(&stored, &expected);
        assert_eq!(letters, batch_letters, "seed {seed}: the stream dead-letters what batch does");
        for view in ["per_hour_final", "busiest"] {
            let counts = &sink.upserts[view];
            assert!(counts.values().all(|&n| n == 1), "{view}: a window emitted twice: {counts:?}");
            assert_eq!(counts.len(), expected[view].num_rows(), "{view}");
        }
        assert!(sink.upserts["per_hour"].values().any(|&n| n > 1), "per_hour updates open windows");
        assert_eq!(sink.deletes, 0, "closing a window deletes nothing from the sinks");

        // Crashes at random points: the same windows, the same dead letters, once each.
        let crashes = [3 + seed as usize, 7, 11, 5, 9, 2 + seed as usize];
        let (stored, _, letters) = stream(&sql, &bindings, &tmp.path().join("crashing"), seed, &crashes).await;
        assert_same_views(&stored, &expected);
        assert_eq!(letters, batch_letters, "seed {seed}: dead letters after crashes");
    }
}

/// A view that cannot know when its groups are final is refused at start-up.
#[tokio::test]
async fn emit_on_window_close_needs_windows_that_close_on_their_own() {
    let cases = [
        ("CREATE VIEW v AS SELECT page, COUNT(*) AS n FROM clicks GROUP BY page EMIT ON WINDOW CLOSE", "needs one window"),
        ("CREATE VIEW v AS SELECT page, COUNT(*) AS n FROM TUMBLE(clicks, INTERVAL '1 hour') GROUP BY page EMIT ON WINDOW CLOSE", "window_start"),
        (
            "CREATE VIEW v AS SELECT window_start, page, COUNT(*) AS n FROM TUMBLE(clicks, INTERVAL '1 hour') GROUP BY window_start, page ORDER BY n DESC LIMIT 3 EMIT ON WINDOW CLOSE",
            "ROW_NUMBER() OVER (PARTITION BY window_start",
        ),
        ("CREATE VIEW v AS SELECT window_start, COUNT(*) AS n FROM HOP(clicks, INTERVAL '7 minutes', INTERVAL '1 hour') GROUP BY window_start", "multiple of the slide"),
        ("CREATE VIEW v AS SELECT window_start, COUNT(*) AS n FROM TUMBLE(clicks, INTERVAL '1 month') GROUP BY window_start", "no fixed length"),
        ("CREATE VIEW v AS SELECT window_start, COUNT(*) AS n FROM TUMBLE(nope, INTERVAL '1 hour') GROUP BY window_start", "`nope` is not a stream"),
        ("CREATE VIEW v AS SELECT COUNT(*) AS n FROM SESSION(clicks, INTERVAL '5 minutes')", "SESSION windows are not supported"),
        ("CREATE EXTERNAL TABLE r (id INT) STORED AS CSV LOCATION 'r.csv' EMIT ON WINDOW CLOSE", "ends a CREATE VIEW"),
    ];
    let source = SQL.split("-- Updated").next().unwrap();
    for (view, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let sql = pipeline_dir(tmp.path(), &format!("{source}\n{view};"));
        let result = match Catalog::load(&[sql], incremental_session_config(), &Default::default()).await {
            Ok(catalog) => Pipeline::compile(catalog, tmp.path().join("state")).await.map(drop),
            Err(e) => Err(e),
        };
        let message = result.expect_err(view).to_string();
        assert!(message.contains(expected), "{view}: {message}");
        assert!(message.contains("pipeline.sql"), "the error says where: {message}");
    }
}

/// Bad event-time declarations are refused with the stream's name.
#[tokio::test]
async fn bad_event_time_options_are_refused() {
    let cases = [
        ("'event_time' 'nope'", "event_time `nope`"),
        ("'event_time' 'page', 'event_time_format' '%d'", ""),
        ("'event_time_format' '%d'", "declare it too"),
        ("'watermark_delay' 'ten minutes'", "watermark_delay"),
        ("'event_time' 'date', 'watermark_delay' '5 fortnights'", "unknown unit"),
    ];
    for (options, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let sql =
            format!("CREATE EXTERNAL TABLE clicks (page VARCHAR NOT NULL, n INT, date VARCHAR) STORED AS KAFKA LOCATION 'c' OPTIONS ({options});");
        let sql = pipeline_dir(tmp.path(), &sql);
        match Catalog::load(&[sql], incremental_session_config(), &Default::default()).await {
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains("clicks") && message.contains(expected), "{options}: {message}");
            }
            // A VARCHAR read with a format is a valid declaration; its records are checked one by one.
            Ok(_) => assert!(expected.is_empty(), "{options} was accepted"),
        }
    }
}

/// A restart resumes the watermark where the checkpoint left it: a record behind it is
/// late in the first micro-batch after the restart too (it would not be if the
/// watermark started afresh from that record).
#[tokio::test]
async fn a_restart_resumes_the_watermark() {
    let tmp = tempfile::tempdir().unwrap();
    let sql = pipeline_dir(tmp.path(), SQL);
    let state = tmp.path().join("state");
    let micro = |stream: &trendflow_engine::contract::StreamDecl, offset: i64, date: &str| {
        let line = format!(r#"{{"page": "p1", "date": "{date}", "_partition": 0, "_offset": {offset}, "_timestamp": 0}}"#);
        let batch = datafusion::arrow::json::ReaderBuilder::new(stream.schema.clone()).build(line.as_bytes()).unwrap().next().unwrap().unwrap();
        trendflow_engine::contract::MicroBatch::new(batch, &[false], Offsets::from([(0, offset + 1)]), 0)
    };
    let mut sink = EmbeddedStore::new(state.join("store"));
    let load = || async { Catalog::load(std::slice::from_ref(&sql), incremental_session_config(), &Default::default()).await.unwrap() };
    let mut first = Pipeline::compile(load().await, state.clone()).await.unwrap();
    sink.open(&first.view_infos()).await.unwrap();
    let batch = micro(&first.catalog().streams()[0], 0, "01/03/2024 12:00");
    assert!(first.step(vec![("clicks".into(), batch)], &mut sink).await.unwrap().late.values().all(|&n| n == 0));
    first.checkpoint(&mut sink).await.unwrap();

    let mut resumed = Pipeline::compile(load().await, state.clone()).await.unwrap();
    assert!(resumed.restore().await.unwrap());
    let behind = micro(&resumed.catalog().streams()[0], 1, "01/03/2024 11:30");
    let report = resumed.step(vec![("clicks".into(), behind)], &mut sink).await.unwrap();
    assert_eq!(report.late["clicks"], 1, "11:30 is behind the watermark 11:50 the checkpoint holds");
    assert_eq!(report.watermarks["clicks"], 1_709_294_400_000 - 600_000, "12:00 minus the 10-minute delay");
}

/// The seed pipeline's product lines, with their `date`, through the ingest API and
/// Kafka: per-day windows of the records' own time, and a record behind the watermark
/// counted late (it still updates its product).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_lines_with_dates_make_per_day_windows_through_the_api_and_kafka() {
    use crate::kafka::{http_post, ok, spawn_ingest, trendflow};
    let broker = crate::broker::Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    // One partition: the records arrive in the order sent, so one of them is late.
    let (_ingest, api) = spawn_ingest(["--partitions", "1", "--kafka-brokers", &broker.addr]);
    let line = |asin: &str, category: u32, date: &str| {
        format!(r#"{{"asin": "{asin}", "title": "t", "price": 10.0, "category_id": {category}, "date": "{date}"}}"#)
    };
    let lines = [
        line("S1", 1, "30/12/2023 10:00"),
        line("S2", 1, "30/12/2023 23:59"),
        line("S3", 2, "31/12/2023 00:00"),
        line("S4", 1, "31/12/2023 12:00"),
        line("S5", 2, "02/01/2024 08:00"),
        // Behind the watermark (02/01 07:50): late for the windows.
        line("S6", 2, "31/12/2023 13:00"),
    ];
    let (status, body) = http_post(&api, "/v1/topics/products/records", lines.join("\n").as_bytes());
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(6)), "{body}");
    let categories = format!("categories=file:{}", crate::support::shared_data("amazon_categories.csv").display());
    let state = tmp.path().join("state");
    let summary = ok(trendflow()
        .args(["run", "--until-idle", "--flight-addr", "none", "--http-addr", "none"])
        .args(["--kafka-brokers", &broker.addr, "--source", &categories, "--state"])
        .arg(&state));
    assert!(summary.contains(", 1 late"), "{summary}");
    let query = |sql: &str| ok(trendflow().args(["query", sql, "--format", "csv", "--state"]).arg(&state));
    let days = query("SELECT CAST(window_start AS VARCHAR) AS day, category_id, products FROM category_trend ORDER BY 1, 2");
    assert_eq!(
        days.lines().collect::<Vec<_>>(),
        ["day,category_id,products", "2023-12-30T00:00:00Z,1,2", "2023-12-31T00:00:00Z,1,1", "2023-12-31T00:00:00Z,2,1", "2024-01-02T00:00:00Z,2,1"],
        "{days}"
    );
    let distribution = query("SELECT CAST(SUM(products) AS BIGINT) AS n FROM category_distribution");
    assert_eq!(distribution.lines().nth(1), Some("6"), "every product counts, the late one too: {distribution}");
}
