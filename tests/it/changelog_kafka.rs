//! Changelog streams end to end, against Apache Kafka (see `broker.rs`) and a real
//! MongoDB-protocol server (see `mongo.rs`): upserts, `_deleted` records, tombstones and
//! category renames on the shipped topics; Debezium envelopes through the ingest API and
//! raw through Kafka; deletes through the ingest API; and bad changelog records, each a
//! dead letter with its reason. Every streamed view equals `trendflow batch` over the
//! same final data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use mongodb::bson::Bson;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use trendflow_connectors::kafka::{self, OutRecord, RecordProducer};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::ViewInfo;
use trendflow_engine::session::incremental_session_config;

use crate::kafka::{http, json_records, ok, read_topic, spawn_ingest, trendflow, wait_for_line, Broker, Killed};
use crate::mongo::{raw_documents, read_views, Backend, MongoServer};
use crate::support::*;

/// One record of a topic as the broker holds it.
#[derive(Debug)]
struct Record {
    key: Option<Vec<u8>>,
    /// None for a tombstone (no value at all).
    value: Option<Vec<u8>>,
}

impl Record {
    fn key_text(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }

    fn value_json(&self) -> Value {
        serde_json::from_slice(self.value.as_deref().expect("a record with a value")).unwrap()
    }
}

/// Every record of `topic`, partition by partition, each in offset order.
fn read_records(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "changelog-reader").create().unwrap();
    let partitions = kafka::partition_count(&consumer, brokers, topic).unwrap().expect("the topic exists");
    let mut out = Vec::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap();
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        consumer.assign(&list).unwrap();
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while read < high {
            assert!(Instant::now() < deadline, "read {read} of {high} records of {topic}/{partition}");
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message.unwrap();
            out.push(Record { key: message.key().map(<[u8]>::to_vec), value: message.payload().map(<[u8]>::to_vec) });
            read += 1;
        }
    }
    out
}

/// Sends `records` (key, value; an empty value is a tombstone) to `topic` as a producer
/// other than trendflow's would, in order.
async fn send_raw(brokers: &str, topic: &str, records: &[(Option<&[u8]>, &[u8])]) {
    let producer = RecordProducer::new(brokers).unwrap();
    let out: Vec<OutRecord<'_>> = records.iter().map(|(key, payload)| OutRecord { key: *key, payload, timestamp: None, partition: None }).collect();
    producer.send_all(topic, &out, None).await.unwrap();
}

/// The views a SQL directory declares.
async fn view_infos(sql: &Path) -> Vec<ViewInfo> {
    let catalog = Catalog::load(&[sql.to_path_buf()], incremental_session_config(), &HashMap::new()).await.unwrap();
    catalog.view_infos().await.unwrap()
}

/// Every view's rows in the store of a state directory (what `run` and `batch` write).
fn stored_views(state: &Path, views: &[ViewInfo]) -> BTreeMap<String, RecordBatch> {
    let dir = state.join("store");
    views
        .iter()
        .map(|v| {
            (v.name.clone(), EmbeddedStore::read_view(&dir, &v.name).unwrap().unwrap_or_else(|| panic!("no view {} in {}", v.name, dir.display())))
        })
        .collect()
}

/// The number in a run summary before `marker` ("processed N records in …, M rejected").
fn number_before(summary: &str, marker: &str) -> usize {
    let head = summary.split(marker).next().unwrap_or_default();
    head.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no number before `{marker}` in {summary}"))
}

/// `text` as one URL path segment: every byte but letters and digits percent-encoded.
fn url_encoded(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Lines as an NDJSON file.
fn write_ndjson(path: &Path, lines: &[String]) -> PathBuf {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    path.to_path_buf()
}

/// The shipped `products` stream's declaration alone.
fn shipped_products_declaration() -> String {
    let sources = std::fs::read_to_string(shipped_sql().join("01_sources.sql")).unwrap();
    sources[..sources.find("-- `categories`").expect("the shipped SQL declares categories after products")].to_string()
}

/// `categories.csv` (id, category_name; names with a comma quoted) as id → name.
fn read_categories(path: &Path) -> BTreeMap<i64, String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (id, name) = line.split_once(',').unwrap();
            (id.parse().unwrap(), name.trim_matches('"').to_string())
        })
        .collect()
}

