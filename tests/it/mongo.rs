//! The MongoDB sink and reader against real MongoDB-protocol servers, each case once per
//! server (`mongo::secantusdb::…`, `mongo::ferretdb::…`): SecantusDB (Python, from PyPI)
//! and FerretDB 1.x on SQLite (Go, built by scripts/setup.sh), each started as a process
//! on a free loopback port; or real MongoDB when MONGODB_URI is set.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use mongodb::bson::{doc, Bson, Document};
use trendflow_connectors::mongo::{connect, MongoOptions, MongoSink, MongoTable};
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Changeset, Poll, Sink, Source, ViewInfo};
use trendflow_engine::runtime::Pipeline;
use trendflow_engine::session::incremental_session_config;

use crate::support::*;

/// The MongoDB-protocol servers the harness starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SecantusDB, from the test venv (`TRENDFLOW_PYTHON`).
    SecantusDb,
    /// FerretDB 1.x with its SQLite backend (`FERRETDB_BIN`).
    FerretDb,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::SecantusDb => "SecantusDB",
            Backend::FerretDb => "FerretDB",
        }
    }
}

/// The FerretDB binary scripts/setup.sh builds.
fn ferretdb() -> PathBuf {
    let path = std::env::var_os("FERRETDB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/trendflow/bin/ferretdb"));
    assert!(path.exists(), "no FerretDB at {}: run scripts/test.sh, which builds it (or set FERRETDB_BIN)", path.display());
    path
}

/// A MongoDB-protocol server for one test.
pub struct MongoServer {
    pub uri: String,
    pub database: String,
    backend: Backend,
    child: Option<Child>,
    port: u16,
    storage: PathBuf,
    /// Keep data in memory (fast) rather than in `storage` (survives a restart);
    /// SecantusDB only, FerretDB always keeps it in `storage` (see `ferretdb`).
    in_memory: bool,
}

impl MongoServer {
    /// A SecantusDB server keeping its data in memory (or real MongoDB when `MONGODB_URI` is set).
    pub fn start(name: &str, storage: &Path) -> Self {
        Self::start_on(Backend::SecantusDb, name, storage)
    }

    /// A `backend` server keeping its data in memory (or real MongoDB when `MONGODB_URI` is set).
    pub fn start_on(backend: Backend, name: &str, storage: &Path) -> Self {
        // The backend is in the name: with MONGODB_URI both variants of a case share one server.
        let database = format!("tf_{name}_{backend:?}_{}", std::process::id());
        if let Ok(uri) = std::env::var("MONGODB_URI") {
            return Self { uri, database, backend, child: None, port: 0, storage: storage.into(), in_memory: true };
        }
        Self::spawned(backend, database, storage, true, "")
    }

    /// A `backend` server started here whatever `MONGODB_URI` says.
    fn spawned(backend: Backend, database: String, storage: &Path, in_memory: bool, uri_options: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let uri = format!("mongodb://127.0.0.1:{port}{uri_options}");
        let mut server = Self { uri, database, backend, child: None, port, storage: storage.into(), in_memory };
        server.spawn();
        server
    }

