//! Views written to Kafka as changelogs (`trendflow run --kafka-sink VIEW=TOPIC`),
//! against Apache Kafka (see `broker.rs`): a writer job killed mid-stream and resumed,
//! then changed by tombstones (a category withdrawn: its rows leave two views, as
//! tombstones in their topics); a second job reading the view topics as `upsert`
//! streams holds the writer's views, and the writer's views equal `trendflow batch`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use trendflow_connectors::kafka::{OutRecord, RecordProducer};
use trendflow_connectors::store::EmbeddedStore;

use crate::kafka::{json_records, ok, trendflow, Broker};
use crate::support::*;

/// The shipped views the writer sends to Kafka, and their topics.
const SINKS: [(&str, &str); 4] = [
    ("price_levels", "out.price_levels"),
    ("category_distribution", "out.category_distribution"),
    ("top_categories_by_demand", "out.top"),
    ("category_trend", "out.category_trend"),
];

/// The reader job: each view topic as an `upsert` stream, and a view of all of it.
const READER_SQL: &str = "
CREATE EXTERNAL TABLE price_levels_in (
    price_level VARCHAR NOT NULL, products BIGINT, avg_price DOUBLE, min_price DOUBLE, max_price DOUBLE,
    PRIMARY KEY (price_level)
) STORED AS KAFKA LOCATION 'out.price_levels' OPTIONS ('format' 'json', 'changelog' 'upsert');

CREATE EXTERNAL TABLE category_distribution_in (
    category_id INT NOT NULL, category_name VARCHAR, products BIGINT, share DOUBLE, best_sellers BIGINT,
    PRIMARY KEY (category_id, category_name)
) STORED AS KAFKA LOCATION 'out.category_distribution' OPTIONS ('format' 'json', 'changelog' 'upsert');

CREATE EXTERNAL TABLE top_in (
    category_id INT NOT NULL, category_name VARCHAR, bought_last_month BIGINT, products BIGINT,
    PRIMARY KEY (category_id, category_name)
) STORED AS KAFKA LOCATION 'out.top' OPTIONS ('format' 'json', 'changelog' 'upsert');

CREATE EXTERNAL TABLE category_trend_in (
    window_start TIMESTAMP NOT NULL, category_id INT NOT NULL, products BIGINT, avg_price DOUBLE,
    PRIMARY KEY (window_start, category_id)
) STORED AS KAFKA LOCATION 'out.category_trend' OPTIONS ('format' 'json', 'changelog' 'upsert');

CREATE VIEW price_levels AS SELECT price_level, products, avg_price, min_price, max_price FROM price_levels_in;
CREATE VIEW category_distribution AS SELECT category_id, category_name, products, share, best_sellers FROM category_distribution_in;
CREATE VIEW top_categories_by_demand AS SELECT category_id, category_name, bought_last_month, products FROM top_in;
CREATE VIEW category_trend AS SELECT window_start, category_id, products, avg_price FROM category_trend_in;
";

/// The views of `names` stored in a state directory, timestamps as the writer's type.
fn stored(state: &Path, names: &[&str]) -> BTreeMap<String, RecordBatch> {
    let dir = state.join("store");
    names
        .iter()
        .map(|name| {
            let batch = EmbeddedStore::read_view(&dir, name).unwrap().unwrap_or_else(|| panic!("no view {name} in {}", dir.display()));
            (name.to_string(), utc_millis(&batch))
        })
        .collect()
}

/// `batch` with every timestamp column as UTC milliseconds, the type of the writer's `window_start`.
fn utc_millis(batch: &RecordBatch) -> RecordBatch {
    let target = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let (fields, columns): (Vec<Field>, Vec<_>) = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| match field.data_type() {
            DataType::Timestamp(..) => (field.as_ref().clone().with_data_type(target.clone()), cast(column, &target).unwrap()),
            _ => (field.as_ref().clone(), column.clone()),
        })
        .unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// A `read_committed` consumer that reports the end of each partition.
fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sink-test-reader")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap()
}

/// Every committed record of `topic` as a `read_committed` consumer sees it: (key, value;
/// None for a tombstone), partition by partition.
fn committed_records(brokers: &str, topic: &str) -> Vec<(String, Option<Value>)> {
    let consumer = reader(brokers);
    let partitions = trendflow_connectors::kafka::partition_count(&consumer, brokers, topic).unwrap().expect("the topic exists");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let (mut records, mut at_end) = (Vec::new(), HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while (at_end.len() as i32) < partitions {
        assert!(Instant::now() < deadline, "{topic}: not at its end within 60 s");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Ok(message)) => records.push((
                String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
                message.payload().map(|value| serde_json::from_slice(value).unwrap()),
            )),
            Some(Err(e)) => panic!("{topic}: {e}"),
            None => {}
        }
    }
    records
}

/// Records of `products` (all partitions) the current checkpoint in `state` covers.
fn checkpointed_records(state: &Path) -> i64 {
    let Some(meta) = checkpoint_meta(state) else { return 0 };
    // Partitions only: the dead-letter topic's position has a negative key.
    let offsets = meta["sources"]["products"].as_object().cloned().unwrap_or_default();
    offsets.iter().filter(|(partition, _)| !partition.starts_with('-')).filter_map(|(_, offset)| offset.as_i64()).sum()
}

