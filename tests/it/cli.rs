//! The `trendflow` binary end to end: embedded defaults, run / batch / query agreement,
//! restart, and one clear error line for bad input.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

fn trendflow(args: &[&str], cwd: &Path) -> Output {
    let output =
        Command::new(env!("CARGO_BIN_EXE_trendflow")).env("TRENDFLOW_HTTP_ADDR", "127.0.0.1:0").args(args).current_dir(cwd).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "trendflow {args:?} panicked:\n{stderr}");
    output
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let output = trendflow(args, cwd);
    assert!(output.status.success(), "trendflow {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn embedded_defaults_run_query_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    let state = tmp.path().join("state");
    let state = state.to_str().unwrap();
    let out = ok(&["run", "--until-idle", "--gen-rows", "20000", "--max-rows", "3000", "--state", state, "--flight-addr", "none"], &repo);
    // 20,000 generated products and the 248 categories, each from its own stream.
    assert!(out.contains("processed 20248 records"), "{out}");
    for view in ["price_levels", "category_distribution", "avg_price_by_category", "top_categories_by_demand", "category_trend"] {
        assert!(out.contains(view), "summary lists {view}:\n{out}");
    }
    let total = ok(&["query", "SELECT SUM(products) AS n FROM category_distribution", "--state", state, "--format", "csv"], &repo);
    assert_eq!(total.trim(), "n\n20000");
    let again = ok(&["run", "--until-idle", "--state", state, "--flight-addr", "none"], &repo);
    assert!(again.contains("processed 0 records") && again.contains("resumed from checkpoint"), "{again}");
    let json = ok(&["query", "SELECT category_id, products FROM top_categories_by_demand", "--state", state, "--format", "json"], &repo);
    assert_eq!(json.lines().count(), 10);
    assert!(json.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{json}");
}

#[test]
fn run_and_batch_agree_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    let data = tmp.path().join("data");
    ok(&["gen", "--days", "0", "--rows", "15000", "--seed", "9", "--out", data.to_str().unwrap()], &repo);
    // Records without a time arrive on the replay clock, which starts when the file was
    // written: both commands put them in that day's window, whenever they run.
    let written = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_294_400); // 2024-03-01T12:00:00Z
    std::fs::File::options().append(true).open(data.join("products.csv")).unwrap().set_modified(written).unwrap();
    let products = format!("products=file:{}", data.join("products.csv").display());
    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let query = "SELECT price_level, products, ROUND(avg_price, 6) AS avg FROM price_levels ORDER BY price_level";
    let trend = "SELECT CAST(window_start AS VARCHAR) AS day, SUM(products) AS n FROM category_trend GROUP BY 1";
    let mut answers = Vec::new();
    for (command, state) in [("run", "s-run"), ("batch", "s-batch")] {
        let state = tmp.path().join(state);
        let state = state.to_str().unwrap();
        let mut args = vec![command, "--source", &products, "--source", &categories, "--state", state];
        if command == "run" {
            args.extend(["--until-idle", "--max-rows", "1000", "--flight-addr", "127.0.0.1:0"]);
        }
        ok(&args, &repo);
        answers.push(ok(&["query", query, "--state", state, "--format", "csv"], &repo));
        let days = ok(&["query", trend, "--state", state, "--format", "csv"], &repo);
        assert!(days.starts_with("day,n\n2024-03-01T00:00:00") && days.lines().count() == 2, "{command}: {days}");
    }
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].lines().count() > 6, "header and the populated bands: {}", answers[0]);
}

