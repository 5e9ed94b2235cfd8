//! Changelog streams against batch: random histories of products and categories
//! (inserts, price and category changes, deletes, re-inserts of deleted keys, renamed
//! and late categories, deleted categories) streamed in random micro-batch splits,
//! across crashes and restarts from checkpoints, give every view the rows `batch`
//! computes over the final tables.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use trendflow_connectors::decode::{changelog_key, decode_parsed, parse_records, with_metadata, RecordFormat, RecordOrigin};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::batch::{compute_views, BatchStream};
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Source, StreamDecl};
use trendflow_engine::runtime::Pipeline;
use trendflow_engine::session::{batch_session_config, incremental_session_config};

use crate::support::*;

/// Views besides the shipped ones: aggregates that cannot merge retractions (MIN, MAX,
/// COUNT(DISTINCT), median), HAVING, a top-n, and a stateless view.
const VIEWS: &str = "
CREATE VIEW extremes AS SELECT category_id, MIN(price) AS lo, MAX(price) AS hi, COUNT(DISTINCT title) AS titles, median(stars) AS mid
FROM products GROUP BY category_id;
CREATE VIEW crowded AS SELECT category_id, COUNT(*) AS n FROM products GROUP BY category_id HAVING COUNT(*) >= 3;
CREATE VIEW cheapest AS SELECT p.category_id, c.category_name, MIN(p.price) AS lo FROM products p LEFT JOIN categories c ON p.category_id = c.id
GROUP BY p.category_id, c.category_name ORDER BY lo, p.category_id LIMIT 3;
CREATE VIEW named_products AS SELECT p.asin, p.price, c.category_name FROM products p JOIN categories c ON p.category_id = c.id WHERE p.price > 20;
CREATE VIEW per_category AS SELECT c.id, c.category_name, COUNT(p.asin) AS n FROM categories c LEFT JOIN products p ON p.category_id = c.id
GROUP BY c.id, c.category_name;
";

/// A reproducible random history of both streams, as JSON records (deletes marked
/// `"_deleted": true`).
struct History {
    products: Vec<String>,
    categories: Vec<String>,
}

