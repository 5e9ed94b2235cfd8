//! The MongoDB sink against a real MongoDB-protocol server: SecantusDB started as a
//! process on a free loopback port (or real MongoDB when MONGODB_URI is set).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use mongodb::bson::{doc, Bson, Document};
use trendflow_connectors::mongo::{connect, MongoOptions, MongoSink, MongoTable};
use trendflow_engine::catalog::{incremental_session_config, Catalog};
use trendflow_engine::runtime::{Pipeline, Sink};
use trendflow_engine::view::{Changeset, ViewInfo};

use crate::support::*;

/// A MongoDB-protocol server for one test.
pub struct MongoServer {
    pub uri: String,
    pub database: String,
    child: Option<Child>,
    port: u16,
    storage: PathBuf,
    /// Keep data in memory (fast) rather than in `storage` (survives a restart).
    in_memory: bool,
}

impl MongoServer {
    /// A server keeping its data in memory (or real MongoDB when `MONGODB_URI` is set).
    pub fn start(name: &str, storage: &Path) -> Self {
        let database = format!("tf_{name}_{}", std::process::id());
        if let Ok(uri) = std::env::var("MONGODB_URI") {
            return Self { uri, database, child: None, port: 0, storage: storage.into(), in_memory: true };
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server =
            Self { uri: format!("mongodb://127.0.0.1:{port}"), database, child: None, port, storage: storage.into(), in_memory: true };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.storage).unwrap();
        let child = Command::new(python())
            .args(["-m", "secantus", "--host", "127.0.0.1", "--port", &self.port.to_string(), "--storage-path"])
            .arg(if self.in_memory { Path::new(":memory:") } else { self.storage.as_path() })
            .args(["--log-level", "WARNING"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("SecantusDB starts");
        self.child = Some(child);
        wait_for_port(&format!("127.0.0.1:{}", self.port), "SecantusDB", 60);
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

    fn options(&self) -> MongoOptions {
        MongoOptions { uri: self.uri.clone(), database: self.database.clone(), write_concern: "1".into(), ..Default::default() }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every view's collection read back through the MongoDB table provider.
async fn read_views(options: &MongoOptions, views: &[ViewInfo]) -> std::collections::BTreeMap<String, RecordBatch> {
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

async fn raw_documents(options: &MongoOptions, collection: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    let database = connect(options).await.unwrap();
    let mut documents: Vec<Document> = database.collection::<Document>(collection).find(doc! {}).await.unwrap().try_collect().await.unwrap();
    documents.sort_by_key(|d| d.get("_id").map(|id| id.to_string()));
    documents
}

async fn stream_into_mongo(fx_bindings: &trendflow_connectors::binding::Bindings, data: RecordBatch, seed: u64, state: &Path, options: &MongoOptions) -> Vec<ViewInfo> {
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &fx_bindings.files()).await.unwrap();
    let mut pipeline = Pipeline::compile(catalog, state.to_path_buf()).await.unwrap();
    let mut sink = MongoSink::new(connect(options).await.unwrap(), options.clone());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let source = SplitSource::new("products", data, seed, 1_200);
    pipeline.run(vec![Box::new(source)], &mut sink, &drain_options(), shutdown, &mut |_| {}).await.unwrap();
    pipeline.view_infos()
}

fn fixture(tmp: &Path) -> trendflow_connectors::binding::Bindings {
    // SecantusDB takes milliseconds per statement: keep the volume small but the shape complete.
    trendflow_datagen::generate(&trendflow_datagen::GenOptions { rows: 3_000, seed: 8, out: tmp.into() }).unwrap();
    let timed = with_timestamps(&tmp.join("products.csv"), tmp, 2);
    bindings(&timed, &tmp.join("categories.csv"))
}

async fn decoded(bindings: &trendflow_connectors::binding::Bindings, dead: &Path) -> RecordBatch {
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &bindings.files()).await.unwrap();
    decode_all(&catalog, bindings, dead).await
}

#[tokio::test(flavor = "multi_thread")]
async fn views_streamed_into_mongodb_equal_batch_and_replays_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MongoServer::start("views", &tmp.path().join("db"));
    let options = server.options();
    let bindings = fixture(tmp.path());
    let data = decoded(&bindings, &tmp.path().join("dl")).await;
    let views = stream_into_mongo(&bindings, data.clone(), 4, &tmp.path().join("s1"), &options).await;
    let expected = run_batch(&shipped_sql(), &bindings, &tmp.path().join("dl-b")).await;
    assert_same_views(&read_views(&options, &views).await, &expected);
    assert_eq!(raw_documents(&options, "top_categories_by_demand").await.len(), 10, "categories that left the top 10 were deleted");
    // Projections that leave out a non-nullable column, and one with no column at all.
    let ctx = SessionContext::new();
    let top = views.iter().find(|v| v.name == "top_categories_by_demand").unwrap();
    ctx.register_table("top", Arc::new(MongoTable::new(connect(&options).await.unwrap(), top.name.clone(), top))).unwrap();
    for sql in ["SELECT category_id FROM top", "SELECT COUNT(*) FROM top"] {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let first = batches.iter().find(|b| b.num_rows() > 0).unwrap();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert!(rows == 10 || (rows == 1 && first.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0) == 10), "{sql}");
    }
    let before: Vec<Vec<Document>> = futures::future::join_all(views.iter().map(|v| raw_documents(&options, &v.name))).await;
    // A second job from scratch replays every changeset (same splits) into the same collections.
    stream_into_mongo(&bindings, data, 4, &tmp.path().join("s2"), &options).await;
    let after: Vec<Vec<Document>> = futures::future::join_all(views.iter().map(|v| raw_documents(&options, &v.name))).await;
    for ((view, b), a) in views.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{}: identical documents after a replay", view.name);
    }
    let meta = raw_documents(&options, trendflow_connectors::mongo::META_COLLECTION).await;
    assert_eq!(meta.len(), views.len());
    assert!(meta.iter().all(|m| m.get_i64("batch_id").unwrap() > 0 && m.get_datetime("updated_at").is_ok()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mongodb_outage_loses_nothing() {
    if std::env::var("MONGODB_URI").is_ok() {
        // The outage is simulated by stopping the server process, which only a harness-started server allows.
        eprintln!("a_mongodb_outage_loses_nothing: uses the SecantusDB harness even when MONGODB_URI is set");
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = MongoServer {
        uri: format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=2000&connectTimeoutMS=1000"),
        database: "tf_outage".into(),
        child: None,
        port,
        storage: tmp.path().join("db"),
        in_memory: false,
    };
    server.spawn();
    let options = server.options();
    let bindings = fixture(tmp.path());
    let data = decoded(&bindings, &tmp.path().join("dl")).await;
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &bindings.files()).await.unwrap();
    let mut pipeline = Pipeline::compile(catalog, tmp.path().join("state")).await.unwrap();
    let mut sink = MongoSink::new(connect(&options).await.unwrap(), options.clone());
    let health = sink.health();
    sink.open(&pipeline.view_infos()).await.unwrap();
    let mut source = SplitSource::new("products", data, 3, 600);
    let mut unhealthy_seen = false;
    use trendflow_engine::runtime::{Poll, Source};
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
    assert!(restarted);
    assert!(unhealthy_seen, "the sink did not report itself unhealthy during the outage");
    assert!(health.load(std::sync::atomic::Ordering::Relaxed), "healthy again once writes succeed");
    let expected = run_batch(&shipped_sql(), &bindings, &tmp.path().join("dl-b")).await;
    assert_same_views(&read_views(&options, &pipeline.view_infos()).await, &expected);
}

/// MongoDB's side of `a_restart_undoes_what_a_lost_run_left_in_the_sink`: the
/// document a run wrote before dying without a checkpoint is deleted by the restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_removes_documents_a_lost_run_left() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MongoServer::start("reset", &tmp.path().join("db"));
    let options = server.options();
    let mut sink = MongoSink::new(connect(&options).await.unwrap(), options.clone());
    let cats = |documents: Vec<Document>| documents.iter().map(|d| d.get_str("cat").unwrap().to_string()).collect::<Vec<_>>();
    let data = crate::semantics::lose_a_run(tmp.path(), &mut sink).await;
    assert_eq!(cats(raw_documents(&options, "top1").await), vec!["y"]);
    crate::semantics::restart(tmp.path(), &mut sink, data).await;
    assert_eq!(cats(raw_documents(&options, "top1").await), vec!["x"], "the lost run's `y` was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mapped_type_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MongoServer::start("types", &tmp.path().join("db"));
    let options = server.options();
    let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1), Some(2)]), None]));
    let inner: ArrayRef = Arc::new(StringArray::from(vec!["x", "y"]));
    let record: ArrayRef = Arc::new(StructArray::from(vec![(Arc::new(Field::new("s", DataType::Utf8, false)), inner)]));
    let columns: Vec<(&str, ArrayRef)> = vec![
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
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
    let view = ViewInfo { name: "types".into(), schema: schema.clone(), key: vec![0] };
    let mut indexed = options.clone();
    indexed.indexes.insert("types".into(), vec![vec!["i64".into(), "flag".into()]]);
    let mut sink = MongoSink::new(connect(&options).await.unwrap(), indexed);
    sink.open(std::slice::from_ref(&view)).await.unwrap();
    let database = connect(&options).await.unwrap();
    let indexes = database.collection::<Document>("types").list_index_names().await.unwrap();
    assert!(indexes.contains(&"i64_flag".to_string()), "{indexes:?}");
    let changes = Changeset { upserts: batch.clone(), deletes: RecordBatch::new_empty(view.key_schema()) };
    sink.apply(&view, &changes).await.unwrap();
    assert!(raw_documents(&options, "types").await.is_empty(), "changes wait for the flush before a checkpoint");
    sink.flush(&Default::default()).await.unwrap();
    sink.apply(&view, &changes).await.unwrap();
    sink.flush(&Default::default()).await.unwrap();
    let documents = raw_documents(&options, "types").await;
    assert_eq!(documents.len(), 2, "applying twice leaves two documents");
    let a = &documents[0];
    assert_eq!(a.get("_id"), Some(&Bson::String("a".into())));
    assert_eq!(a.get("i32"), Some(&Bson::Int32(-5)));
    assert_eq!(a.get("i64"), Some(&Bson::Int64(1 << 40)));
    assert_eq!(a.get("f64"), Some(&Bson::Double(1.5)));
    assert!(matches!(a.get("dec"), Some(Bson::Decimal128(_))), "{a}");
    assert_eq!(a.get("flag"), Some(&Bson::Boolean(true)));
    assert_eq!(a.get_datetime("ts").unwrap().timestamp_millis(), 1_700_000_000_123);
    assert_eq!(a.get_datetime("day").unwrap().timestamp_millis(), 19_000 * 86_400_000);
    assert_eq!(a.get("list"), Some(&Bson::Array(vec![Bson::Int64(1), Bson::Int64(2)])));
    assert_eq!(a.get_document("record").unwrap(), &doc! {"s": "x"});
    let b = &documents[1];
    assert_eq!((b.get("i32"), b.get("ts"), b.get("list")), (Some(&Bson::Null), Some(&Bson::Null), Some(&Bson::Null)));
    // Scalars read back into Arrow equal what was written.
    let scalars = Arc::new(schema.project(&[0, 1, 2, 3, 4, 5, 6, 7]).unwrap());
    let scalar_view = ViewInfo { name: "types".into(), schema: scalars.clone(), key: vec![0] };
    let back = read_views(&options, &[scalar_view]).await.remove("types").unwrap();
    assert_same_rows("types", &back, &batch.project(&[0, 1, 2, 3, 4, 5, 6, 7]).unwrap());
}
