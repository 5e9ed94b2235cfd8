//! View semantics beyond the `.slt` suite (tests/slt, run by `slt.rs`): the shipped views
//! against an independent computation, the changesets a view emits, and a restart
//! undoing what a lost run left in a sink.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Changeset, CheckpointMeta, MicroBatch, Offsets, Sink, ViewInfo};
use trendflow_engine::runtime::Pipeline;
use trendflow_engine::session::incremental_session_config;

use crate::support::*;

/// Shipped views on the real sample equal plain DataFusion queries written here,
/// formulated differently from the shipped SQL.
#[tokio::test]
async fn shipped_views_match_an_independent_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let products = shared_data("amazon_products_sample.csv");
    let categories = shared_data("amazon_categories.csv");
    let bindings = bindings(&products, &categories);
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &bindings.files()).await.unwrap();
    let data = decode_all(&catalog, &bindings, &tmp.path().join("dl")).await;
    assert_eq!(data.num_rows(), 4_960, "every sample record decodes");
    let streamed = run_streaming(&shipped_sql(), &bindings, SplitSource::new("products", data, 9, 500), tmp.path()).await.unwrap();

    let ctx = SessionContext::new();
    let schema = Schema::new(vec![
        Field::new("asin", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("imgUrl", DataType::Utf8, true),
        Field::new("productURL", DataType::Utf8, true),
        Field::new("stars", DataType::Float64, true),
        Field::new("reviews", DataType::Int64, true),
        Field::new("price", DataType::Float64, true),
        Field::new("listPrice", DataType::Float64, true),
        Field::new("category_id", DataType::Int32, true),
        Field::new("isBestSeller", DataType::Utf8, true),
        Field::new("boughtInLastMonth", DataType::Int64, true),
    ]);
    ctx.register_csv("p", products.to_str().unwrap(), CsvReadOptions::new().schema(&schema)).await.unwrap();
    ctx.register_csv("c", categories.to_str().unwrap(), CsvReadOptions::new()).await.unwrap();
    let query = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let df = ctx.sql(sql).await.unwrap();
            let schema = Arc::new(df.schema().as_arrow().clone());
            datafusion::arrow::compute::concat_batches(&schema, &df.collect().await.unwrap()).unwrap()
        }
    };
    let price_levels = query(
        "SELECT b.label, COUNT(*), AVG(p.price), MIN(p.price), MAX(p.price)
         FROM p JOIN (VALUES ('0-10', 0.0, 10.0), ('10-25', 10.0, 25.0), ('25-50', 25.0, 50.0), ('50-100', 50.0, 100.0),
                             ('100-250', 100.0, 250.0), ('250-500', 250.0, 500.0), ('500+', 500.0, 1e12)) AS b(label, lo, hi)
           ON p.price >= b.lo AND p.price < b.hi
         WHERE p.price <> 0 GROUP BY b.label",
    )
    .await;
    assert_same_rows("price_levels", &streamed["price_levels"], &price_levels);

    let distribution = query(
        "SELECT p.category_id, c.category_name, COUNT(*),
                COUNT(*) / (SELECT CAST(COUNT(*) AS DOUBLE) FROM p),
                SUM(CASE p.\"isBestSeller\" WHEN 'True' THEN 1 ELSE 0 END)
         FROM p LEFT JOIN c ON c.id = p.category_id GROUP BY p.category_id, c.category_name",
    )
    .await;
    assert_same_rows("category_distribution", &streamed["category_distribution"], &distribution);

    let by_category = query(
        "SELECT p.category_id, c.category_name, COUNT(*), AVG(p.price), MIN(p.price), MAX(p.price)
         FROM p LEFT JOIN c ON c.id = p.category_id WHERE p.price > 0 GROUP BY p.category_id, c.category_name",
    )
    .await;
    assert_same_rows("avg_price_by_category", &streamed["avg_price_by_category"], &by_category);

    let top = query(
        "SELECT category_id, category_name, bought, n FROM (
             SELECT p.category_id, c.category_name, SUM(p.\"boughtInLastMonth\") AS bought, COUNT(*) AS n,
                    ROW_NUMBER() OVER (ORDER BY SUM(p.\"boughtInLastMonth\") DESC, p.category_id) AS rank
             FROM p LEFT JOIN c ON c.id = p.category_id GROUP BY p.category_id, c.category_name)
         WHERE rank <= 10",
    )
    .await;
    assert_same_rows("top_categories_by_demand", &streamed["top_categories_by_demand"], &top);

    // The sample holds 20 products of each of the 248 categories.
    let distribution = &streamed["category_distribution"];
    assert_eq!(distribution.num_rows(), 248);
    let counts = distribution.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
    assert!(counts.iter().all(|c| c == Some(20)));
}

/// Records every changeset a pipeline emits.
#[derive(Default)]
struct RecordingSink {
    changes: BTreeMap<String, Vec<Changeset>>,
}

#[async_trait]
impl Sink for RecordingSink {
    async fn open(&mut self, _views: &[ViewInfo]) -> trendflow_engine::Result<()> {
        Ok(())
    }
    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> trendflow_engine::Result<()> {
        self.changes.entry(view.name.clone()).or_default().push(changes.clone());
        Ok(())
    }
    async fn flush(&mut self, _meta: &CheckpointMeta) -> trendflow_engine::Result<()> {
        Ok(())
    }
    async fn reset(&mut self, _view: &ViewInfo, _rows: &RecordBatch) -> trendflow_engine::Result<()> {
        Ok(())
    }
}

const STREAM: &str = "CREATE EXTERNAL TABLE events (id VARCHAR NOT NULL, cat VARCHAR, price DOUBLE, PRIMARY KEY (id))
    STORED AS KAFKA LOCATION 'events';\n";

fn events(pipeline: &Pipeline, rows: &[(&str, &str, f64)]) -> Vec<(String, MicroBatch)> {
    let stream = &pipeline.catalog().streams()[0];
    let payload = RecordBatch::try_new(
        stream.payload_schema.clone(),
        vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(datafusion::arrow::array::Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    let origin = trendflow_connectors::decode::RecordOrigin {
        partitions: vec![0; rows.len()],
        offsets: (0..rows.len() as i64).collect(),
        timestamps: vec![0; rows.len()],
        keys: None,
    };
    let batch = trendflow_connectors::decode::with_metadata(stream, &payload, origin).unwrap();
    vec![("events".into(), MicroBatch { batch, deleted: None, offsets: Default::default(), rejected: 0 })]
}

async fn pipeline(tmp: &std::path::Path, views: &str) -> Pipeline {
    let dir = pipeline_dir(tmp, &format!("{STREAM}{views}"));
    let catalog = Catalog::load(&[dir], incremental_session_config(), &Default::default()).await.unwrap();
    Pipeline::compile(catalog, tmp.join("state")).await.unwrap()
}

fn keys(batch: &RecordBatch) -> Vec<String> {
    let column = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let mut keys: Vec<String> = column.iter().map(|v| v.unwrap_or("NULL").to_string()).collect();
    keys.sort();
    keys
}

/// The changesets themselves (the .slt suite checks results): deletes for groups that
/// leave, one row per key, and no row for a group that did not change.
#[tokio::test]
async fn groups_leaving_having_or_limit_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pipeline = pipeline(
        tmp.path(),
        "CREATE VIEW pricey AS SELECT cat, AVG(price) AS avg_price FROM events GROUP BY cat HAVING AVG(price) > 10;
         CREATE VIEW top1 AS SELECT cat, COUNT(*) AS n FROM events GROUP BY cat ORDER BY n DESC, cat LIMIT 1;",
    )
    .await;
    let mut sink = RecordingSink::default();
    pipeline.step(events(&pipeline, &[("1", "a", 20.0), ("2", "b", 5.0)]), &mut sink).await.unwrap();
    pipeline.step(events(&pipeline, &[("3", "a", 1.0), ("4", "a", 1.0), ("5", "b", 50.0), ("6", "b", 50.0)]), &mut sink).await.unwrap();
    let pricey = &sink.changes["pricey"];
    assert_eq!(keys(&pricey[0].upserts), vec!["a"]);
    assert_eq!(keys(&pricey[1].upserts), vec!["b"], "b entered (avg 35)");
    assert_eq!(keys(&pricey[1].deletes), vec!["a"], "a left (avg 7.33)");
    let top = &sink.changes["top1"];
    assert_eq!(keys(&top[0].upserts), vec!["a"], "a and b tie at 1: a wins on name");
    assert_eq!(keys(&top[1].upserts), vec!["a"], "a: 3 rows, b: 3 rows; a keeps first place with a new count");
    pipeline.step(events(&pipeline, &[("7", "b", 1.0)]), &mut sink).await.unwrap();
    let top = &sink.changes["top1"];
    assert_eq!((keys(&top[2].upserts), keys(&top[2].deletes)), (vec!["b".to_string()], vec!["a".to_string()]));
}

#[tokio::test]
async fn stateless_views_upsert_by_primary_key_and_distinct_aggregates_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pipeline = pipeline(
        tmp.path(),
        "CREATE VIEW expensive AS SELECT id, cat, price FROM events WHERE price > 100;
         CREATE VIEW distinct_prices AS SELECT cat, COUNT(DISTINCT price) AS prices FROM events GROUP BY cat;",
    )
    .await;
    let infos = pipeline.view_infos();
    assert_eq!(infos[0].key, vec![0], "stateless view keyed by the stream's PRIMARY KEY");
    let mut sink = RecordingSink::default();
    pipeline.step(events(&pipeline, &[("1", "a", 200.0), ("1", "a", 300.0), ("2", "a", 5.0)]), &mut sink).await.unwrap();
    pipeline.step(events(&pipeline, &[("3", "a", 200.0), ("4", "b", 7.0)]), &mut sink).await.unwrap();
    let expensive = &sink.changes["expensive"];
    assert_eq!(expensive[0].upserts.num_rows(), 1, "two updates of one key in a batch: the last wins");
    let price = expensive[0].upserts.column(2).as_any().downcast_ref::<datafusion::arrow::array::Float64Array>().unwrap();
    assert_eq!(price.value(0), 300.0);
    let mut got = BTreeMap::new();
    for changes in &sink.changes["distinct_prices"] {
        let batch = &changes.upserts;
        let cats = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let counts = batch.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        got.extend((0..batch.num_rows()).map(|i| (cats.value(i).to_string(), counts.value(i))));
    }
    assert_eq!(sink.changes["distinct_prices"][1].upserts.num_rows(), 1, "a's distinct count did not change in batch 2");
    // a: {200, 300, 5} (200 again in batch 2 is not new); b: {7}
    assert_eq!(got, BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 1)]));
}