impl History {
    fn new(seed: u64, changes: usize) -> Self {
        let mut rng = Xorshift::new(seed);
        let mut next = move |n: u64| rng.below(n);
        let mut products = Vec::new();
        let mut categories = Vec::new();
        for _ in 0..changes {
            let asin = format!("B{:02}", next(30));
            match next(20) {
                0..=2 => products.push(format!(r#"{{"asin": "{asin}", "_deleted": true}}"#)),
                3 => {
                    // Category 6 and up arrive late, if at all; some are deleted again.
                    let id = 1 + next(8);
                    if next(4) == 0 {
                        categories.push(format!(r#"{{"id": {id}, "_deleted": true}}"#));
                    } else {
                        categories.push(format!(r#"{{"id": {id}, "category_name": "name {}"}}"#, next(5)));
                    }
                }
                _ => {
                    let price = [0.0, 5.5, 12.0, 19.99, 25.0, 60.0, 250.0, 999.0][next(8) as usize];
                    let stars = ["null", "3.5", "4.0", "4.5"][next(4) as usize];
                    products.push(format!(
                        r#"{{"asin": "{asin}", "title": "t{}", "stars": {stars}, "reviews": {}, "price": {price}, "listPrice": 0, "category_id": {}, "isBestSeller": {}, "boughtInLastMonth": {}}}"#,
                        next(6),
                        next(100),
                        1 + next(7),
                        next(2) == 0,
                        50 * next(5)
                    ));
                }
            }
        }
        // The first categories exist from the start.
        let mut seeded: Vec<String> = (1..=5).map(|id| format!(r#"{{"id": {id}, "category_name": "category {id}"}}"#)).collect();
        seeded.append(&mut categories);
        Self { products, categories: seeded }
    }

    fn records(&self, stream: &str) -> &[String] {
        if stream == "products" {
            &self.products
        } else {
            &self.categories
        }
    }
}

/// `records` decoded as the changelog of `stream` (as a file or topic would be), with
/// one-second arrival times: the rows, and which of them delete their key.
fn decoded(stream: &StreamDecl, records: &[String]) -> (RecordBatch, BooleanArray) {
    let slices: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
    let parsed = parse_records(RecordFormat::Json, &stream.payload_schema, &slices, 1 << 20);
    let decoded = decode_parsed(parsed, &stream.payload_schema, changelog_key(stream)).unwrap();
    assert!(decoded.rejected.is_empty(), "{:?}", decoded.rejected);
    let offsets: Vec<i64> = (0..records.len() as i64).collect();
    let origin = RecordOrigin {
        partitions: vec![0; offsets.len()],
        timestamps: offsets.iter().map(|o| 1_700_000_000_000 + o * 7_000).collect(),
        offsets,
        keys: None,
    };
    (with_metadata(stream, &decoded.batch, origin).unwrap(), decoded.deleted.iter().map(|d| Some(*d)).collect())
}

async fn catalog(sql: &Path, config: datafusion::prelude::SessionConfig) -> Catalog {
    Catalog::load(&[sql.to_path_buf()], config, &Default::default()).await.unwrap()
}

/// Every view over the final tables, as `trendflow batch` computes them.
async fn batch(sql: &Path, history: &History) -> BTreeMap<String, RecordBatch> {
    let catalog = catalog(sql, batch_session_config()).await;
    let mut tables = Vec::new();
    for stream in catalog.streams() {
        let (rows, deleted) = decoded(stream, history.records(&stream.name));
        tables.push(BatchStream::new(stream, [(rows, Some(deleted))]).unwrap());
    }
    last_row_per_key(compute_views(&catalog, tables).await.unwrap())
}

/// Streams the history in splits of at most `max_split` records per stream and
/// micro-batch, crashing after each of `crashes` polls and restarting from the last
/// checkpoint; the views' rows in the sink at the end.
async fn streamed(sql: &Path, history: &History, seed: u64, max_split: usize, crashes: &[usize], state: &Path) -> BTreeMap<String, RecordBatch> {
    let mut store = EmbeddedStore::new(state.join("store"));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let runs = crashes.iter().map(|&c| Some(c)).chain([None]);
    let mut infos = Vec::new();
    for crash in runs {
        let catalog = catalog(sql, incremental_session_config()).await;
        let sources: Vec<Box<dyn Source>> = catalog
            .streams()
            .iter()
            .enumerate()
            .map(|(i, stream)| {
                let (rows, deleted) = decoded(stream, history.records(&stream.name));
                let source = SplitSource::new(&stream.name, rows, seed * 7 + i as u64, max_split).with_deletes(deleted);
                Box::new(match crash {
                    Some(polls) => source.failing_after(polls),
                    None => source,
                }) as Box<dyn Source>
            })
            .collect();
        let mut pipeline = Pipeline::compile(catalog, state.to_path_buf()).await.unwrap();
        infos = pipeline.view_infos();
        let outcome = pipeline.run(sources, &mut store, &drain_options(), shutdown.clone(), &mut |_| {}).await;
        match (crash, outcome) {
            (Some(_), Err(e)) => assert!(e.to_string().contains("injected crash"), "{e}"),
            // A crash due after the sources ran out does not come.
            (_, Ok(_)) => {}
            (None, Err(e)) => panic!("the last run failed: {e}"),
        }
    }
    infos
        .into_iter()
        .map(|v| (v.name.clone(), store.rows(&v.name).transpose().unwrap().unwrap_or_else(|| RecordBatch::new_empty(v.schema.clone()))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_changelogs_stream_like_batch_over_the_final_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let sql = tmp.path().join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    std::fs::copy(shipped_sql().join("01_sources.sql"), sql.join("01_sources.sql")).unwrap();
    std::fs::copy(shipped_sql().join("02_trends.sql"), sql.join("02_trends.sql")).unwrap();
    std::fs::write(sql.join("03_changelog_views.sql"), VIEWS).unwrap();
    for seed in 1..=6u64 {
        let history = History::new(seed, 400);
        let expected = batch(&sql, &history).await;
        assert!(expected["price_levels"].num_rows() > 0 && expected["per_category"].num_rows() > 0, "seed {seed}: the history leaves rows");
        let crashes: &[usize] = match seed % 3 {
            0 => &[],
            1 => &[4],
            _ => &[3, 11],
        };
        for max_split in [1, 7, 60] {
            let state = tmp.path().join(format!("state-{seed}-{max_split}"));
            let actual = streamed(&sql, &history, seed, max_split, crashes, &state).await;
            for (view, rows) in &expected {
                assert_same_rows(&format!("{view} (seed {seed}, splits of {max_split}, crashes {crashes:?})"), &actual[view], rows);
            }
        }
    }
}