#[test]
fn bad_input_gives_one_clear_error_and_a_failing_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let sql = pipeline_dir(tmp.path(), "CREATE VIEW v AS SELECT nope FROM nowhere;");
    let categories = format!("categories=file:{}", shared_data("amazon_categories.csv").display());
    let state = tmp.path().join("state").display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "--sql".into(),
                sql.display().to_string(),
                "--until-idle".into(),
                "--flight-addr".into(),
                "none".into(),
                "--state".into(),
                state.clone(),
            ],
            "pipeline.sql:1:",
        ),
        (vec!["run".into(), "--source".into(), "products".into(), "--state".into(), state.clone()], "expected NAME=URI"),
        (
            vec![
                "run".into(),
                "--source".into(),
                "products=file:/no/such.csv".into(),
                "--source".into(),
                categories.clone(),
                "--until-idle".into(),
                "--flight-addr".into(),
                "none".into(),
                "--state".into(),
                state.clone(),
            ],
            "/no/such.csv",
        ),
        (vec!["batch".into(), "--state".into(), tmp.path().join("empty").display().to_string()], "batch needs inputs"),
        (vec!["query".into(), "SELECT 1".into(), "--state".into(), tmp.path().join("none").display().to_string()], "no job state in"),
        (
            vec!["run".into(), "--source".into(), "product=file:/x.csv".into(), "--source".into(), categories, "--state".into(), state.clone()],
            "no table `product` is declared",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = trendflow(&args, &repo());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains("error:") && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// SIGKILL `trendflow run` at several moments while it replays a file, resume with other
/// micro-batch sizes: the views equal the batch result (the file source's seek, the
/// checkpoint and the store's flush order are all on this path).
#[test]
fn killed_runs_resume_to_exact_results() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    let data = tmp.path().join("data");
    ok(&["gen", "--days", "0", "--rows", "60000", "--seed", "4", "--out", data.to_str().unwrap()], &repo);
    let timed = with_timestamps(&data.join("products.csv"), tmp.path(), 30);
    let products = format!("products=file:{}", timed.display());
    let categories = format!("categories=file:{}", data.join("categories.csv").display());
    let state = tmp.path().join("state");
    let state = state.to_str().unwrap();
    let common = ["--source", &products, "--source", &categories, "--state", state, "--flight-addr", "none", "--checkpoint-interval-ms", "0"];
    let mut positions = vec![0];
    for max_rows in ["60", "90", "40"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trendflow"))
            .env("TRENDFLOW_HTTP_ADDR", "127.0.0.1:0")
            .args(["run", "--max-rows", max_rows])
            .args(common)
            .current_dir(&repo)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill once the job has checkpointed some progress of its own (however loaded the machine is).
        let before = *positions.last().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while checkpointed_position(Path::new(state)) < before + 1_000 {
            assert!(std::time::Instant::now() < deadline, "no progress past record {before} within 120 s");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        positions.push(checkpointed_position(Path::new(state)));
    }
    // Every kill hit the job mid-stream.
    assert!(positions.windows(2).all(|w| w[0] < w[1]) && positions[3] < 60_000, "{positions:?}");
    let last = ok(&[&["run", "--until-idle", "--max-rows", "2500"][..], &common[..]].concat(), &repo);
    assert!(last.contains("resumed from checkpoint"), "{last}");
    let batch_state = tmp.path().join("batch");
    let batch_state = batch_state.to_str().unwrap();
    ok(&["batch", "--source", &products, "--source", &categories, "--state", batch_state], &repo);
    for sql in [
        "SELECT category_id, products, best_sellers FROM category_distribution ORDER BY category_id",
        "SELECT price_level, products, ROUND(avg_price, 6) FROM price_levels ORDER BY price_level",
        "SELECT window_start, category_id, products FROM category_trend ORDER BY window_start, category_id",
        "SELECT category_id, bought_last_month FROM top_categories_by_demand ORDER BY category_id",
    ] {
        let streamed = ok(&["query", sql, "--state", state, "--format", "csv"], &repo);
        let batched = ok(&["query", sql, "--state", batch_state, "--format", "csv"], &repo);
        assert_eq!(streamed, batched, "{sql}");
    }
}

/// Records of `products` covered by the current checkpoint in `state`.
fn checkpointed_position(state: &Path) -> i64 {
    checkpoint_meta(state).and_then(|meta| meta["sources"]["products"]["0"].as_i64()).unwrap_or(0)
}
