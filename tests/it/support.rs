//! Shared helpers: data preparation, a splitting source, streaming and batch runs,
//! and tolerant comparison of results.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, BooleanArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use trendflow_connectors::binding::{Bindings, SourceSettings};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::batch::{compute_views, ViewResult};
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{MicroBatch, Offsets, Poll, Source};
use trendflow_engine::keyed::KeyedTable;
use trendflow_engine::runtime::{Pipeline, RunOptions};
use trendflow_engine::session::{batch_session_config, incremental_session_config};
use trendflow_engine::EngineError;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test venv's Python (SecantusDB, Confluent's serializer), set up by scripts/test.sh.
pub fn python() -> PathBuf {
    let path = std::env::var_os("TRENDFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/trendflow/venv/bin/python"));
    assert!(path.exists(), "no test Python at {}: run scripts/test.sh, which sets it up (or set TRENDFLOW_PYTHON)", path.display());
    path
}

/// The shipped pipeline.
pub fn shipped_sql() -> PathBuf {
    repo().join("sql")
}

/// The shipped `products` stream, and `categories` as a reference table read from a file
/// (bound with `--source categories=file:…`) instead of the shipped changelog stream.
pub fn sources_with_reference_categories() -> String {
    let sources = std::fs::read_to_string(shipped_sql().join("01_sources.sql")).unwrap();
    let products = &sources[..sources.find("-- `categories`").expect("the shipped SQL declares categories after products")];
    format!(
        "{products}CREATE EXTERNAL TABLE categories (id INT NOT NULL, category_name VARCHAR) STORED AS CSV LOCATION 'categories.csv' \
         OPTIONS ('format.has_header' 'true');\n"
    )
}

/// How the shipped SQL declares the options of its streams (`products` first).
const SHIPPED_OPTIONS: &str = "OPTIONS ('format' 'json', 'changelog' 'upsert',";

/// A SQL directory: the shipped pipeline with `products` declared with `options` (an
/// upsert stream still).
pub fn sql_with_products_options(dir: &Path, options: &str) -> std::path::PathBuf {
    let sql = dir.join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    let sources = std::fs::read_to_string(shipped_sql().join("01_sources.sql")).unwrap();
    assert!(sources.contains(SHIPPED_OPTIONS), "the shipped products stream changed: update this test");
    let sources = sources.replacen(SHIPPED_OPTIONS, &format!("OPTIONS ({options}, 'changelog' 'upsert',"), 1);
    std::fs::write(sql.join("01_sources.sql"), sources).unwrap();
    std::fs::copy(shipped_sql().join("02_trends.sql"), sql.join("02_trends.sql")).unwrap();
    sql
}

/// A file of `../shared/data`; fails loudly when the shared data is missing.
pub fn shared_data(name: &str) -> PathBuf {
    let path = repo().join("..").join("shared").join("data").join(name);
    assert!(path.exists(), "shared test data missing: {} (the repository expects ../shared/data beside it)", path.display());
    path
}

