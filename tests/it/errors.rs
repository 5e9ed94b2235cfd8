//! Bad SQL, unsupported constructs, bad bindings and bad files end in clear errors
//! naming what and where; bad records end in dead letters with reasons.

use std::path::Path;

use trendflow_connectors::binding::Bindings;
use trendflow_engine::batch::compute_views;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::runtime::Pipeline;
use trendflow_engine::session::{batch_session_config, incremental_session_config};
use trendflow_engine::EngineError;

use crate::support::*;

const STREAMS: &str = "CREATE EXTERNAL TABLE a (id VARCHAR NOT NULL, v DOUBLE, PRIMARY KEY (id)) STORED AS KAFKA LOCATION 'a';
CREATE EXTERNAL TABLE b (id VARCHAR NOT NULL, w DOUBLE) STORED AS KAFKA LOCATION 'b';
";

async fn compile(tmp: &Path, sql: &str) -> Result<Pipeline, EngineError> {
    let dir = pipeline_dir(tmp, sql);
    let catalog = Catalog::load(&[dir], incremental_session_config(), &Default::default()).await?;
    Pipeline::compile(catalog, tmp.join("state")).await
}

/// The error `sql` ends in. A view the streaming run refuses, `trendflow batch` refuses
/// too, with the same message: the two accept the same views.
async fn error_of(sql: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let message = match compile(tmp.path(), sql).await {
        Ok(_) => panic!("expected an error for:\n{sql}"),
        Err(e) => e.to_string(),
    };
    let dir = pipeline_dir(&tmp.path().join("batch"), sql);
    if let Ok(catalog) = Catalog::load(&[dir], batch_session_config(), &Default::default()).await {
        match compute_views(&catalog, Vec::new()).await {
            Ok(_) => panic!("batch accepts what the streaming run refuses ({message}):\n{sql}"),
            Err(e) => assert_eq!(e.to_string().replace("/batch/", "/"), message, "batch and run refuse alike"),
        }
    }
    message
}

/// An append stream joined to a changelog stream keeps none of its rows to meet again
/// when the changelog stream changes.
#[tokio::test]
async fn an_append_stream_joined_to_a_changelog_stream_is_refused() {
    let sql = "CREATE EXTERNAL TABLE clicks (asin VARCHAR NOT NULL) STORED AS KAFKA LOCATION 'clicks';
CREATE EXTERNAL TABLE products (asin VARCHAR NOT NULL, category_id INT, PRIMARY KEY (asin)) STORED AS KAFKA LOCATION 'products' OPTIONS ('changelog' 'upsert');
CREATE VIEW v AS SELECT p.category_id, COUNT(*) AS n FROM clicks k JOIN products p ON k.asin = p.asin GROUP BY p.category_id;";
    let message = error_of(sql).await;
    assert!(
        message.contains("pipeline.sql:3:") && message.contains("reads the append stream `clicks` and the changelog stream `products`"),
        "{message}"
    );
}

#[tokio::test]
async fn bad_sql_names_file_and_line() {
    let message = error_of(&format!("{STREAMS}\n\nCREATE VIEW v AS SELEC id FROM a;")).await;
    assert!(message.contains("pipeline.sql:5:"), "{message}");
    let message = error_of(&format!("{STREAMS}CREATE VIEW v AS SELECT id FROM missing_table;")).await;
    assert!(message.contains("pipeline.sql:3:") && message.contains("missing_table"), "{message}");
    // Planned by DataFusion, but without an accumulator: refused at start-up, not at the first record.
    let message = error_of(&format!("{STREAMS}CREATE VIEW d AS SELECT id, approx_distinct(v) AS d FROM a GROUP BY id;")).await;
    assert!(message.contains("pipeline.sql:3:") && message.contains("approx_distinct"), "{message}");
    let message = error_of(&format!("{STREAMS}INSERT INTO a VALUES ('x', 1.0);")).await;
    assert!(message.contains("unsupported statement") && message.contains(":3:"), "{message}");
}

#[tokio::test]
async fn non_incremental_constructs_are_refused_at_start_up() {
    let cases = [
        ("CREATE VIEW j AS SELECT a.id, COUNT(*) AS n FROM a JOIN b ON a.id = b.id GROUP BY a.id;", "join between two streams"),
        ("CREATE VIEW w AS SELECT id, SUM(v) OVER (ORDER BY v) AS s FROM a;", "window function"),
        ("CREATE VIEW l AS SELECT id, v FROM a ORDER BY v LIMIT 5;", "over stream rows"),
        ("CREATE VIEW k AS SELECT v FROM a;", "has no key"),
        ("CREATE VIEW m AS SELECT id, w FROM b;", "has no key"),
        ("CREATE VIEW n AS SELECT id, COUNT(*) AS c FROM a WHERE now() > TIMESTAMP '2020-01-01' GROUP BY id;", "`now()` reads the clock"),
        ("CREATE VIEW r AS SELECT id, SUM(random()) AS s FROM a GROUP BY id;", "`random()` reads the clock or is random"),
        ("CREATE VIEW i AS SELECT id, c FROM (SELECT id, current_date() AS c FROM a);", "`current_date()`"),
    ];
    for (view, expected) in cases {
        let message = error_of(&format!("{STREAMS}{view}")).await;
        assert!(message.contains(expected), "{view}: {message}");
        assert!(message.contains("pipeline.sql:3:") && message.contains("cannot be maintained incrementally"), "{message}");
    }
}