/// The shipped topics change while the job runs: prices are updated, products move to
/// other categories (one of them late to arrive), products are deleted by `_deleted`
/// records and by real tombstones (empty values keyed by ASIN), deleted products come
/// back, a category is renamed and another deleted by a tombstone keyed by its id. After a
/// second `trendflow run` the MongoDB documents of every view equal `trendflow batch` over
/// the topics and over files of the final tables the test computes itself; the groups of
/// a category whose products were all deleted are gone from MongoDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_products_and_categories_reach_mongodb_as_batch_computes() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start_on(Backend::FerretDb, "changelog", &tmp.path().join("mongo"));
    let on = mongo.name();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", "1500", "--seed", "13", "--out"]).arg(&data));
    let produce = |file: &Path| {
        ok(trendflow()
            .args(["produce", "--partitions", "3", "--kafka-brokers", &broker.addr, "--file"])
            .arg(file)
            .arg("--state")
            .arg(tmp.path().join("producer")))
    };
    let categories_csv = data.join("categories.csv");
    let produced = produce(&categories_csv);
    assert!(produced.contains(&format!("produced {} records", csv_rows(&categories_csv))) && produced.contains("topic `categories`"), "{produced}");
    let produced = produce(&data.join("products.csv"));
    assert!(produced.contains("produced 1500 records") && produced.contains("topic `products`"), "{produced}");

    let state = tmp.path().join("state");
    let mongo_args = ["--mongodb-uri", &mongo.uri, "--mongodb-database", &mongo.database, "--mongodb-write-concern", "1"];
    let run = || {
        ok(trendflow()
            .args(["run", "--until-idle", "--flight-addr", "none", "--max-rows", "400", "--kafka-brokers", &broker.addr])
            .args(mongo_args)
            .arg("--state")
            .arg(&state))
    };
    let first = run();
    assert!(first.contains(&format!("processed {} records", 1500 + csv_rows(&categories_csv))), "{first}");

    // The final tables, as the test computes them from what it sends.
    let originals: Vec<Value> = json_records(&data, tmp.path()).await.iter().map(|r| serde_json::from_slice(r).unwrap()).collect();
    let mut products: BTreeMap<String, Value> = BTreeMap::new();
    for product in &originals {
        products.insert(product["asin"].as_str().unwrap().to_string(), product.clone());
    }
    let mut categories = read_categories(&categories_csv);
    let mut per_category: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (asin, product) in &products {
        per_category.entry(product["category_id"].as_i64().unwrap()).or_default().push(asin.clone());
    }
    // The smallest category of several products loses them all; the biggest is renamed,
    // the second biggest deleted.
    let (&emptied, _) = per_category.iter().filter(|(_, a)| a.len() >= 2).min_by_key(|(id, a)| (a.len(), **id)).unwrap();
    let mut by_size: Vec<(&i64, &Vec<String>)> = per_category.iter().collect();
    by_size.sort_by_key(|(id, a)| (std::cmp::Reverse(a.len()), **id));
    let (renamed, deleted_category) = (*by_size[0].0, *by_size[1].0);
    let late_category = 990_001;
    assert!(!categories.contains_key(&late_category));

    let (mut changes, mut tombstoned, mut reinserts) = (Vec::new(), Vec::new(), Vec::new());
    let asins: Vec<String> = products.keys().cloned().collect();
    for (i, asin) in asins.iter().enumerate() {
        let product = products[asin].clone();
        if product["category_id"].as_i64() == Some(emptied) {
            if i % 2 == 0 {
                changes.push(json!({"asin": asin, "_deleted": true}).to_string());
                products.remove(asin);
            } else {
                tombstoned.push(asin.clone());
            }
        } else if i % 11 == 0 {
            changes.push(json!({"asin": asin, "_deleted": true}).to_string());
            products.remove(asin);
            if i % 22 == 0 {
                // Back after its delete, at a new price.
                let mut back = product.clone();
                back["price"] = json!(((i % 50) as f64) + 0.99);
                reinserts.push(back.to_string());
                products.insert(asin.clone(), back);
            }
        } else if i % 17 == 0 {
            tombstoned.push(asin.clone());
        } else if i % 7 == 0 || i % 13 == 0 {
            let mut updated = product.clone();
            if i % 7 == 0 {
                let price = product["price"].as_f64().unwrap_or(0.0);
                updated["price"] = json!(((price * 1.1 + 1.0) * 100.0).round() / 100.0);
            }
            if i % 13 == 0 {
                updated["category_id"] = json!(if i % 2 == 0 { late_category } else { renamed });
            }
            changes.push(updated.to_string());
            products.insert(asin.clone(), updated);
        }
    }
    for asin in &tombstoned {
        products.remove(asin);
    }
    // A tombstoned product comes back too.
    let back = originals.iter().rev().find(|p| tombstoned.iter().any(|a| p["asin"] == a.as_str()) && p["category_id"].as_i64() != Some(emptied));
    let back = back.unwrap().clone();
    products.insert(back["asin"].as_str().unwrap().to_string(), back.clone());
    reinserts.push(back.to_string());
    assert!(!products.values().any(|p| p["category_id"].as_i64() == Some(emptied)), "every product of {emptied} is deleted");

    let changes_file = write_ndjson(&tmp.path().join("changes.ndjson"), &changes);
    let produced = produce(&changes_file);
    assert!(produced.contains(&format!("produced {} records", changes.len())) && produced.contains("topic `products`"), "{produced}");
    // Real tombstones: the ASIN as key, no value; one for a key deleted already, and one
    // for a product that never existed.
    let mut tombstones: Vec<(Option<&[u8]>, &[u8])> = tombstoned.iter().map(|a| (Some(a.as_bytes()), b"".as_slice())).collect();
    tombstones.push((Some(tombstoned[1].as_bytes()), b""));
    tombstones.push((Some(b"BNEVERSEEN"), b""));
    send_raw(&broker.addr, "products", &tombstones).await;
    let reinserts_file = write_ndjson(&tmp.path().join("reinserts.ndjson"), &reinserts);
    produce(&reinserts_file);
    // The categories: a rename, a late category, and a tombstone keyed by an id.
    let renames = vec![
        json!({"id": renamed, "category_name": "Renamed, by the test"}).to_string(),
        json!({"id": late_category, "category_name": "Late category"}).to_string(),
    ];
    let produced = produce(&write_ndjson(&tmp.path().join("category_changes.ndjson"), &renames));
    assert!(produced.contains("produced 2 records") && produced.contains("topic `categories`"), "{produced}");
    let deleted_key = deleted_category.to_string();
    send_raw(&broker.addr, "categories", &[(Some(deleted_key.as_bytes()), b"")]).await;
    categories.insert(renamed, "Renamed, by the test".into());
    categories.insert(late_category, "Late category".into());
    categories.remove(&deleted_category);

    let views = view_infos(&shipped_sql()).await;
    let documents_of = |view: &'static str| {
        let options = mongo.options();
        async move { raw_documents(&options, view).await }
    };
    let in_category = |documents: &[mongodb::bson::Document], id: i64| {
        documents.iter().filter(|d| d.get("category_id").and_then(Bson::as_i32) == Some(id as i32)).count()
    };
    assert_eq!(in_category(&documents_of("category_distribution").await, emptied), 1, "{on}: category {emptied} before its deletes");

    let second = run();
    let records = changes.len() + tombstones.len() + reinserts.len() + renames.len() + 1;
    assert!(second.contains(&format!("processed {records} records")) && second.contains("resumed from checkpoint"), "{second}");
    assert!(second.contains(", 0 rejected"), "{second}");

    // Batch over the topics, and over files of the final tables.
    let from_topics = tmp.path().join("from_topics");
    ok(trendflow().args(["batch", "--kafka-brokers", &broker.addr, "--state"]).arg(&from_topics));
    let final_products = write_ndjson(&tmp.path().join("final_products.ndjson"), &products.values().map(Value::to_string).collect::<Vec<_>>());
    let final_categories: Vec<String> = categories.iter().map(|(id, name)| json!({"id": id, "category_name": name}).to_string()).collect();
    let final_categories = write_ndjson(&tmp.path().join("final_categories.ndjson"), &final_categories);
    let from_files = tmp.path().join("from_files");
    ok(trendflow()
        .args(["batch", "--source", &format!("products=file:{}", final_products.display())])
        .args(["--source", &format!("categories=file:{}", final_categories.display()), "--state"])
        .arg(&from_files));

    let in_mongo = read_views(&mongo.options(), &views).await;
    assert_same_views(&in_mongo, &stored_views(&from_topics, &views));
    // Arrival-time windows are the topics' alone: files have other arrival times.
    let timeless: Vec<ViewInfo> = views.iter().filter(|v| v.name != "category_trend").cloned().collect();
    let mongo_timeless: BTreeMap<String, RecordBatch> = in_mongo.into_iter().filter(|(name, _)| name != "category_trend").collect();
    assert_same_views(&mongo_timeless, &stored_views(&from_files, &timeless));

    for view in ["category_distribution", "avg_price_by_category"] {
        let documents = documents_of(view).await;
        assert_eq!(in_category(&documents, emptied), 0, "{on}: {view}: the groups of category {emptied} are gone");
        let name_of = |id: i64| {
            documents.iter().find(|d| d.get("category_id").and_then(Bson::as_i32) == Some(id as i32)).map(|d| d.get("category_name").cloned())
        };
        assert_eq!(name_of(renamed), Some(Some(Bson::String("Renamed, by the test".into()))), "{on}: {view}");
        assert_eq!(name_of(late_category), Some(Some(Bson::String("Late category".into()))), "{on}: {view}");
        assert!(matches!(name_of(deleted_category), Some(None | Some(Bson::Null))), "{on}: {view}: category {deleted_category} was deleted");
    }
    let counted: i64 = documents_of("category_distribution").await.iter().map(|d| d.get("products").and_then(Bson::as_i64).unwrap()).sum();
    assert_eq!(counted, products.len() as i64, "{on}: every live product once");
}

