//! `trendflow run`: keeps every view up to date as records arrive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use trendflow_connectors::binding::Bindings;
use trendflow_connectors::kafka::{KafkaSink, KafkaSinkOptions};
use trendflow_connectors::mongo::{self, MongoSink};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::declared_tables;
use trendflow_engine::contract::Sink;
use trendflow_engine::fan_out::FanOut;
use trendflow_engine::runtime::{Pipeline, RunOptions, RunSummary, StepReport};
use trendflow_engine::serving::{serving_context, Streams};
use trendflow_engine::session::incremental_session_config;
use trendflow_engine::sql_file::sql_files;
use trendflow_server::status::{serve_status, JobStatus};

use super::args::{FlightArgs, MongoArgs, PipelineArgs};
use super::common::{ctrl_c, load_catalog, print_views, progress_bar, resolve_bindings, start_server, LOG_TARGET};

/// The flags of `trendflow run` (its help text is the doc comment of `Command::Run`).
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Most records per micro-batch and source.
    #[arg(long, env = "TRENDFLOW_MAX_ROWS", default_value_t = 50_000)]
    max_rows: usize,
    /// Longest wait for a micro-batch to fill, in milliseconds.
    #[arg(long, env = "TRENDFLOW_MAX_DELAY_MS", default_value_t = 200)]
    max_delay_ms: u64,
    /// Least time between checkpoints, in milliseconds (0: after every micro-batch).
    #[arg(long, env = "TRENDFLOW_CHECKPOINT_INTERVAL_MS", default_value_t = 5_000)]
    checkpoint_interval_ms: u64,
    /// Most checkpoints holding only the groups changed since the previous one between
    /// two full checkpoints (also full once those changes outgrow the full state).
    #[arg(long, env = "TRENDFLOW_CHECKPOINT_MAX_DELTAS", default_value_t = trendflow_engine::checkpoint::MAX_DELTAS)]
    checkpoint_max_deltas: usize,
    /// Exit once every source is drained instead of waiting for more records (files at
    /// their end, topics at the end offsets they had when reading started).
    #[arg(long)]
    until_idle: bool,
    /// HTTP status endpoint (/healthz, /readyz, /metrics, /status); `none` disables it.
    #[arg(long, env = "TRENDFLOW_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// Rows of generated data when no --source is given (embedded defaults).
    #[arg(long, default_value_t = 200_000)]
    gen_rows: u64,
    /// Days of event time the generated data spans (embedded defaults; 0: no `date` column).
    #[arg(long, default_value_t = 30)]
    gen_days: u32,
    #[command(flatten)]
    flight: FlightArgs,
    #[command(flatten)]
    mongo: MongoArgs,
    /// Also write a view to a Kafka topic as its changelog: VIEW=TOPIC (keyed upserts and
    /// tombstones, one transaction per checkpoint; readable as an `upsert` stream). Needs
    /// --kafka-brokers. Repeatable.
    #[arg(long = "kafka-sink", env = "TRENDFLOW_KAFKA_SINKS", value_delimiter = ',')]
    kafka_sinks: Vec<String>,
    /// Partitions of the compacted topics --kafka-sink creates (existing ones are kept).
    #[arg(long, env = "TRENDFLOW_KAFKA_SINK_PARTITIONS", default_value_t = 1)]
    kafka_sink_partitions: i32,
}

