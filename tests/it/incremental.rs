//! A micro-batch costs what it changes: views whose plan above the aggregates is
//! row-local evaluate only the groups a micro-batch touched, a top-n re-ranks only
//! them, checkpoints hold only the groups changed since the previous one, and all of
//! it still equals batch under random splits and restarts from a full checkpoint
//! plus deltas.

use std::path::{Path, PathBuf};

use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Poll, Source};
use trendflow_engine::runtime::Pipeline;
use trendflow_engine::session::incremental_session_config;
use trendflow_engine::view::Evaluation;

use crate::support::*;

/// Views of every shape the evaluation split distinguishes, over the shipped sources.
const VIEWS: &str = "
CREATE VIEW latest_prices AS
SELECT asin, price, category_id FROM products WHERE price > 0;

CREATE VIEW totals AS
SELECT COUNT(*) AS n, AVG(price) AS avg_price, MAX(stars) AS best FROM products;

CREATE VIEW categories_seen AS
SELECT DISTINCT category_id FROM products;

CREATE VIEW per_asin_and_category AS
SELECT asin, category_id, COUNT(*) AS n FROM products GROUP BY asin, category_id;

CREATE VIEW per_asin_with_title AS
SELECT asin, title, COUNT(*) AS n FROM products GROUP BY asin, title;

CREATE VIEW per_asin AS
SELECT asin, COUNT(*) AS n, AVG(price) AS avg_price, MAX(price) AS max_price FROM products GROUP BY asin;

CREATE VIEW pricey_categories AS
SELECT category_id, COUNT(*) AS n, AVG(price) AS avg_price FROM products
GROUP BY category_id HAVING AVG(price) > 40;

CREATE VIEW bands AS
SELECT category_id,
       CASE WHEN AVG(price) > 50 THEN 'high' ELSE 'low' END AS band,
       CAST(SUM(reviews) AS DOUBLE) / COUNT(*) AS reviews_per_product
FROM products GROUP BY category_id;

CREATE VIEW counts_in_named_categories AS
SELECT category_id, n FROM (SELECT category_id, COUNT(*) AS n FROM products GROUP BY category_id) a
WHERE category_id IN (SELECT id FROM categories WHERE category_name LIKE '%s%');

CREATE VIEW top_five AS
SELECT category_id, SUM(reviews) AS reviews FROM products GROUP BY category_id
ORDER BY reviews DESC, category_id LIMIT 5;

CREATE VIEW shares AS
SELECT category_id, CAST(COUNT(*) AS DOUBLE) / SUM(COUNT(*)) OVER () AS share FROM products GROUP BY category_id;

CREATE VIEW stars_per_level AS
SELECT level, COUNT(*) AS categories FROM
  (SELECT category_id, CASE WHEN AVG(stars) >= 4 THEN 'good' ELSE 'other' END AS level FROM products GROUP BY category_id)
GROUP BY level;
";

/// How each view is expected to be evaluated after a micro-batch.
enum Expect {
    /// No aggregate: each micro-batch's rows upserted by the stream's PRIMARY KEY.
    Stateless,
    Touched,
    TopN(usize),
    /// Over every group, for a reason containing this.
    Whole(&'static str),
}

const EXPECTED: &[(&str, Expect)] = &[
    ("latest_prices", Expect::Stateless),
    ("totals", Expect::Touched),
    ("categories_seen", Expect::Touched),
    ("per_asin_and_category", Expect::Touched),
    ("per_asin_with_title", Expect::Touched),
    ("per_asin", Expect::Touched),
    ("pricey_categories", Expect::Touched),
    ("bands", Expect::Touched),
    ("counts_in_named_categories", Expect::Touched),
    ("top_five", Expect::TopN(5)),
    ("shares", Expect::Whole("window function")),
    ("stars_per_level", Expect::Whole("aggregate over the groups")),
];

struct Fixture {
    tmp: tempfile::TempDir,
    sql: PathBuf,
    bindings: trendflow_connectors::binding::Bindings,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let sql = tmp.path().join("sql");
        std::fs::create_dir_all(&sql).unwrap();
        std::fs::copy(shipped_sql().join("01_sources.sql"), sql.join("01_sources.sql")).unwrap();
        std::fs::write(sql.join("02_views.sql"), VIEWS).unwrap();
        let timed = with_timestamps(&with_repeated_asins(tmp.path()), tmp.path(), 20);
        let bindings = bindings(&timed, &shared_data("amazon_categories.csv"));
        Self { tmp, sql, bindings }
    }