/// Rows that come from a reference table alone would be produced (and counted) again by
/// every micro-batch, and the value of a scalar subquery over a stream (or correlated) is not maintained: both are refused
/// at start-up, naming file and line, instead of giving wrong counts or crashing later.
#[tokio::test]
async fn reference_rows_without_stream_rows_and_scalar_subqueries_are_refused() {
    let cases = [
        ("SELECT c.id, c.category_name, COUNT(*) AS n FROM products p RIGHT JOIN categories c ON p.category_id = c.id GROUP BY c.id, c.category_name", "outer join that outputs reference-table rows"),
        ("SELECT c.id, COUNT(p.asin) AS n FROM categories c LEFT JOIN products p ON p.category_id = c.id GROUP BY c.id", "outer join that outputs reference-table rows"),
        ("SELECT c.id, COUNT(*) AS n FROM products p FULL JOIN categories c ON p.category_id = c.id GROUP BY c.id", "outer join that outputs reference-table rows"),
        ("SELECT c.id, COUNT(*) AS n FROM categories c WHERE c.id IN (SELECT category_id FROM products) GROUP BY c.id", "semi-join (IN / EXISTS) that outputs reference-table rows"),
        ("SELECT c.id, COUNT(*) AS n FROM categories c WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.category_id = c.id) GROUP BY c.id", "anti-join (NOT IN / NOT EXISTS) that outputs reference-table rows"),
        ("SELECT id, COUNT(*) AS n FROM (SELECT category_id AS id FROM products UNION ALL SELECT id FROM categories) GROUP BY id", "UNION of a stream and a reference table"),
        ("SELECT category_id, COUNT(*) AS n FROM products WHERE price > (SELECT AVG(price) FROM products) GROUP BY category_id", "scalar subquery"),
        // Over a reference table alone it is computed once (tests/slt/reference_scalar_subquery.slt); correlated, refused.
        ("SELECT p.category_id, COUNT(*) AS n FROM products p WHERE p.price > (SELECT MAX(c.id) FROM categories c WHERE c.id = p.category_id) GROUP BY p.category_id", "scalar subquery"),
    ];
    let categories = shared_data("amazon_categories.csv");
    for (query, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let sources = sources_with_reference_categories();
        let lines = sources.lines().count();
        let dir = pipeline_dir(tmp.path(), &format!("{sources}\nCREATE VIEW v AS {query};\n"));
        let catalog = Catalog::load(&[dir], incremental_session_config(), &files(&[("categories", &categories)])).await.unwrap();
        let message = match Pipeline::compile(catalog, tmp.path().join("state")).await {
            Ok(_) => panic!("expected a refusal for {query}"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(expected), "{query}: {message}");
        assert!(message.contains(&format!("pipeline.sql:{}:", lines + 2)), "{query}: {message}");
    }
}

#[tokio::test]
async fn bad_bindings_are_refused() {
    assert!(Bindings::parse(&["products=http://x/y".into()]).unwrap_err().to_string().contains("expected file:PATH or kafka://"));
    assert!(Bindings::parse(&["products=kafka://127.0.0.1:9092".into()]).unwrap_err().to_string().contains("topic is missing"));
    let tmp = tempfile::tempdir().unwrap();
    let categories = shared_data("amazon_categories.csv");
    let unknown = files(&[("nope", Path::new("x.csv")), ("categories", &categories)]);
    let error = Catalog::load(&[shipped_sql()], incremental_session_config(), &unknown).await.err().unwrap().to_string();
    assert!(error.contains("no table `nope`") && error.contains("products"), "{error}");
    // A stream bound to a file that is not there: refused when its source opens.
    let missing = bindings(&shared_data("amazon_products_sample.csv"), &tmp.path().join("missing.csv"));
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &missing.files()).await.unwrap();
    let error = missing.open_sources(&catalog, &file_settings(tmp.path())).await.err().unwrap().to_string();
    assert!(error.contains("categories") && error.contains("missing.csv"), "{error}");
}

