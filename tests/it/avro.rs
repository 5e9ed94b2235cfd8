//! Avro records on Kafka, written by Confluent's own Python serializer
//! (confluent-kafka with fastavro) and by trendflow's ingest API and replay
//! producer, against a schema registry: the views equal the batch computation over
//! the same records as JSON, across three writer schemas; poison records are
//! dead-lettered with reasons; Confluent's deserializer reads trendflow's records.
//!
//! The registry is `tests/python/registry_standin.py` (no schema registry can be
//! installed here); the serializer registers its schemas there over HTTP, and
//! trendflow fetches them by id like from any registry.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::kafka::{assert_same_csv, json_records, ok, post_products, read_topic, spawn_ingest, trendflow, views_csv, Broker, Killed};
use crate::support::*;

/// Writes `records` as NDJSON to `path`.
fn write_ndjson(path: &Path, records: &[Vec<u8>]) {
    std::fs::write(path, records.join(&b'\n')).unwrap();
}

/// Three producers feed one Avro topic: Confluent's serializer (two writer schemas,
/// plus poison), trendflow's ingest API and `trendflow produce` (which register their
/// own writer schema). The streamed views equal the batch computation over the same
/// records as JSON; poison is dead-lettered with reasons; and Confluent's deserializer
/// reads back every record trendflow wrote with the values it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_topics_work_with_confluent_serializers_both_ways() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--days", "0", "--rows", "3000", "--seed", "11", "--out"]).arg(&data));
    let records = json_records(&data, tmp.path()).await;
    let (by_confluent, rest) = records.split_at(2000);
    let (by_ingest, by_produce) = rest.split_at(600);
    let paths = ["all", "confluent", "produce"].map(|name| tmp.path().join(format!("{name}.ndjson")));
    for (path, part) in paths.iter().zip([&records[..], by_confluent, by_produce]) {
        write_ndjson(path, part);
    }

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Basic authentication with a '/' in the secret, escaped in the URL as both clients expect.
    let _registry = Killed(
        Command::new(python())
            .arg(repo().join("tests/python/registry_standin.py"))
            .args([port.to_string().as_str(), "key:s3cr/et"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let registry_url = format!("http://key:s3cr%2Fet@127.0.0.1:{port}");
    wait_for_port(&format!("127.0.0.1:{port}"), "schema registry stand-in", 30);
    let confluent = |mode: &str, path: &Path| {
        ok(Command::new(python()).arg(repo().join("tests/python/produce_avro.py")).args([mode, &broker.addr, "products", &registry_url]).arg(path))
    };
    trendflow_connectors::kafka::ensure_topic(&broker.addr, "products", 2).await.unwrap();
    let produced = confluent("produce", &paths[1]);
    assert!(produced.contains("produced 2000 Avro records and 3 poison records"), "{produced}");

    let sql = sql_with_products_options(tmp.path(), &format!("'format' 'avro', 'schema_registry_url' '{registry_url}'"));
    let (_ingest, api) = spawn_ingest([OsStr::new("--kafka-brokers"), OsStr::new(&broker.addr), OsStr::new("--sql"), sql.as_os_str()]);
    post_products(&api, by_ingest, 200);
    let replayed = ok(trendflow().args(["produce", "--kafka-brokers", &broker.addr, "--sql"]).arg(&sql).arg("--file").arg(&paths[2]));
    assert!(replayed.contains("produced 400 records"), "{replayed}");

    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let streamed = tmp.path().join("streamed");
    let run = trendflow()
        .args([
            "run",
            "--until-idle",
            "--flight-addr",
            "none",
            "--max-rows",
            "300",
            "--kafka-brokers",
            &broker.addr,
            "--source",
            &categories,
            "--sql",
        ])
        .arg(&sql)
        .arg("--state")
        .arg(&streamed)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let (summary, log) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    // 3,000 products and the 248 categories.
    assert!(run.status.success() && summary.contains("processed 3248 records") && summary.contains("3 rejected"), "{summary}{log}");
    assert!(!log.contains("s3cr") && !summary.contains("s3cr"), "the registry password is in the output");
    let batch_over = |file: &Path, state: &str| {
        let state = tmp.path().join(state);
        let products = format!("products=file:{}", file.display());
        ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&state));
        views_csv(&state, false)
    };
    assert_same_csv(&views_csv(&streamed, false), &batch_over(&paths[0], "from_json"), "Avro stream against the JSON batch");

    let letters = read_topic(&broker.addr, "products.dlq");
    let reasons: Vec<&str> = letters.iter().map(|(headers, _)| headers["trendflow.reason"].as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for expected in ["first byte is 0x7b", "writer schema 4242 is not in the schema registry", "invalid Avro record"] {
        assert!(reasons.iter().any(|r| r.contains(expected)), "no dead letter says {expected:?}: {reasons:?}");
    }

    // Confluent's deserializer reads what everyone wrote, with the values that were sent.
    let read_back = tmp.path().join("read_back.ndjson");
    let consumed = confluent("consume", &read_back);
    assert!(consumed.contains("deserialized 3000 records, 3 failed"), "{consumed}");
    assert_same_csv(
        &batch_over(&read_back, "from_read_back"),
        &batch_over(&paths[0], "from_json_again"),
        "records read back by Confluent's deserializer",
    );
}

/// A registry that cannot be reached stops the job with one clear error, before any
/// record counts as read; once the registry is back, the same records are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_stops_the_job_without_losing_records() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let stream = trendflow_engine::catalog::Catalog::load_streams(&[shipped_sql()]).await.unwrap().remove(0);
    let payload = &stream.payload_schema;
    let columns = payload.fields().iter().map(|f| match f.name().as_str() {
        "asin" => std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec!["B1", "B2"])) as _,
        _ => datafusion::arrow::array::new_null_array(f.data_type(), 2),
    });
    let rows = datafusion::arrow::array::RecordBatch::try_new(payload.clone(), columns.collect()).unwrap();
    // Schema id 1: the first schema the stand-in registers, below.
    let (bytes, offsets) = trendflow_formats::AvroEncoder::confluent(payload, 1).unwrap().encode(&rows).unwrap();
    trendflow_connectors::kafka::ensure_topic(&broker.addr, "products", 1).await.unwrap();
    let producer = crate::kafka::producer(&broker.addr);
    for w in offsets.windows(2) {
        crate::kafka::send(&producer, "products", None, &bytes[w[0]..w[1]]).await;
    }

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registry_url = format!("http://127.0.0.1:{port}");
    let sql = sql_with_products_options(tmp.path(), &format!("'format' 'avro', 'schema_registry_url' '{registry_url}'"));
    let categories = format!("categories=file:{}", shared_data("amazon_categories.csv").display());
    let state = tmp.path().join("state");
    let run = || {
        trendflow()
            .args(["run", "--until-idle", "--flight-addr", "none", "--kafka-brokers", &broker.addr, "--source", &categories, "--sql"])
            .arg(&sql)
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap()
    };
    let failed = run();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(&format!("schema registry at {registry_url}")) && stderr.contains("6 attempts"), "{stderr}");

    let _registry = Killed(
        Command::new(python()).arg(repo().join("tests/python/registry_standin.py")).arg(port.to_string()).stdout(Stdio::null()).spawn().unwrap(),
    );
    wait_for_port(&format!("127.0.0.1:{port}"), "schema registry stand-in", 30);
    let schema = trendflow_formats::avro_schema_of(payload).unwrap();
    let id = trendflow_connectors::schema_registry::SchemaRegistry::new(&registry_url).unwrap().register("products-value", &schema).await.unwrap();
    assert_eq!(id, 1);
    let resumed = run();
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    // The 2 products, and the 248 categories the failed run never checkpointed.
    assert!(resumed.status.success() && stdout.contains("processed 250 records"), "{stdout}\n{}", String::from_utf8_lossy(&resumed.stderr));
}