impl RunArgs {
    fn run_options(&self) -> Result<RunOptions> {
        if self.max_rows == 0 {
            bail!("--max-rows must be at least 1");
        }
        Ok(RunOptions {
            max_rows: self.max_rows,
            max_delay: Duration::from_millis(self.max_delay_ms),
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms),
            checkpoint_max_deltas: self.checkpoint_max_deltas,
            until_idle: self.until_idle,
        })
    }

    /// The Kafka sink's settings, when --kafka-sink is given: the transactional id is
    /// the job's consumer group's, so a restart of the job fences the run it replaces.
    fn kafka_sink_options(&self) -> Result<Option<KafkaSinkOptions>> {
        if self.kafka_sinks.is_empty() {
            return Ok(None);
        }
        let brokers = self.pipeline.brokers("--kafka-sink")?;
        if self.kafka_sink_partitions < 1 {
            bail!("--kafka-sink-partitions must be at least 1");
        }
        let mut topics = std::collections::BTreeMap::new();
        for mapping in &self.kafka_sinks {
            let (view, topic) = mapping
                .split_once('=')
                .filter(|(v, t)| !v.is_empty() && !t.is_empty())
                .with_context(|| format!("--kafka-sink `{mapping}`: expected VIEW=TOPIC"))?;
            if let Some(other) = topics.insert(view.to_string(), topic.to_string()) {
                bail!("--kafka-sink: view `{view}` is given twice (to `{other}` and `{topic}`)");
            }
        }
        Ok(Some(KafkaSinkOptions {
            brokers: brokers.to_string(),
            topics,
            partitions: self.kafka_sink_partitions,
            transactional_id: format!("{}.sink", self.pipeline.kafka_group),
        }))
    }
}