/// A stream of Debezium change events keyed by two columns, and views over it.
const STOCK_SQL: &str = "
CREATE EXTERNAL TABLE stock (
    sku   VARCHAR NOT NULL,
    site  INT NOT NULL,
    qty   BIGINT,
    price DOUBLE,
    PRIMARY KEY (sku, site)
)
STORED AS KAFKA
LOCATION 'stock'
OPTIONS ('format' 'json', 'changelog' 'debezium');

CREATE VIEW stock_by_site AS
SELECT site, COUNT(*) AS skus, SUM(qty) AS units, MIN(price) AS cheapest, MAX(price) AS dearest
FROM stock GROUP BY site;

CREATE VIEW well_stocked AS SELECT sku, site, qty FROM stock WHERE qty >= 20;
";

/// A Debezium change event as its connector writes it: with source metadata, and every
/// other one wrapped in the `payload` of the JSON converter with schemas.
fn debezium(n: usize, op: &str, before: Value, after: Value) -> String {
    let event = json!({"op": op, "before": before, "after": after, "source": {"connector": "postgresql", "table": "stock", "lsn": n}, "ts_ms": 1_700_000_000_000u64 + n as u64});
    if n.is_multiple_of(2) {
        event.to_string()
    } else {
        json!({"schema": {"type": "struct", "name": "stock.Envelope", "optional": false}, "payload": event}).to_string()
    }
}