    /// The server answering, as assertion messages name it.
    pub fn name(&self) -> &'static str {
        if self.port == 0 {
            "MongoDB at MONGODB_URI"
        } else {
            self.backend.name()
        }
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.storage).unwrap();
        let mut command = match self.backend {
            Backend::SecantusDb => self.secantusdb(),
            Backend::FerretDb => self.ferretdb(),
        };
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        self.child = Some(child.unwrap_or_else(|e| panic!("{} starts: {e}", self.name())));
        wait_for_port(&format!("127.0.0.1:{}", self.port), self.name(), 60);
    }

    fn secantusdb(&self) -> Command {
        let mut command = Command::new(python());
        command
            .args(["-m", "secantus", "--host", "127.0.0.1", "--port", &self.port.to_string(), "--storage-path"])
            .arg(if self.in_memory { Path::new(":memory:") } else { self.storage.as_path() })
            .args(["--log-level", "WARNING"]);
        command
    }

    fn ferretdb(&self) -> Command {
        // One SQLite file per database in `storage`, even for `in_memory`: FerretDB
        // 1.24's in-memory SQLite (`?mode=memory`) hangs on the first update that
        // modifies a stored document.
        let url = format!("file:{}/", self.storage.display());
        let mut command = Command::new(ferretdb());
        command
            .args(["--handler=sqlite", &format!("--sqlite-url={url}"), &format!("--listen-addr=127.0.0.1:{}", self.port)])
            .arg(format!("--state-dir={}", self.storage.display()))
            // No telemetry, and no debug HTTP listener: its fixed default port would be
            // contended for by the servers of tests running at once.
            .args(["--telemetry=disable", "--debug-addr=-", "--log-level=WARN"]);
        command
    }

    /// Stops the server the way an operator does (SIGTERM, then SIGKILL after 10 s):
    /// writes acknowledged with `w: 1` are only durable on a clean shutdown, as in MongoDB
    /// without journaling.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// FerretDB 1.x stores no BSON Decimal128 (real MongoDB at `MONGODB_URI` does).
    fn lacks_decimal128(&self) -> bool {
        self.port != 0 && self.backend == Backend::FerretDb
    }

    pub(crate) fn options(&self) -> MongoOptions {
        MongoOptions { uri: self.uri.clone(), database: self.database.clone(), write_concern: "1".into(), ..Default::default() }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `#[tokio::test]` per case on one server, in a module named after the server.
macro_rules! cases_on {
    ($server:ident, $backend:ident: $($case:ident),* $(,)?) => {
        mod $server {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(super::Backend::$backend).await
                }
            )*
        }
    };
}

cases_on!(secantusdb, SecantusDb:
    views_streamed_into_mongodb_equal_batch_and_replays_are_idempotent,
    a_mongodb_outage_loses_nothing,
    a_restart_removes_documents_a_lost_run_left,
    every_mapped_type_round_trips,
);
cases_on!(ferretdb, FerretDb:
    views_streamed_into_mongodb_equal_batch_and_replays_are_idempotent,
    a_mongodb_outage_loses_nothing,
    a_restart_removes_documents_a_lost_run_left,
    every_mapped_type_round_trips,
);

/// Every view's collection read back through the MongoDB table provider.
pub(crate) async fn read_views(options: &MongoOptions, views: &[ViewInfo]) -> std::collections::BTreeMap<String, RecordBatch> {
    let database = connect(options).await.unwrap();
    let ctx = SessionContext::new();
    let mut out = std::collections::BTreeMap::new();
    for view in views {
        ctx.register_table(view.name.as_str(), Arc::new(MongoTable::new(database.clone(), view.name.clone(), view))).unwrap();
        let batches = ctx.sql(&format!("SELECT * FROM {}", view.name)).await.unwrap().collect().await.unwrap();
        out.insert(view.name.clone(), datafusion::arrow::compute::concat_batches(&view.schema, &batches).unwrap());
    }
    out
}

pub(crate) async fn raw_documents(options: &MongoOptions, collection: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    let database = connect(options).await.unwrap();
    let mut documents: Vec<Document> = database.collection::<Document>(collection).find(doc! {}).await.unwrap().try_collect().await.unwrap();
    documents.sort_by_key(|d| d.get("_id").map(|id| id.to_string()));
    documents
}

async fn stream_into_mongo(
    fx_bindings: &trendflow_connectors::binding::Bindings,
    data: RecordBatch,
    seed: u64,
    state: &Path,
    options: &MongoOptions,
) -> Vec<ViewInfo> {
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &fx_bindings.files()).await.unwrap();
    let source = SplitSource::new("products", data, seed, 1_200);
    let sources = sources_with(&catalog, fx_bindings, Box::new(source), &state.join("dead-letters")).await;
    let mut pipeline = Pipeline::compile(catalog, state.to_path_buf()).await.unwrap();
    let mut sink = MongoSink::new(connect(options).await.unwrap(), options.clone());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    pipeline.run(sources, &mut sink, &drain_options(), shutdown, &mut |_| {}).await.unwrap();
    pipeline.view_infos()
}

fn fixture(tmp: &Path) -> trendflow_connectors::binding::Bindings {
    // SecantusDB takes milliseconds per statement: keep the volume small but the shape complete.
    trendflow_datagen::generate(&trendflow_datagen::GenOptions { rows: 3_000, seed: 8, days: 0, out: tmp.into() }).unwrap();
    let timed = with_timestamps(&tmp.join("products.csv"), tmp, 2);
    bindings(&timed, &tmp.join("categories.csv"))
}