/// The view of the lost-run tests: the category with the highest total.
const TOP: &str = "CREATE VIEW top1 AS SELECT cat, SUM(price) AS total FROM events GROUP BY cat ORDER BY total DESC LIMIT 1;";

/// A run that checkpoints after `x` (10), then puts `y` (20) first in `sink` and dies
/// before its next checkpoint. Returns all three records, for the replay.
pub(crate) async fn lose_a_run(tmp: &std::path::Path, sink: &mut dyn Sink) -> RecordBatch {
    let mut lost = pipeline(tmp, TOP).await;
    let records: Vec<MicroBatch> = [("1", "x", 10.0), ("2", "y", 20.0), ("3", "x", 15.0)]
        .iter()
        .enumerate()
        .map(|(i, row)| MicroBatch { offsets: Offsets::from([(0, i as i64 + 1)]), ..events(&lost, &[*row]).remove(0).1 })
        .collect();
    sink.open(&lost.view_infos()).await.unwrap();
    lost.step(vec![("events".into(), records[0].clone())], sink).await.unwrap();
    lost.checkpoint(sink).await.unwrap();
    lost.step(vec![("events".into(), records[1].clone())], sink).await.unwrap();
    // The sink made the change durable; the checkpoint never came.
    sink.flush(&CheckpointMeta::default()).await.unwrap();
    let batches: Vec<RecordBatch> = records.into_iter().map(|m| m.batch).collect();
    datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Restarts the job of [`lose_a_run`]: it replays `y` and `x`'s second record in
/// one micro-batch, so `x` leads throughout and no change ever deletes `y`.
pub(crate) async fn restart(tmp: &std::path::Path, sink: &mut dyn Sink, data: RecordBatch) {
    let mut restarted = pipeline(tmp, TOP).await;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let replay = SplitSource::new("events", data, 1, 1_000);
    restarted.run(vec![Box::new(replay)], sink, &drain_options(), shutdown, &mut |_| {}).await.unwrap();
}

/// A lost run (changes applied to the sink, never checkpointed) can leave rows the
/// replay, cut into other micro-batches, never touches again. The restart resets the
/// sink to the checkpointed result first.
#[tokio::test]
async fn a_restart_undoes_what_a_lost_run_left_in_the_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::new(tmp.path().join("store"));
    let data = lose_a_run(tmp.path(), &mut store).await;
    assert_eq!(keys(&store.rows("top1").unwrap().unwrap()), vec!["y"]);
    restart(tmp.path(), &mut store, data).await;
    assert_eq!(keys(&store.rows("top1").unwrap().unwrap()), vec!["x"], "the lost run's `y` was removed");
}