/// The Kafka key Debezium writes for a row of `stock`.
fn stock_key(sku: &str, site: i64) -> String {
    json!({"sku": sku, "site": site}).to_string()
}

/// Debezium events (snapshot reads, creates, updates with both images, deletes, a key
/// change as a delete and a create, a re-insert) reach the views whether they come
/// through the ingest API (which re-encodes them) or straight through Kafka with the
/// tombstones Debezium writes after deletes; a DELETE through the API is an `op: d`
/// event. The streamed views equal `trendflow batch` over a file of the same events, and
/// over the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_events_through_the_api_and_kafka_equal_batch_over_the_events() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let sql = pipeline_dir(tmp.path(), STOCK_SQL);
    let row = |i: usize, version: usize| json!({"sku": format!("S{i}"), "site": (i % 3 + 1) as i64, "qty": ((i * 7 + version * 11) % 40) as i64, "price": 2.5 + (i * 3 + version) as f64});
    let mut events = Vec::new();
    for i in 0..30 {
        events.push(debezium(events.len(), "r", Value::Null, row(i, 0)));
    }
    for i in 30..40 {
        events.push(debezium(events.len(), "c", Value::Null, row(i, 0)));
    }
    for i in (0..40).step_by(3) {
        events.push(debezium(events.len(), "u", row(i, 0), row(i, 1)));
    }
    let version = |i: usize| usize::from(i.is_multiple_of(3));
    let deleted: Vec<usize> = (1..40).step_by(7).collect();
    for &i in &deleted {
        events.push(debezium(events.len(), "d", row(i, version(i)), Value::Null));
    }
    // S8 comes back; S5 moves to another site (a key change: a delete, then a create).
    events.push(debezium(events.len(), "c", Value::Null, row(8, 2)));
    let mut moved = row(5, 2);
    moved["site"] = json!(9);
    events.push(debezium(events.len(), "d", row(5, version(5)), Value::Null));
    events.push(debezium(events.len(), "c", Value::Null, moved));
    let half = events.len() / 2;

    // The first half through the ingest API, the rest straight to the topic.
    let (_ingest, api) = spawn_ingest(["--partitions", "1", "--rate-limit", "0", "--kafka-brokers", &broker.addr, "--sql", sql.to_str().unwrap()]);
    for chunk in events[..half].chunks(9) {
        let (status, body) = http("POST", &api, "/v1/topics/stock/records", chunk.join("\n").as_bytes());
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(chunk.len() as u64)), "{body}");
    }
    let mut raw: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
    for event in &events[half..] {
        let parsed: Value = serde_json::from_str(event).unwrap();
        let envelope = if parsed.get("payload").is_some() { &parsed["payload"] } else { &parsed };
        let image = if envelope["op"] == "d" { &envelope["before"] } else { &envelope["after"] };
        let key = stock_key(image["sku"].as_str().unwrap(), image["site"].as_i64().unwrap());
        raw.push((Some(key.clone().into_bytes()), event.clone().into_bytes()));
        if envelope["op"] == "d" {
            // Debezium's tombstone after a delete, for log compaction.
            raw.push((Some(key.into_bytes()), Vec::new()));
        }
    }
    let raw_refs: Vec<(Option<&[u8]>, &[u8])> = raw.iter().map(|(k, v)| (k.as_deref(), v.as_slice())).collect();
    send_raw(&broker.addr, "stock", &raw_refs).await;
    // A DELETE of a composite key: the URL-encoded JSON object of the key columns.
    let key = url_encoded(r#"{"site": 3, "sku": "S2"}"#);
    let (status, body) = http("DELETE", &api, &format!("/v1/topics/stock/records/{key}"), b"");
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"accepted": 1, "rejected": 0, "errors": []})), "{body}");
    events.push(json!({"op": "d", "before": {"sku": "S2", "site": 3}}).to_string());

    let in_topic = read_records(&broker.addr, "stock");
    assert_eq!(in_topic.len(), half + raw.len() + 1);
    let last = in_topic.last().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&last.key_text()).unwrap(), json!({"sku": "S2", "site": 3}), "keyed as the stream's key");
    assert_eq!(last.value_json(), json!({"op": "d", "before": {"sku": "S2", "site": 3}}));
    let reencoded = in_topic[0].value_json();
    assert_eq!((reencoded["op"].as_str(), reencoded.get("before")), (Some("c"), None), "the API writes the row each event leaves: {reencoded}");

    let state = tmp.path().join("state");
    let summary = run_until_idle(&broker.addr, &sql, &state);
    assert!(summary.contains(&format!("processed {} records", in_topic.len())) && summary.contains(", 0 rejected"), "{summary}");
    let events_file = write_ndjson(&tmp.path().join("events.ndjson"), &events);
    let from_file = tmp.path().join("from_file");
    ok(trendflow()
        .args(["batch", "--sql"])
        .arg(&sql)
        .args(["--source", &format!("stock=file:{}", events_file.display()), "--state"])
        .arg(&from_file));
    let from_topic = tmp.path().join("from_topic");
    ok(trendflow().args(["batch", "--kafka-brokers", &broker.addr, "--sql"]).arg(&sql).arg("--state").arg(&from_topic));
    let views = view_infos(&sql).await;
    let streamed = stored_views(&state, &views);
    assert_same_views(&streamed, &stored_views(&from_file, &views));
    assert_same_views(&streamed, &stored_views(&from_topic, &views));

    // What the events leave, by hand: 40 rows, less the deletes, S8 back, S5 moved, S2 deleted.
    let by_site = &streamed["stock_by_site"];
    let skus: i64 =
        by_site.column_by_name("skus").unwrap().as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap().iter().flatten().sum();
    assert_eq!(skus as usize, 40 - deleted.len() + 1 - 1, "{by_site:?}");
    let sites = rows(&by_site.project(&[0]).unwrap());
    assert!(sites.contains(&vec![Cell::Text("9".into())]), "S5's new site: {sites:?}");
}

