//! Avro records on Kafka, written by Confluent's own Python serializer
//! (confluent-kafka with fastavro) against a schema registry: the views equal the
//! batch computation over the same records as JSON, across two writer schemas;
//! poison records are dead-lettered with reasons.
//!
//! The registry is `tests/python/registry_standin.py` (no schema registry can be
//! installed here); the serializer registers its schemas there over HTTP, and
//! trendflow fetches them by id like from any registry.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::kafka::{assert_same_csv, json_records, ok, read_topic, trendflow, views_csv, Broker, Killed};
use crate::support::*;

/// A SQL directory: the shipped pipeline with `products` declared with `options`.
fn sql_with_products_options(dir: &Path, options: &str) -> std::path::PathBuf {
    let sql = dir.join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    let sources = std::fs::read_to_string(shipped_sql().join("01_sources.sql")).unwrap();
    assert!(sources.contains("OPTIONS ('format' 'json');"), "the shipped products stream changed: update this test");
    std::fs::write(sql.join("01_sources.sql"), sources.replace("OPTIONS ('format' 'json');", &format!("OPTIONS ({options});"))).unwrap();
    std::fs::copy(shipped_sql().join("02_trends.sql"), sql.join("02_trends.sql")).unwrap();
    sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_avro_records_feed_the_views_exactly() {
    let broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(trendflow().args(["gen", "--rows", "2000", "--seed", "11", "--out"]).arg(&data));
    let records = json_records(&data, tmp.path()).await;
    let ndjson = tmp.path().join("records.ndjson");
    std::fs::write(&ndjson, records.join(&b'\n')).unwrap();

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _registry = Killed(
        Command::new(python()).arg(repo().join("tests/python/registry_standin.py")).arg(port.to_string()).stdout(Stdio::null()).spawn().unwrap(),
    );
    let registry_url = format!("http://127.0.0.1:{port}");
    wait_for_port(&format!("127.0.0.1:{port}"), "schema registry stand-in", 30);
    trendflow_connectors::kafka::ensure_topic(&broker.addr, "products", 2).await.unwrap();
    let produced = ok(Command::new(python()).arg(repo().join("tests/python/produce_avro.py")).args([&broker.addr, "products", &registry_url]).arg(&ndjson));
    assert!(produced.contains("produced 2000 Avro records and 3 poison records"), "{produced}");

    let sql = sql_with_products_options(tmp.path(), &format!("'format' 'avro', 'schema_registry_url' '{registry_url}'"));
    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let streamed = tmp.path().join("streamed");
    let summary = ok(trendflow()
        .args(["run", "--until-idle", "--flight-addr", "none", "--max-rows", "300", "--kafka-brokers", &broker.addr, "--source", &categories, "--sql"])
        .arg(&sql)
        .arg("--state")
        .arg(&streamed));
    assert!(summary.contains("processed 2000 records") && summary.contains("3 rejected"), "{summary}");

    let from_file = tmp.path().join("from_file");
    let products = format!("products=file:{}", ndjson.display());
    ok(trendflow().args(["batch", "--source", &products, "--source", &categories, "--state"]).arg(&from_file));
    assert_same_csv(&views_csv(&streamed, false), &views_csv(&from_file, false), "Avro stream against the JSON batch");

    let letters = read_topic(&broker.addr, "products.dlq");
    let reasons: Vec<&str> = letters.iter().map(|(headers, _)| headers["trendflow.reason"].as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for expected in ["first byte is 0x7b", "writer schema 4242 is not in the schema registry", "invalid Avro record"] {
        assert!(reasons.iter().any(|r| r.contains(expected)), "no dead letter says {expected:?}: {reasons:?}");
    }
}