/// The number of view changes a run's summary says it committed to Kafka.
fn committed(summary: &str) -> u64 {
    let count = summary.split("committed ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse().ok());
    count.unwrap_or_else(|| panic!("no count of committed changes in {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_written_to_kafka_read_back_as_upsert_streams_equal_the_views() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Arrival time (`--days 0`): with event times, which records are late would depend on
    // how the three partitions interleave.
    ok(trendflow().args(["gen", "--days", "0", "--rows", "12000", "--seed", "21", "--out"]).arg(&data));
    for file in ["categories.csv", "products.csv"] {
        ok(trendflow()
            .args(["produce", "--partitions", "3", "--kafka-brokers", &broker.addr, "--file"])
            .arg(data.join(file))
            .arg("--state")
            .arg(tmp.path().join("producer")));
    }
    let state = tmp.path().join("writer");
    let sink_args: Vec<String> = SINKS.iter().flat_map(|(view, topic)| ["--kafka-sink".to_string(), format!("{view}={topic}")]).collect();
    let writer = |extra: &[&str]| {
        let mut command = trendflow();
        command
            .args(["run", "--flight-addr", "none", "--kafka-brokers", &broker.addr, "--kafka-group", "writer", "--checkpoint-interval-ms", "0"])
            .args(&sink_args)
            .args(extra)
            .arg("--state")
            .arg(&state);
        command
    };

    // Killed mid-stream, once some transactions are committed, then resumed to the end.
    let mut child = writer(&["--max-rows", "150"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpointed_records(&state) < 3_000 {
        assert!(Instant::now() < deadline, "the writer checkpointed no 3,000 records within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = checkpointed_records(&state);
    assert!(killed_at < 12_000, "the kill came after the last record: {killed_at}");
    let resumed = ok(&mut writer(&["--until-idle", "--max-rows", "700"]));
    assert!(resumed.contains("resumed from checkpoint") && committed(&resumed) > 0, "{resumed}");

    // Every product of the category with the most purchases is withdrawn: it leaves the
    // top 10, and its daily rows leave category_trend.
    let products: Vec<Value> = json_records(&data, tmp.path()).await.iter().map(|r| serde_json::from_slice(r).unwrap()).collect();
    let mut bought: HashMap<i64, i64> = HashMap::new();
    for product in &products {
        *bought.entry(product["category_id"].as_i64().unwrap()).or_default() += product["boughtInLastMonth"].as_i64().unwrap_or(0);
    }
    let (&withdrawn, _) = bought.iter().max_by_key(|(id, sum)| (**sum, -**id)).unwrap();
    let asins: Vec<String> =
        products.iter().filter(|p| p["category_id"].as_i64() == Some(withdrawn)).map(|p| p["asin"].as_str().unwrap().to_string()).collect();
    let tombstones: Vec<OutRecord<'_>> =
        asins.iter().map(|a| OutRecord { key: Some(a.as_bytes()), payload: b"", timestamp: None, partition: None }).collect();
    RecordProducer::new(&broker.addr).unwrap().send_all("products", &tombstones, None).await.unwrap();
    let changed = ok(&mut writer(&["--until-idle", "--max-rows", "400"]));
    assert!(changed.contains(&format!("processed {} records", asins.len())), "{changed}");

    let names: Vec<&str> = SINKS.iter().map(|(view, _)| *view).collect();
    let written = stored(&state, &names);
    // The writer's views are the batch result over the same topics.
    let batch_state = tmp.path().join("batch");
    ok(trendflow().args(["batch", "--kafka-brokers", &broker.addr, "--state"]).arg(&batch_state));
    assert_same_views(&written, &stored(&batch_state, &names));
    let top = &written["top_categories_by_demand"];
    assert_eq!(top.num_rows(), 10);

    // The topics hold the withdrawn category's rows, then their tombstones.
    for topic in ["out.top", "out.category_distribution"] {
        let records = committed_records(&broker.addr, topic);
        let withdrawn_keys: Vec<&(String, Option<Value>)> =
            records.iter().filter(|(key, _)| serde_json::from_str::<Value>(key).unwrap()["category_id"] == withdrawn).collect();
        assert!(withdrawn_keys.len() >= 2 && withdrawn_keys.last().unwrap().1.is_none(), "{topic}, category {withdrawn}: {withdrawn_keys:?}");
    }

    // A second job reads the three topics as upsert streams: the same views.
    let reader_sql = pipeline_dir(&tmp.path().join("reader"), READER_SQL);
    let reader_state = tmp.path().join("reader_state");
    let read = ok(trendflow()
        .args(["run", "--until-idle", "--flight-addr", "none", "--kafka-brokers", &broker.addr, "--kafka-group", "reader", "--sql"])
        .arg(&reader_sql)
        .arg("--state")
        .arg(&reader_state));
    if !read.contains(", 0 rejected") {
        let letters: Vec<String> = SINKS
            .iter()
            .filter_map(|(_, topic)| {
                trendflow_connectors::kafka::partition_count(&reader(&broker.addr), &broker.addr, &format!("{topic}.dlq")).unwrap().map(|_| topic)
            })
            .flat_map(|topic| committed_records(&broker.addr, &format!("{topic}.dlq")).into_iter().take(3).map(|(_, v)| format!("{v:?}")))
            .collect();
        panic!("the reader rejected records: {read}\n{}", letters.join("\n"));
    }
    assert_same_views(&stored(&reader_state, &names), &written);

    // Mistakes in --kafka-sink are refused with what and where.
    let refused = |sink: &str| {
        let output = trendflow()
            .args([
                "run",
                "--until-idle",
                "--flight-addr",
                "none",
                "--kafka-brokers",
                &broker.addr,
                "--kafka-group",
                "mistakes",
                "--kafka-sink",
                sink,
            ])
            .arg("--state")
            .arg(tmp.path().join("mistakes"))
            .output()
            .unwrap();
        assert!(!output.status.success(), "--kafka-sink {sink} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let unknown = refused("no_such_view=out.x");
    assert!(unknown.contains("--kafka-sink names `no_such_view`, which is not a view (views: avg_price_by_category,"), "{unknown}");
    let looped = refused("price_levels=products");
    assert!(looped.contains("stream `products` reads topic `products`; a job must not read what it writes"), "{looped}");
    let malformed = refused("price_levels");
    assert!(malformed.contains("--kafka-sink `price_levels`: expected VIEW=TOPIC"), "{malformed}");
}