#[tokio::test]
async fn bad_records_become_dead_letters_and_counts_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    let header = "asin,title,imgUrl,productURL,stars,reviews,price,listPrice,category_id,isBestSeller,boughtInLastMonth,extra,_timestamp";
    let csv = format!(
        "{header}\nA1,ok,,,4.5,1,9.99,0,1,False,0,x,2023-01-01T00:00:00\n,no asin,,,4.5,1,9.99,0,1,False,0,x,\n\
         A3,bad price,,,4.5,1,cheap,0,1,False,0,x,\nA4,bad bool,,,4.5,1,9.99,0,1,Maybe,0,x,\n\
         A5,\"quoted, title\",,,,,12.5,,2,True,,x,\nA6,bad time,,,,,1,,2,True,,x,soon\n"
    );
    let products = tmp.path().join("products.csv");
    std::fs::write(&products, csv).unwrap();
    let ndjson = tmp.path().join("products.ndjson");
    let mut lines = b"{\"asin\":\"J1\",\"price\":5.5,\"category_id\":3,\"unknown\":1}\n{\"asin\":\"J2\",\"price\":\n\
         {\"asin\":\"J3\",\"price\":\"abc\"}\n\n{\"title\":\"no asin\"}\n{\"asin\":\"J5\",\"isBestSeller\":true}\n"
        .to_vec();
    lines.extend_from_slice(b"{\"asin\":\"J7\",\"title\":\"\xff\xfe\"}\n");
    std::fs::write(&ndjson, lines).unwrap();
    let categories = shared_data("amazon_categories.csv");
    for (file, accepted, reasons) in [
        (
            &products,
            2,
            vec!["`asin` is required", "`cheap` is not a valid Float64", "`Maybe` is not a valid Boolean", "`_timestamp` is not a timestamp"],
        ),
        (&ndjson, 2, vec!["invalid JSON record", "invalid JSON record", "`asin` is required", "invalid UTF-8"]),
    ] {
        let bindings = bindings(file, &categories);
        let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &bindings.files()).await.unwrap();
        let dead = tmp.path().join(format!("dl-{}", file.extension().unwrap().to_string_lossy()));
        let data = decode_all(&catalog, &bindings, &dead).await;
        assert_eq!(data.num_rows(), accepted, "{}", file.display());
        let letters = std::fs::read_to_string(dead.join("products.ndjson")).unwrap();
        let letters: Vec<serde_json::Value> = letters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(letters.len(), reasons.len(), "{letters:?}");
        for (letter, reason) in letters.iter().zip(reasons) {
            assert!(letter["reason"].as_str().unwrap().contains(reason), "{letter}");
            assert!(letter["offset"].as_i64().is_some() && !letter["record"].as_str().unwrap().is_empty(), "{letter}");
        }
    }
}

#[tokio::test]
async fn malformed_or_missing_files_fail_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let categories = shared_data("amazon_categories.csv");
    let broken = tmp.path().join("broken.csv");
    std::fs::write(&broken, "asin,price\nA1,1.0\nA2,2.0,extra,fields\n").unwrap();
    let broken_bindings = bindings(&broken, &categories);
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &broken_bindings.files()).await.unwrap();
    let mut sources = broken_bindings.open_sources(&catalog, &file_settings(tmp.path())).await.unwrap();
    let error = sources[0].poll(100, Default::default()).await.expect_err("a malformed CSV is an error").to_string();
    assert!(error.contains("broken.csv") && error.contains("products"), "{error}");
    let missing = bindings(&tmp.path().join("nothing-here.csv"), &categories);
    let error = missing.open_sources(&catalog, &file_settings(tmp.path())).await.err().unwrap().to_string();
    assert!(error.contains("nothing-here.csv"), "{error}");
}

/// A replay after a crash writes no dead letter twice: the source cuts its dead-letter
/// file back to the length its checkpointed position recorded.
#[tokio::test]
async fn replayed_records_are_not_dead_lettered_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: String =
        (0..40).map(|i| if i % 4 == 0 { format!("{{\"asin\":\"X{i}\",\"price\":\"bad\"}}\n") } else { format!("{{\"asin\":\"X{i}\"}}\n") }).collect();
    let ndjson = tmp.path().join("p.ndjson");
    std::fs::write(&ndjson, lines).unwrap();
    let bindings = bindings(&ndjson, &shared_data("amazon_categories.csv"));
    let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &bindings.files()).await.unwrap();
    let dead = tmp.path().join("dl");
    let mut first = bindings.open_sources(&catalog, &file_settings(&dead)).await.unwrap().remove(0);
    let trendflow_engine::contract::Poll::Batch(micro) = first.poll(10, Default::default()).await.unwrap() else { panic!() };
    let checkpointed = micro.offsets.clone();
    while let trendflow_engine::contract::Poll::Batch(_) = first.poll(10, Default::default()).await.unwrap() {}
    // The job dies here, after the last poll but before its next checkpoint; it resumes from `checkpointed`.
    let mut second = bindings.open_sources(&catalog, &file_settings(&dead)).await.unwrap().remove(0);
    second.seek(&checkpointed).await.unwrap();
    while let trendflow_engine::contract::Poll::Batch(_) = second.poll(7, Default::default()).await.unwrap() {}
    let letters = std::fs::read_to_string(dead.join("products.ndjson")).unwrap();
    let offsets: Vec<i64> = letters.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, (0..40).step_by(4).collect::<Vec<i64>>());
}