    async fn catalog(&self) -> Catalog {
        Catalog::load(std::slice::from_ref(&self.sql), incremental_session_config(), &self.bindings.files()).await.unwrap()
    }

    async fn pipeline(&self, state: &Path) -> Pipeline {
        Pipeline::compile(self.catalog().await, state.to_path_buf()).await.unwrap()
    }

    async fn data(&self) -> datafusion::arrow::array::RecordBatch {
        decode_all(&self.catalog().await, &self.bindings, &self.tmp.path().join("dl")).await
    }
}

/// The real sample, then its first 300 products again, in the next category and with
/// another title: an append stream repeats ASINs although `products` declares
/// `PRIMARY KEY (asin)`, so no view may be keyed by `asin` alone unless it groups by it.
fn with_repeated_asins(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shared_data("amazon_products_sample.csv")).unwrap();
    let mut csv = text.clone();
    for line in text.lines().skip(1).take(300) {
        let (asin, rest) = line.split_once(',').unwrap();
        let retitled = match rest.strip_prefix('"') {
            Some(quoted) => format!("\"again {quoted}"),
            None => format!("again {rest}"),
        };
        let mut fields: Vec<&str> = retitled.rsplitn(4, ',').collect();
        let category = (fields[2].parse::<i32>().unwrap() % 248 + 1).to_string();
        fields[2] = &category;
        fields.reverse();
        csv.push_str(&format!("{asin},{}\n", fields.join(",")));
    }
    let path = dir.join("products_repeated.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[tokio::test]
async fn row_local_views_evaluate_touched_groups_and_the_rest_say_why_not() {
    let fx = Fixture::new();
    let pipeline = fx.pipeline(&fx.tmp.path().join("state")).await;
    for (name, expected) in EXPECTED {
        let view = pipeline.views().iter().find(|v| v.info().name == *name).unwrap();
        let evaluation = view.evaluation();
        let expected_so = match (&evaluation, expected) {
            (None, Expect::Stateless) => true,
            (Some(Evaluation::TouchedGroups), Expect::Touched) => true,
            (Some(Evaluation::TopN { n }), Expect::TopN(m)) => n == m,
            (Some(Evaluation::WholeResult { because }), Expect::Whole(reason)) => because.contains(reason),
            _ => false,
        };
        assert!(expected_so, "view {name}: evaluated {evaluation:?}");
    }
    let shipped = Pipeline::compile(
        Catalog::load(&[shipped_sql()], incremental_session_config(), &fx.bindings.files()).await.unwrap(),
        fx.tmp.path().join("shipped"),
    )
    .await
    .unwrap();
    let evaluations: Vec<(&str, Evaluation)> = shipped.views().iter().map(|v| (v.info().name.as_str(), v.evaluation().unwrap())).collect();
    let whole = Evaluation::WholeResult { because: "a window function over the groups".into() };
    assert_eq!(
        evaluations,
        [
            ("price_levels", Evaluation::TouchedGroups),
            ("category_distribution", whole),
            ("avg_price_by_category", Evaluation::TouchedGroups),
            ("top_categories_by_demand", Evaluation::TopN { n: 10 }),
            ("category_trend", Evaluation::TouchedGroups),
            ("trending_now", Evaluation::ClosedWindows),
        ]
    );
}

#[tokio::test]
async fn every_shape_streams_like_batch_across_restarts_from_deltas() {
    let fx = Fixture::new();
    let data = fx.data().await;
    let expected = run_batch(&fx.sql, &fx.bindings, &fx.tmp.path().join("dl-batch")).await;
    assert!(expected.values().all(|b| b.num_rows() > 0), "every view has rows in batch");
    for seed in [3, 4] {
        let state = fx.tmp.path().join(format!("state-{seed}"));
        // Small splits, a checkpoint after each: well over MAX_DELTAS checkpoints, so the
        // crashes below hit chains of deltas and runs that compacted them.
        for crash_after in [9, 23, 61] {
            let source = SplitSource::new("products", data.clone(), seed, 60).failing_after(crash_after);
            let error = run_streaming(&fx.sql, &fx.bindings, source, &state).await.unwrap_err();
            assert!(error.to_string().contains("injected crash"), "{error}");
            let current = std::fs::read_to_string(state.join("checkpoints/CURRENT")).unwrap();
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(state.join("checkpoints").join(current.trim()).join("meta.json")).unwrap()).unwrap();
            assert!(!meta["base"].as_array().unwrap().is_empty(), "crash {crash_after}: the current checkpoint is a delta");
        }
        let resumed = run_streaming(&fx.sql, &fx.bindings, SplitSource::new("products", data.clone(), seed, 60), &state).await.unwrap();
        assert_same_views(&resumed, &expected);
    }
}