async fn decoded(bindings: &trendflow_connectors::binding::Bindings, dead: &Path) -> RecordBatch {
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &bindings.files()).await.unwrap();
    decode_all(&catalog, bindings, dead).await
}

async fn views_streamed_into_mongodb_equal_batch_and_replays_are_idempotent(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = MongoServer::start_on(backend, "views", &tmp.path().join("db"));
    let on = server.name();
    let options = server.options();
    let bindings = fixture(tmp.path());
    let data = decoded(&bindings, &tmp.path().join("dl")).await;
    let views = stream_into_mongo(&bindings, data.clone(), 4, &tmp.path().join("s1"), &options).await;
    let expected = run_batch(&shipped_sql(), &bindings, &tmp.path().join("dl-b")).await;
    assert_same_views(&read_views(&options, &views).await, &expected);
    assert_eq!(raw_documents(&options, "top_categories_by_demand").await.len(), 10, "{on}: categories that left the top 10 were deleted");
    // Projections that leave out a non-nullable column, and one with no column at all.
    let ctx = SessionContext::new();
    let top = views.iter().find(|v| v.name == "top_categories_by_demand").unwrap();
    ctx.register_table("top", Arc::new(MongoTable::new(connect(&options).await.unwrap(), top.name.clone(), top))).unwrap();
    for sql in ["SELECT category_id FROM top", "SELECT COUNT(*) FROM top"] {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let first = batches.iter().find(|b| b.num_rows() > 0).unwrap();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert!(rows == 10 || (rows == 1 && first.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0) == 10), "{on}: {sql}");
    }
    let before: Vec<Vec<Document>> = futures::future::join_all(views.iter().map(|v| raw_documents(&options, &v.name))).await;
    // A second job from scratch replays every changeset (same splits) into the same collections.
    stream_into_mongo(&bindings, data, 4, &tmp.path().join("s2"), &options).await;
    let after: Vec<Vec<Document>> = futures::future::join_all(views.iter().map(|v| raw_documents(&options, &v.name))).await;
    for ((view, b), a) in views.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{on}, {}: identical documents after a replay", view.name);
    }
    let meta = raw_documents(&options, trendflow_connectors::mongo::META_COLLECTION).await;
    assert_eq!(meta.len(), views.len(), "{on}");
    assert!(meta.iter().all(|m| m.get_i64("batch_id").unwrap() > 0 && m.get_datetime("updated_at").is_ok()), "{on}: {meta:?}");
}

async fn a_mongodb_outage_loses_nothing(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    // The outage is simulated by stopping the server process, so the server is the
    // harness's even when MONGODB_URI is set.
    let options = "/?serverSelectionTimeoutMS=2000&connectTimeoutMS=1000";
    let mut server = MongoServer::spawned(backend, "tf_outage".into(), &tmp.path().join("db"), false, options);
    let on = server.name();
    let options = server.options();
    let bindings = fixture(tmp.path());
    let data = decoded(&bindings, &tmp.path().join("dl")).await;
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &bindings.files()).await.unwrap();
    let mut pipeline = Pipeline::compile(catalog, tmp.path().join("state")).await.unwrap();
    let mut sink = MongoSink::new(connect(&options).await.unwrap(), options.clone());
    let health = sink.health();
    sink.open(&pipeline.view_infos()).await.unwrap();
    // The categories stream first, from the file it is bound to, as `run` would read it.
    let mut categories = bindings.open_sources(pipeline.catalog(), &file_settings(&tmp.path().join("dl-c"))).await.unwrap();
    categories.retain(|s| s.stream() == "categories");
    while let Poll::Batch(micro) = categories[0].poll(1 << 20, Duration::ZERO).await.unwrap() {
        pipeline.step(vec![("categories".into(), micro)], &mut sink).await.unwrap();
        pipeline.checkpoint(&mut sink).await.unwrap();
    }
    let mut source = SplitSource::new("products", data, 3, 600);
    let mut unhealthy_seen = false;
    let mut step = 0;
    let mut restarted = false;
    while let Poll::Batch(micro) = source.poll(0, Duration::ZERO).await.unwrap() {
        step += 1;
        if step == 3 {
            server.stop();
        }
        // As `run` does: a step, then a checkpoint, whose flush writes the step's changes.
        let run = async {
            pipeline.step(vec![("products".into(), micro)], &mut sink).await?;
            pipeline.checkpoint(&mut sink).await
        };
        if step == 3 {
            // The server comes back while the sink is retrying this micro-batch.
            let (outcome, ()) = tokio::join!(run, async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                // The job reports itself not ready while its sink retries (what /readyz serves).
                unhealthy_seen = !health.load(std::sync::atomic::Ordering::Relaxed);
                tokio::task::block_in_place(|| server.spawn());
                restarted = true;
            });
            outcome.unwrap();
        } else {
            run.await.unwrap();
        }
    }
    assert!(restarted, "{on}");
    assert!(unhealthy_seen, "{on}: the sink did not report itself unhealthy during the outage");
    assert!(health.load(std::sync::atomic::Ordering::Relaxed), "{on}: healthy again once writes succeed");
    let expected = run_batch(&shipped_sql(), &bindings, &tmp.path().join("dl-b")).await;
    assert_same_views(&read_views(&options, &pipeline.view_infos()).await, &expected);
}