/// The shipped streams, a stream keyed by two columns, and an append-only one.
fn ingest_sql(root: &Path) -> PathBuf {
    let sources = std::fs::read_to_string(shipped_sql().join("01_sources.sql")).unwrap();
    let extra = "
CREATE EXTERNAL TABLE stock (sku VARCHAR NOT NULL, site INT NOT NULL, qty BIGINT, PRIMARY KEY (sku, site))
STORED AS KAFKA LOCATION 'stock' OPTIONS ('format' 'json', 'changelog' 'upsert');
CREATE EXTERNAL TABLE clicks (asin VARCHAR NOT NULL, at BIGINT) STORED AS KAFKA LOCATION 'clicks';
";
    pipeline_dir(root, &format!("{sources}\n{extra}"))
}

/// The ingest API deletes keys of changelog streams: records marked `"_deleted": true`
/// and `DELETE /v1/topics/{topic}/records/{key}` are produced as tombstones (the key,
/// no value) keyed as the stream's records are; a composite key is a URL-encoded JSON
/// object of the key columns. A key that does not fit, an append-only stream and an
/// unknown topic are refused with the reason, and nothing is produced for them; tokens
/// and the rate limit apply to DELETE too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_api_deletes_keys_as_tombstones() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let sql = ingest_sql(tmp.path());
    let (ingest, api) = spawn_ingest(["--partitions", "1", "--rate-limit", "0", "--kafka-brokers", &broker.addr, "--sql", sql.to_str().unwrap()]);
    let post = |topic: &str, body: &str| {
        let (status, body) = http("POST", &api, &format!("/v1/topics/{topic}/records"), body.as_bytes());
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    let delete = |topic: &str, key: &str| {
        let (status, body) = http("DELETE", &api, &format!("/v1/topics/{topic}/records/{key}"), b"");
        (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null))
    };
    let accepted_one = json!({"accepted": 1, "rejected": 0, "errors": []});

    let (status, body) = post("products", r#"[{"asin": "A1", "price": 1.5}, {"asin": "A2", "price": 2.5}, {"asin": "A1", "_deleted": true}]"#);
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(3)), "{body}");
    assert_eq!(delete("products", "A2"), (200, accepted_one.clone()));
    assert_eq!(delete("products", &url_encoded("B/1 x")), (200, accepted_one.clone()), "any text, URL-encoded");
    let (status, body) = delete("products", "");
    assert_ne!(status, 200, "no key: {body}");
    let products = read_records(&broker.addr, "products");
    let shown: Vec<(String, Option<Value>)> = products.iter().map(|r| (r.key_text(), r.value.as_ref().map(|_| r.value_json()))).collect();
    assert_eq!(
        shown,
        vec![
            ("A1".into(), Some(json!({"asin": "A1", "price": 1.5}))),
            ("A2".into(), Some(json!({"asin": "A2", "price": 2.5}))),
            ("A1".into(), None),
            ("A2".into(), None),
            ("B/1 x".into(), None),
        ],
        "`_deleted` records and DELETEs are tombstones: no value at all"
    );

    assert_eq!(delete("categories", "7"), (200, accepted_one.clone()));
    let (status, body) = delete("categories", "seven");
    assert!(status == 400 && body["accepted"] == 0 && body["errors"][0]["reason"].as_str().unwrap().contains("seven"), "{body}");
    assert_eq!(
        read_records(&broker.addr, "categories").iter().map(|r| (r.key_text(), r.value.is_none())).collect::<Vec<_>>(),
        vec![("7".into(), true)]
    );

    // A composite key: the JSON object of its columns, in any order; sent keyed as the
    // stream's own records are (columns in declared order).
    assert_eq!(delete("stock", &url_encoded(r#"{"site": 2, "sku": "S1"}"#)), (200, accepted_one.clone()));
    let (status, body) = post("stock", r#"{"sku": "S1", "site": 2, "qty": 5}"#);
    assert_eq!(status, 200, "{body}");
    for (key, reason) in [
        ("S1", "the key in the path is not a JSON object of the key columns (sku, site): `S1`"),
        (r#"{"sku": "S1"}"#, "`site` is required"),
        (r#"{"sku": "S1", "site": "two"}"#, "two"),
    ] {
        let (status, body) = delete("stock", &url_encoded(key));
        assert!(status == 400 && body["errors"][0]["reason"].as_str().unwrap().contains(reason), "{key}: {body}");
    }
    let stock = read_records(&broker.addr, "stock");
    assert_eq!(stock.len(), 2);
    assert_eq!((stock[0].key_text(), stock[0].value.is_none()), (r#"{"sku":"S1","site":2}"#.to_string(), true));
    assert_eq!(stock[1].key_text(), stock[0].key_text(), "a delete and an upsert of one key share its Kafka key (and partition)");

    let (status, body) = delete("clicks", "A1");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(status == 400 && error.contains("append-only") && error.contains("declare OPTIONS ('changelog' 'upsert')"), "{body}");
    let (status, body) = delete("nope", "A1");
    assert!(status == 404 && body["error"].as_str().unwrap().contains("products"), "{status} {body}");
    assert_eq!(read_records(&broker.addr, "clicks").len(), 0);
    drop(ingest);

    // Tokens and the rate limit guard DELETE as they guard POST.
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, "t0ken\n").unwrap();
    let mut guarded = Killed(
        trendflow()
            .args(["ingest", "--listen", "127.0.0.1:0", "--rate-limit", "2", "--kafka-brokers", &broker.addr, "--sql"])
            .arg(&sql)
            .arg("--token-file")
            .arg(&tokens)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let api = wait_for_line(&mut guarded.0, "listening on http://");
    let delete_with = |header: &str| {
        let mut stream = std::net::TcpStream::connect(&api).unwrap();
        let head = format!("DELETE /v1/topics/products/records/G1 HTTP/1.1\r\nHost: {api}\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n");
        std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut response);
        response.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap()
    };
    assert_eq!(delete_with(""), 401);
    assert_eq!(delete_with("Authorization: Bearer wrong\r\n"), 401);
    let started = Instant::now();
    let statuses: Vec<u16> = (0..6).map(|_| delete_with("Authorization: Bearer t0ken\r\n")).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    assert!(admitted >= 2 && admitted <= 2 + refilled && statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let tombstones = read_records(&broker.addr, "products").iter().filter(|r| r.key_text() == "G1").count();
    assert_eq!(tombstones, admitted, "only admitted requests produced a tombstone");
}

/// Bad changelog records written straight to the topics, each a dead letter with its
/// reason, beside good ones: an upsert record or a `_deleted` record without its key
/// column, tombstones without a key or with a key that is not UTF-8; Debezium events
/// without `op`, with an unknown `op` (a truncate's `t` too), a create or update without
/// `after`, a delete without `before`, an image without a key column, not JSON, a
/// tombstone without a key. The job does not panic, every count adds up (records in =
/// processed + dead letters) and the views hold what the good records leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changelog_records_are_dead_letters_with_their_reasons() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let views = "
CREATE VIEW live_products AS SELECT asin, price FROM products;
CREATE VIEW stock_by_site AS SELECT site, COUNT(*) AS skus, SUM(qty) AS units FROM stock GROUP BY site;
";
    let stock = STOCK_SQL[..STOCK_SQL.find("CREATE VIEW").unwrap()].to_string();
    let sql = pipeline_dir(tmp.path(), &format!("{}\n{stock}\n{views}", shipped_products_declaration()));
    for topic in ["products", "stock"] {
        kafka::ensure_topic(&broker.addr, topic, 1).await.unwrap();
    }
    // (key, value, the reason of its dead letter: None for a good record)
    type Case = (Option<&'static [u8]>, &'static [u8], Option<&'static str>);
    let products: Vec<Case> = vec![
        (Some(b"G1"), br#"{"asin": "G1", "price": 1.0}"#, None),
        (Some(b"G9"), br#"{"price": 2.0}"#, Some("`asin` is required")),
        (None, b"", Some("a tombstone (a record without a value) needs a key to say which row it deletes")),
        (Some(b"G\xff"), b"", Some("a tombstone (a record without a value) whose key is not UTF-8 text")),
        (Some(b"G2"), br#"{"asin": "G2", "price": 3.0}"#, None),
        (Some(b"G2"), br#"{"asin": "G2", "_deleted": true}"#, None),
        (Some(b"G1"), b"", None),
        (Some(b"G3"), br#"{"asin": "G3", "price": 4.0}"#, None),
        (Some(b"G3"), br#"{"_deleted": true}"#, Some("`asin` is required")),
    ];
    let stock: Vec<Case> = vec![
        (None, br#"{"op": "c", "after": {"sku": "A", "site": 1, "qty": 5}}"#, None),
        (None, br#"{"after": {"sku": "B", "site": 1, "qty": 1}}"#, Some("a Debezium event without `op`")),
        (None, br#"{"op": "x", "after": {"sku": "B", "site": 1}}"#, Some("unknown Debezium op `x` (c, r, u or d)")),
        (None, br#"{"op": "c", "before": null}"#, Some("a Debezium `c` event without its `after` image")),
        (
            None,
            br#"{"payload": {"op": "u", "before": {"sku": "A", "site": 1}, "after": null}}"#,
            Some("a Debezium `u` event without its `after` image"),
        ),
        (None, br#"{"op": "d", "before": null, "after": null}"#, Some("a Debezium `d` event without its `before` image")),
        (None, br#"{"schema": {}, "payload": {"op": "t"}}"#, Some("unknown Debezium op `t`")),
        (None, br#"{"op": "c", "after": {"site": 2, "qty": 1}}"#, Some("`sku` is required")),
        (None, br#"{"op": "c", "after": "#, Some("invalid JSON")),
        (None, b"", Some("a tombstone (a record without a value) needs a key")),
        (None, br#"{"payload": {"op": "r", "after": {"sku": "C", "site": 2, "qty": 7}}}"#, None),
        (None, br#"{"op": "d", "before": {"sku": "A", "site": 1}}"#, None),
    ];
    for (topic, cases) in [("products", &products), ("stock", &stock)] {
        let records: Vec<(Option<&[u8]>, &[u8])> = cases.iter().map(|(k, v, _)| (*k, *v)).collect();
        send_raw(&broker.addr, topic, &records).await;
    }

    let state = tmp.path().join("state");
    let summary = run_until_idle(&broker.addr, &sql, &state);
    let bad = |cases: &[Case]| cases.iter().filter(|c| c.2.is_some()).count();
    let (processed, rejected) = (number_before(&summary, " records in"), number_before(&summary, " rejected"));
    assert_eq!((processed, rejected), (products.len() + stock.len() - bad(&products) - bad(&stock), bad(&products) + bad(&stock)), "{summary}");
    for (topic, cases) in [("products", &products), ("stock", &stock)] {
        let letters = read_topic(&broker.addr, &format!("{topic}.dlq"));
        let expected: Vec<(i64, &str)> = cases.iter().enumerate().filter_map(|(offset, c)| c.2.map(|r| (offset as i64, r))).collect();
        assert_eq!(letters.len(), expected.len(), "{topic}: one letter per bad record: {letters:?}");
        for ((headers, payload), (offset, reason)) in letters.iter().zip(&expected) {
            assert_eq!(headers["trendflow.offset"].parse::<i64>().unwrap(), *offset, "{topic}: {headers:?}");
            assert!(headers["trendflow.reason"].contains(reason), "{topic}, offset {offset}: {headers:?} should say {reason:?}");
            assert_eq!(payload.as_slice(), cases[*offset as usize].1, "{topic}: the original bytes are kept");
        }
    }
    let query = |sql_text: &str| ok(trendflow().args(["query", sql_text, "--format", "csv", "--sql"]).arg(&sql).arg("--state").arg(&state));
    assert_eq!(query("SELECT asin, price FROM live_products ORDER BY asin"), "asin,price\nG3,4.0\n");
    assert_eq!(query("SELECT site, skus, units FROM stock_by_site ORDER BY site"), "site,skus,units\n2,1,7\n");
}

/// `trendflow run --until-idle` of `sql` over the topics on `brokers`: its summary.
fn run_until_idle(brokers: &str, sql: &Path, state: &Path) -> String {
    ok(trendflow().args(["run", "--until-idle", "--flight-addr", "none", "--kafka-brokers", brokers, "--sql"]).arg(sql).arg("--state").arg(state))
}