#[tokio::test]
async fn a_delta_checkpoint_writes_the_groups_a_micro_batch_touched() {
    let fx = Fixture::new();
    let data = fx.data().await;
    let state = fx.tmp.path().join("state");
    let mut pipeline = fx.pipeline(&state).await;
    let mut store = EmbeddedStore::new(state.join("store"));
    trendflow_engine::contract::Sink::open(&mut store, &pipeline.view_infos()).await.unwrap();
    let mut source = SplitSource::new("products", data.slice(0, 4_000), 1, 4_000);
    let Poll::Batch(first) = source.poll(0, Default::default()).await.unwrap() else { panic!("rows") };
    pipeline.step(vec![("products".into(), first)], &mut store).await.unwrap();
    let (_, full) = pipeline.checkpoint(&mut store).await.unwrap();
    assert!(full.full, "the first checkpoint has nothing to build on");

    let small = data.slice(4_000, 50);
    let report = pipeline
        .step(
            vec![(
                "products".into(),
                trendflow_engine::contract::MicroBatch { batch: small, deleted: None, offsets: Default::default(), rejected: 0 },
            )],
            &mut store,
        )
        .await
        .unwrap();
    let (_, delta) = pipeline.checkpoint(&mut store).await.unwrap();
    assert!(!delta.full);
    // Each incremental aggregate holds at most the 50 records' groups.
    let aggregates = pipeline.views().iter().map(|v| v.state_schemas().len()).sum::<usize>();
    assert!(delta.rows <= 50 * aggregates, "{} delta rows for 50 records", delta.rows);
    assert!(delta.rows >= 50, "the 50 new products are in the per-ASIN groups: {}", delta.rows);
    assert!(delta.bytes * 5 < full.bytes, "delta {} bytes, full {} bytes", delta.bytes, full.bytes);
    // Touched-group views change by the touched groups only.
    assert!(report.changes["per_asin"].0 <= 50, "{:?}", report.changes["per_asin"]);
}

/// A LIMIT without ORDER BY picks rows among all groups, wherever DataFusion puts it
/// (it pushes limits into joins): never evaluated over the touched groups alone.
#[tokio::test]
async fn a_limit_over_groups_is_evaluated_over_all_of_them() {
    let fx = Fixture::new();
    std::fs::write(
        fx.sql.join("03_limit.sql"),
        "CREATE VIEW first_three AS
         SELECT category_id, n FROM (SELECT category_id, COUNT(*) AS n FROM products GROUP BY category_id) a
         WHERE category_id IN (SELECT id FROM categories) LIMIT 3;",
    )
    .unwrap();
    let pipeline = fx.pipeline(&fx.tmp.path().join("state")).await;
    let view = pipeline.views().iter().find(|v| v.info().name == "first_three").unwrap();
    match view.evaluation() {
        Some(Evaluation::WholeResult { because }) if because.contains("LIMIT") => {}
        other => panic!("a LIMIT over groups evaluated as {other:?}"),
    }
}