/// MongoDB's side of `a_restart_undoes_what_a_lost_run_left_in_the_sink`: the
/// document a run wrote before dying without a checkpoint is deleted by the restart.
async fn a_restart_removes_documents_a_lost_run_left(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = MongoServer::start_on(backend, "reset", &tmp.path().join("db"));
    let on = server.name();
    let options = server.options();
    let mut sink = MongoSink::new(connect(&options).await.unwrap(), options.clone());
    let cats = |documents: Vec<Document>| documents.iter().map(|d| d.get_str("cat").unwrap().to_string()).collect::<Vec<_>>();
    let data = crate::semantics::lose_a_run(tmp.path(), &mut sink).await;
    assert_eq!(cats(raw_documents(&options, "top1").await), vec!["y"], "{on}");
    crate::semantics::restart(tmp.path(), &mut sink, data).await;
    assert_eq!(cats(raw_documents(&options, "top1").await), vec!["x"], "{on}: the lost run's `y` was deleted");
}

async fn every_mapped_type_round_trips(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = MongoServer::start_on(backend, "types", &tmp.path().join("db"));
    let on = server.name();
    let options = server.options();
    let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1), Some(2)]), None]));
    let inner: ArrayRef = Arc::new(StringArray::from(vec!["x", "y"]));
    let record: ArrayRef = Arc::new(StructArray::from(vec![(Arc::new(Field::new("s", DataType::Utf8, false)), inner)]));
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("k", Arc::new(StringArray::from(vec!["a", "b"]))),
        ("i32", Arc::new(Int32Array::from(vec![Some(-5), None]))),
        ("i64", Arc::new(Int64Array::from(vec![Some(1 << 40), Some(0)]))),
        ("f64", Arc::new(Float64Array::from(vec![Some(1.5), Some(-0.25)]))),
        ("dec", Arc::new(Decimal128Array::from(vec![Some(12345), Some(-1)]).with_precision_and_scale(10, 2).unwrap())),
        ("flag", Arc::new(BooleanArray::from(vec![Some(true), Some(false)]))),
        ("ts", Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None]).with_timezone("UTC"))),
        ("day", Arc::new(Date32Array::from(vec![Some(19_000), Some(0)]))),
        ("list", list),
        ("record", record),
    ];
    if server.lacks_decimal128() {
        // FerretDB 1.x has no BSON Decimal128: it closes the connection on any command
        // holding one. The sink refuses such a view there
        // (`ferretdb_1_values_it_cannot_store_are_refused_before_writing`).
        columns.retain(|(name, _)| *name != "dec");
    }
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
    let view = ViewInfo { name: "types".into(), schema: schema.clone(), key: vec![0] };
    let mut indexed = options.clone();
    indexed.indexes.insert("types".into(), vec![vec!["i64".into(), "flag".into()]]);
    let mut sink = MongoSink::new(connect(&options).await.unwrap(), indexed);
    sink.open(std::slice::from_ref(&view)).await.unwrap();
    let database = connect(&options).await.unwrap();
    let indexes = database.collection::<Document>("types").list_index_names().await.unwrap();
    assert!(indexes.contains(&"i64_flag".to_string()), "{on}: {indexes:?}");
    let changes = Changeset { upserts: batch.clone(), deletes: RecordBatch::new_empty(view.key_schema()) };
    sink.apply(&view, &changes).await.unwrap();
    assert!(raw_documents(&options, "types").await.is_empty(), "{on}: changes wait for the flush before a checkpoint");
    sink.flush(&Default::default()).await.unwrap();
    sink.apply(&view, &changes).await.unwrap();
    sink.flush(&Default::default()).await.unwrap();
    let documents = raw_documents(&options, "types").await;
    assert_eq!(documents.len(), 2, "{on}: applying twice leaves two documents");
    let a = &documents[0];
    let expected = [
        ("_id", Bson::String("a".into())),
        ("i32", Bson::Int32(-5)),
        ("i64", Bson::Int64(1 << 40)),
        ("f64", Bson::Double(1.5)),
        ("flag", Bson::Boolean(true)),
        ("list", Bson::Array(vec![Bson::Int64(1), Bson::Int64(2)])),
        ("record", Bson::Document(doc! {"s": "x"})),
    ];
    for (field, value) in expected {
        assert_eq!(a.get(field), Some(&value), "{on}: `{field}` of {a}");
    }
    assert!(server.lacks_decimal128() || matches!(a.get("dec"), Some(Bson::Decimal128(_))), "{on}: {a}");
    assert_eq!(a.get_datetime("ts").map(|d| d.timestamp_millis()), Ok(1_700_000_000_123), "{on}: {a}");
    assert_eq!(a.get_datetime("day").map(|d| d.timestamp_millis()), Ok(19_000 * 86_400_000), "{on}: {a}");
    let b = &documents[1];
    assert_eq!((b.get("i32"), b.get("ts"), b.get("list")), (Some(&Bson::Null), Some(&Bson::Null), Some(&Bson::Null)), "{on}: {b}");
    // Scalars read back into Arrow equal what was written.
    let scalars: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.data_type().is_primitive() || matches!(f.data_type(), DataType::Utf8 | DataType::Boolean))
        .map(|(i, _)| i)
        .collect();
    let scalar_view = ViewInfo { name: "types".into(), schema: Arc::new(schema.project(&scalars).unwrap()), key: vec![0] };
    let back = read_views(&options, &[scalar_view]).await.remove("types").unwrap();
    assert_same_rows(&format!("types on {on}"), &back, &batch.project(&scalars).unwrap());
}