/// Copies a products CSV adding a `_timestamp` column spread over `minutes` minutes,
/// so time-windowed views give the same answer in streaming and batch runs.
pub fn with_timestamps(products: &Path, out: &Path, minutes: u64) -> PathBuf {
    let text = std::fs::read_to_string(products).unwrap();
    let mut lines = text.lines();
    let mut csv = format!("{},_timestamp\n", lines.next().unwrap());
    for (i, line) in lines.enumerate() {
        let second = (i as u64 * 7) % (minutes * 60);
        csv.push_str(&format!("{line},2023-06-01T10:{:02}:{:02}\n", second / 60, second % 60));
    }
    let path = out.join("products_timed.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

/// Bindings of the shipped pipeline's tables to files.
pub fn bindings(products: &Path, categories: &Path) -> Bindings {
    let mut bindings = Bindings::default();
    bindings.bind_file("products", products);
    bindings.bind_file("categories", categories);
    bindings
}

/// Data rows of a CSV file with a header and no quoted newlines (e.g. a generated
/// `categories.csv`: a run bound to it counts each of its rows as a record).
pub fn csv_rows(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().skip(1).filter(|l| !l.is_empty()).count()
}

/// Waits until something listens on `addr`; fails naming `what` after `seconds`.
pub fn wait_for_port(addr: &str, what: &str, seconds: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not listen on {addr} within {seconds} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `meta.json` of the current checkpoint in a state directory (None before the first).
pub fn checkpoint_meta(state: &Path) -> Option<serde_json::Value> {
    let checkpoints = state.join("checkpoints");
    let current = std::fs::read_to_string(checkpoints.join("CURRENT")).ok()?;
    let meta = std::fs::read_to_string(checkpoints.join(current.trim()).join("meta.json")).ok()?;
    Some(serde_json::from_str(&meta).unwrap())
}

/// Settings for sources bound to files only (dead letters under `dead_letters`).
pub fn file_settings(dead_letters: &Path) -> SourceSettings {
    SourceSettings { dead_letter_dir: dead_letters.to_path_buf(), kafka_brokers: None, kafka_group: "test".into(), bounded: false }
}

/// Reads a stream's whole file through the file source, as one decoded batch.
pub async fn decode_all(catalog: &Catalog, bindings: &Bindings, dead_letters: &Path) -> RecordBatch {
    let mut sources = bindings.open_sources(catalog, &file_settings(dead_letters)).await.unwrap();
    let source = &mut sources[0];
    let mut batches = Vec::new();
    while let Poll::Batch(micro) = source.poll(1 << 20, Duration::ZERO).await.unwrap() {
        batches.push(micro.batch);
    }
    concat_batches(&catalog.streams()[0].schema, &batches).unwrap()
}

/// Replays a decoded batch as a stream in slices of random sizes; can fail on purpose.
pub struct SplitSource {
    stream: String,
    data: RecordBatch,
    /// Which rows of `data` delete their key (a changelog stream's), if any do.
    deleted: Option<BooleanArray>,
    position: usize,
    rng: Xorshift,
    max_split: usize,
    fail_after_polls: Option<usize>,
}

impl SplitSource {
    pub fn new(stream: &str, data: RecordBatch, seed: u64, max_split: usize) -> Self {
        Self { stream: stream.into(), data, deleted: None, position: 0, rng: Xorshift::new(seed), max_split, fail_after_polls: None }
    }

    /// Marks the rows of the data that delete their key (one flag per row).
    pub fn with_deletes(mut self, deleted: BooleanArray) -> Self {
        self.deleted = Some(deleted);
        self
    }

    /// Makes the source fail (as a crash would) on its `polls`+1-th poll.
    pub fn failing_after(mut self, polls: usize) -> Self {
        self.fail_after_polls = Some(polls);
        self
    }

    fn next_size(&mut self) -> usize {
        1 + self.rng.below(self.max_split as u64) as usize
    }
}

#[async_trait]
impl Source for SplitSource {
    fn stream(&self) -> &str {
        &self.stream
    }

    async fn poll(&mut self, _max_rows: usize, _max_delay: Duration) -> trendflow_engine::Result<Poll> {
        if let Some(left) = self.fail_after_polls.as_mut() {
            if *left == 0 {
                return Err(EngineError::Source { source_name: self.stream.clone(), cause: "injected crash".into() });
            }
            *left -= 1;
        }
        if self.position >= self.data.num_rows() {
            return Ok(Poll::Finished);
        }
        let size = self.next_size().min(self.data.num_rows() - self.position);
        let batch = self.data.slice(self.position, size);
        let deleted = self.deleted.as_ref().map(|d| d.slice(self.position, size));
        self.position += size;
        Ok(Poll::Batch(MicroBatch { batch, deleted, offsets: Offsets::from([(0, self.position as i64)]), rejected: 0 }))
    }

    async fn seek(&mut self, offsets: &Offsets) -> trendflow_engine::Result<()> {
        self.position = offsets.get(&0).copied().unwrap_or(0) as usize;
        Ok(())
    }
}

/// Reproducible pseudo-random numbers (xorshift) for test data and micro-batch cuts:
/// the same seed gives the same numbers.
#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A sequence from `seed` (0 counts as 1: xorshift never leaves 0).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next number, below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Options for a test run: drain the source, checkpoint after every micro-batch.
pub fn drain_options() -> RunOptions {
    RunOptions { until_idle: true, checkpoint_interval: Duration::ZERO, max_delay: Duration::from_millis(1), ..Default::default() }
}

/// Streams `data` through the pipeline in `sql` and returns every view's rows from the store.
pub async fn run_streaming(
    sql: &Path,
    bindings: &Bindings,
    source: SplitSource,
    state: &Path,
) -> trendflow_engine::Result<BTreeMap<String, RecordBatch>> {
    let catalog = Catalog::load(&[sql.to_path_buf()], incremental_session_config(), &bindings.files()).await?;
    let sources = sources_with(&catalog, bindings, Box::new(source), &state.join("dead-letters")).await;
    let mut pipeline = Pipeline::compile(catalog, state.to_path_buf()).await?;
    let mut store = EmbeddedStore::new(state.join("store"));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    pipeline.run(sources, &mut store, &drain_options(), shutdown, &mut |_| {}).await?;
    Ok(pipeline.view_infos().into_iter().map(|v| (v.name.clone(), store.rows(&v.name).unwrap().unwrap())).collect())
}

/// `source` for its stream, and for every other stream of `catalog` (the shipped
/// `categories`) the file `bindings` binds it to.
pub async fn sources_with(catalog: &Catalog, bindings: &Bindings, source: Box<dyn Source>, dead_letters: &Path) -> Vec<Box<dyn Source>> {
    let mut sources = bindings.open_sources(catalog, &file_settings(dead_letters)).await.unwrap();
    sources.retain(|s| s.stream() != source.stream());
    sources.push(source);
    sources
}

/// Computes every view once over the whole files, as `trendflow batch` does, and keeps
/// one row per view key (the last, as a stream's upserts do).
pub async fn run_batch(sql: &Path, bindings: &Bindings, dead_letters: &Path) -> BTreeMap<String, RecordBatch> {
    let catalog = Catalog::load(&[sql.to_path_buf()], batch_session_config(), &bindings.files()).await.unwrap();
    let (streams, _) = bindings.read_streams(&catalog, &file_settings(dead_letters)).await.unwrap();
    last_row_per_key(compute_views(&catalog, streams).await.unwrap())
}

/// Each view's rows applied as upserts, as a sink would: the last row of each key.
pub fn last_row_per_key(views: Vec<ViewResult>) -> BTreeMap<String, RecordBatch> {
    let mut last = BTreeMap::new();
    for view in views {
        let mut rows = KeyedTable::new(view.info.schema.clone(), view.info.key.clone()).unwrap();
        rows.upsert(&view.rows).unwrap();
        last.insert(view.info.name, rows.to_batch().unwrap());
    }
    last
}

/// A row as cells: text for everything but floats, kept numeric for tolerant comparison.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Cell {
    Text(String),
    Float(f64),
}

/// The rows of `batch`, sorted, as cells.
pub fn rows(batch: &RecordBatch) -> Vec<Vec<Cell>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows: Vec<Vec<Cell>> = (0..batch.num_rows())
        .map(|r| {
            batch
                .columns()
                .iter()
                .map(|column| match column.data_type() {
                    DataType::Float64 if column.is_valid(r) => Cell::Float(column.as_any().downcast_ref::<Float64Array>().unwrap().value(r)),
                    _ => Cell::Text(ArrayFormatter::try_new(column.as_ref(), &options).unwrap().value(r).to_string()),
                })
                .collect()
        })
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    rows
}

/// Asserts two results hold the same rows; floats equal up to a relative 1e-9
/// (AVG depends on summation order).
pub fn assert_same_rows(view: &str, actual: &RecordBatch, expected: &RecordBatch) {
    let (a, e) = (rows(actual), rows(expected));
    assert_eq!(a.len(), e.len(), "view {view}: {} rows, expected {}", a.len(), e.len());
    for (ra, re) in a.iter().zip(&e) {
        let same = ra.len() == re.len()
            && ra.iter().zip(re).all(|(x, y)| match (x, y) {
                (Cell::Float(x), Cell::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                _ => x == y,
            });
        assert!(same, "view {view}: row {ra:?} differs from expected {re:?}");
    }
}

/// Asserts every view of `actual` equals `expected` and that both cover the same views.
pub fn assert_same_views(actual: &BTreeMap<String, RecordBatch>, expected: &BTreeMap<String, RecordBatch>) {
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (view, batch) in expected {
        assert_same_rows(view, &actual[view], batch);
    }
}

/// Writes `sql` as the only file of a fresh pipeline directory.
pub fn pipeline_dir(root: &Path, sql: &str) -> PathBuf {
    let dir = root.join("sql");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pipeline.sql"), sql).unwrap();
    dir
}

/// A string map helper.
pub fn files(pairs: &[(&str, &Path)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned())).collect()
}

/// Appends one test's figures to `reliability.ndjson` in the artifacts directory
/// (`TRENDFLOW_ARTIFACTS`, default `target/artifacts`), which `scripts/test.sh` prints.
pub fn report(test: &str, figures: serde_json::Value) {
    use std::io::Write;
    let dir = std::env::var_os("TRENDFLOW_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|| repo().join("target/artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    let line = serde_json::json!({"test": test, "figures": figures});
    eprintln!("{line}");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("reliability.ndjson")).unwrap();
    writeln!(file, "{line}").unwrap();
}