/// Refuses a job that would read a topic it writes (its views would feed themselves).
fn check_no_loop(sink: &KafkaSinkOptions, sources: &[Box<dyn trendflow_engine::contract::Source>]) -> Result<()> {
    for source in sources {
        if let Some((view, topic)) = sink.topics.iter().find(|(_, topic)| source.identity() == format!("kafka:{topic}")) {
            bail!("--kafka-sink {view}={topic}: stream `{}` reads topic `{topic}`; a job must not read what it writes", source.stream());
        }
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> Result<()> {
    let options = args.run_options()?;
    let state = &args.pipeline.state;
    // Cheap checks first: before generating data for a pipeline that cannot start.
    sql_files(&args.pipeline.sql)?;
    check_listen(&args.flight.flight_addr, "--flight-addr")?;
    check_listen(&args.http_addr, "--http-addr")?;
    let kafka_sink_options = args.kafka_sink_options()?;
    let bindings = bindings_or_embedded_defaults(&args.pipeline, args.gen_rows, args.gen_days)?;
    let catalog = load_catalog(&args.pipeline, &bindings, incremental_session_config()).await?;
    let sources = bindings.open_sources(&catalog, &args.pipeline.source_settings(options.until_idle)).await?;
    bindings.save(state)?;
    if let Some(options) = &kafka_sink_options {
        check_no_loop(options, &sources)?;
    }
    let mut mongo_sink = connect_mongo_sink(&args.mongo).await?;
    let mut kafka_sink = match kafka_sink_options {
        Some(options) => Some(KafkaSink::connect(options).await?),
        None => None,
    };
    let mut store = EmbeddedStore::new(state.join("store"));
    let mut pipeline = Pipeline::compile(catalog, state.clone()).await?;
    let live_views = serving_context(pipeline.catalog(), &pipeline.view_infos(), Streams::Recent, |view| store.live_table(view)).await?;
    let _server = start_server(&args.flight, live_views).await?;
    let shutdown = stop_on_ctrl_c();
    let status = start_status(state, &args.http_addr, &store, mongo_sink.as_ref()).await?;
    let progress = progress_bar();
    status.set_ready(true);
    let mut on_step = |report: &StepReport| {
        status.record(report);
        progress.inc(report.rows);
        progress.set_message(format!("batch {} · {} rejected", report.batch_id, report.rejected));
        tracing::debug!(target: LOG_TARGET, batch = report.batch_id, rows = report.rows, ms = report.elapsed.as_millis() as u64, "micro-batch");
    };
    let mut sinks: Vec<&mut (dyn Sink + '_)> = vec![&mut store];
    if let Some(mongo_sink) = mongo_sink.as_mut() {
        sinks.push(mongo_sink);
    }
    if let Some(kafka_sink) = kafka_sink.as_mut() {
        sinks.push(kafka_sink);
    }
    let summary = pipeline.run(sources, &mut FanOut::new(sinks), &options, shutdown, &mut on_step).await;
    status.set_ready(false);
    let summary = summary?;
    progress.finish_and_clear();
    print_summary(&summary, state);
    if let Some(kafka_sink) = &kafka_sink {
        println!("committed {} view changes to Kafka ({})", kafka_sink.written(), kafka_sink.describe());
    }
    print_views(&pipeline.view_infos(), |name| Ok(store.rows(name).transpose()?))
}

/// Fails early, before any data is generated, when `addr` (given by `flag`) is taken.
fn check_listen(addr: &str, flag: &str) -> Result<()> {
    if addr == "none" {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}; pass {flag} 127.0.0.1:0 for any free port, or {flag} none"))
}

/// The bindings to use; with none and no Kafka brokers, the embedded defaults.
fn bindings_or_embedded_defaults(args: &PipelineArgs, gen_rows: u64, gen_days: u32) -> Result<Bindings> {
    let bindings = resolve_bindings(args)?;
    if bindings.is_empty() && args.kafka_brokers.is_none() {
        return embedded_defaults(&args.sql, &args.state, gen_rows, gen_days);
    }
    Ok(bindings)
}

/// Generated data for a first run with no flags, written once into the state directory,
/// for the tables of the shipped pipeline (`products`, `categories`) that the SQL declares.
fn embedded_defaults(sql: &[PathBuf], state: &Path, rows: u64, days: u32) -> Result<Bindings> {
    let declared = declared_tables(sql)?;
    let mut bindings = Bindings::default();
    if !declared.iter().any(|t| t == "products") {
        return Ok(bindings);
    }
    let dir = state.join("generated");
    if !dir.join("products.csv").exists() {
        eprintln!("no --source given: generating {rows} products into {} (embedded defaults)", dir.display());
        trendflow_datagen::generate(&trendflow_datagen::GenOptions { rows, seed: 42, days, out: dir.clone() })?;
    }
    for table in declared.iter().filter(|t| matches!(t.as_str(), "products" | "categories")) {
        bindings.bind_file(table, &dir.join(format!("{table}.csv")));
    }
    Ok(bindings.absolute())
}

/// The MongoDB sink, when `--mongodb-uri` is given.
async fn connect_mongo_sink(args: &MongoArgs) -> Result<Option<MongoSink>> {
    Ok(match args.options()? {
        Some(options) => Some(MongoSink::new(mongo::connect(&options).await?, options)),
        None => None,
    })
}

/// The signal the pipeline stops on: it finishes the current micro-batch and checkpoints.
fn stop_on_ctrl_c() -> watch::Receiver<bool> {
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        ctrl_c().await;
        tracing::info!(target: LOG_TARGET, "shutting down: finishing the current micro-batch and checkpointing");
        let _ = stop.send(true);
    });
    shutdown
}

/// The job's status, served on `http_addr` unless it is `none`.
async fn start_status(state: &Path, http_addr: &str, store: &EmbeddedStore, mongo_sink: Option<&MongoSink>) -> Result<Arc<JobStatus>> {
    let status = Arc::new(JobStatus::new(state.join("checkpoints").join("CURRENT"), Box::new(store.view_sizes())));
    if let Some(mongo_sink) = mongo_sink {
        status.watch(mongo_sink.health());
    }
    if http_addr != "none" {
        let addr = serve_status(http_addr, status.clone()).await?;
        eprintln!("status endpoint on http://{addr} (/healthz /readyz /metrics /status)");
    }
    Ok(status)
}

fn print_summary(summary: &RunSummary, state: &Path) {
    let rate = summary.rows as f64 / summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "processed {} records in {} micro-batches ({:.0} records/s){}, {} rejected, {} late (see {})",
        summary.rows,
        summary.batches,
        rate,
        if summary.resumed { ", resumed from checkpoint" } else { "" },
        summary.rejected,
        summary.late,
        state.join("dead_letters").display()
    );
    let stages: Vec<String> = summary.stages.named().iter().map(|(stage, time)| format!("{stage} {:.2} s", time.as_secs_f64())).collect();
    tracing::info!(target: LOG_TARGET, "time by stage: {}", stages.join(", "));
}