/// FerretDB 1.x stores no BSON Decimal128 and no NaN, and closes the connection on a
/// command holding either, which the sink would retry as an outage for ever: it refuses
/// a DECIMAL column at `open` and a NaN before writing it instead, naming the column.
#[tokio::test(flavor = "multi_thread")]
async fn ferretdb_1_values_it_cannot_store_are_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    // About FerretDB itself, so it is the harness's even when MONGODB_URI is set.
    let server = MongoServer::spawned(Backend::FerretDb, "tf_refused".into(), &tmp.path().join("db"), true, "");
    let options = server.options();
    let view = |name: &str, column: Field| {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false), column]));
        ViewInfo { name: name.into(), schema, key: vec![0] }
    };
    let money = view("money", Field::new("price", DataType::Decimal128(10, 2), true));
    let mut sink = MongoSink::new(connect(&options).await.unwrap(), options.clone());
    let error = sink.open(std::slice::from_ref(&money)).await.unwrap_err().to_string();
    assert!(error.contains("column `price` is a DECIMAL, which FerretDB 1.x cannot store"), "{error}");

    let ratios = view("ratios", Field::new("ratio", DataType::Float64, true));
    sink.open(std::slice::from_ref(&ratios)).await.unwrap();
    let columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(Float64Array::from(vec![0.5, f64::NAN]))];
    let upserts = RecordBatch::try_new(ratios.schema.clone(), columns).unwrap();
    let changes = Changeset { upserts, deletes: RecordBatch::new_empty(ratios.key_schema()) };
    let error = sink.apply(&ratios, &changes).await.unwrap_err().to_string();
    assert!(error.contains(r#"view `ratios`, row `"b"`: `ratio` holds NaN, which FerretDB 1.x cannot store"#), "{error}");
}
