//! `trendflow`: command-line wiring of the engine and connectors.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use indicatif::{ProgressBar, ProgressStyle};
use trendflow_connectors::binding::{Bindings, SourceSettings};
use trendflow_connectors::fan_out::FanOut;
use trendflow_connectors::ingest::{IngestOptions, IngestService};
use trendflow_connectors::kafka::{self, RecordProducer};
use trendflow_connectors::mongo::{self, MongoOptions, MongoSink, MongoTable};
use trendflow_connectors::serving::{serving_context, Streams};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::{batch_session_config, incremental_session_config, Catalog};
use trendflow_engine::checkpoint::CheckpointMeta;
use trendflow_engine::runtime::{Pipeline, RunOptions, Sink, StepReport};
use trendflow_engine::stream_table::StreamDecl;
use trendflow_engine::view::{Changeset, ViewInfo};
use trendflow_server::auth::AuthConfig;
use trendflow_server::service::QueryLimits;
use trendflow_server::status::{serve_status, JobStatus};
use trendflow_server::{RunningServer, ServeOptions};

#[derive(Parser)]
#[command(name = "trendflow", version, about = "Streaming SQL over Arrow and DataFusion: views kept up to date as records stream in")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every pipeline command shares.
#[derive(clap::Args, Clone)]
struct PipelineArgs {
    /// SQL files or directories of `*.sql` defining sources and views.
    #[arg(long = "sql", env = "TRENDFLOW_SQL", default_value = "sql", value_delimiter = ',')]
    sql: Vec<PathBuf>,
    /// Bind a declared table to an input: NAME=file:PATH (.csv, .json/.ndjson, .parquet) or, for streams, NAME=kafka://HOST:PORT/TOPIC. Repeatable.
    #[arg(long = "source", env = "TRENDFLOW_SOURCES", value_delimiter = ',')]
    sources: Vec<String>,
    /// Directory for checkpoints, the embedded result store and dead letters.
    #[arg(long, env = "TRENDFLOW_STATE", default_value = "trendflow-state")]
    state: PathBuf,
    /// Kafka bootstrap servers (HOST:PORT[,HOST:PORT]): streams without a --source
    /// binding read their LOCATION topic there.
    #[arg(long, env = "TRENDFLOW_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Consumer group the job commits its Kafka progress to (for lag tools; positions
    /// themselves live in the checkpoint).
    #[arg(long, env = "TRENDFLOW_KAFKA_GROUP", default_value = "trendflow")]
    kafka_group: String,
}

impl PipelineArgs {
    fn source_settings(&self, bounded: bool) -> SourceSettings {
        SourceSettings {
            dead_letter_dir: self.state.join("dead_letters"),
            kafka_brokers: self.kafka_brokers.clone(),
            kafka_group: self.kafka_group.clone(),
            bounded,
        }
    }

    fn brokers(&self, command: &str) -> Result<&str> {
        self.kafka_brokers.as_deref().with_context(|| format!("{command} needs Kafka: pass --kafka-brokers HOST:PORT or set TRENDFLOW_KAFKA_BROKERS"))
    }
}

/// Options of the MongoDB sink and reader.
#[derive(clap::Args, Clone)]
struct MongoArgs {
    /// MongoDB connection string: `run` upserts the views there too; `serve` and `query`
    /// read the views from there.
    #[arg(long, env = "TRENDFLOW_MONGODB_URI", hide_env_values = true)]
    mongodb_uri: Option<String>,
    /// Database of the view collections.
    #[arg(long, env = "TRENDFLOW_MONGODB_DATABASE", default_value = "trendflow")]
    mongodb_database: String,
    /// Write concern: `majority` or a number of nodes.
    #[arg(long, env = "TRENDFLOW_MONGODB_WRITE_CONCERN", default_value = "majority")]
    mongodb_write_concern: String,
    /// Write a view to another collection: VIEW=COLLECTION. Repeatable.
    #[arg(long = "mongodb-collection")]
    mongodb_collections: Vec<String>,
    /// Create a secondary index: VIEW=COLUMN[+COLUMN...]. Repeatable.
    #[arg(long = "mongodb-index")]
    mongodb_indexes: Vec<String>,
}

impl MongoArgs {
    fn options(&self) -> Result<Option<MongoOptions>> {
        let Some(uri) = &self.mongodb_uri else { return Ok(None) };
        let mut collections = HashMap::new();
        for mapping in &self.mongodb_collections {
            let (view, collection) =
                mapping.split_once('=').with_context(|| format!("--mongodb-collection `{mapping}`: expected VIEW=COLLECTION"))?;
            collections.insert(view.to_string(), collection.to_string());
        }
        let mut indexes: HashMap<String, Vec<Vec<String>>> = HashMap::new();
        for spec in &self.mongodb_indexes {
            let (view, columns) = spec.split_once('=').with_context(|| format!("--mongodb-index `{spec}`: expected VIEW=COLUMN[+COLUMN...]"))?;
            indexes.entry(view.to_string()).or_default().push(columns.split('+').map(str::to_string).collect());
        }
        Ok(Some(MongoOptions {
            uri: uri.clone(),
            database: self.mongodb_database.clone(),
            write_concern: self.mongodb_write_concern.clone(),
            collections,
            indexes,
            ..Default::default()
        }))
    }
}

/// Options of the Flight SQL server.
#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Flight SQL listen address (`none` disables the server; port 0 picks a free port).
    #[arg(long, env = "TRENDFLOW_FLIGHT_ADDR", default_value = "127.0.0.1:50051")]
    flight_addr: String,
    /// Client authentication: `none`, `basic:USER:PASSWORD` (exchanged for an expiring bearer
    /// token in the handshake) or `token-file:PATH` (long-lived bearer tokens, one per line).
    #[arg(long, env = "TRENDFLOW_FLIGHT_AUTH", default_value = "none", hide_env_values = true)]
    auth: String,
    /// PEM certificate for TLS (with --tls-key).
    #[arg(long, env = "TRENDFLOW_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "TRENDFLOW_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Memory one query may use, in MiB.
    #[arg(long, env = "TRENDFLOW_QUERY_MEMORY_MB", default_value_t = 512)]
    query_memory_mb: usize,
    /// Longest a query may run, in seconds.
    #[arg(long, env = "TRENDFLOW_QUERY_TIMEOUT_S", default_value_t = 60)]
    query_timeout_s: u64,
    /// Queries running at once; more are refused until one ends.
    #[arg(long, env = "TRENDFLOW_MAX_QUERIES", default_value_t = 16)]
    max_queries: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: keep every view up to date as records arrive.
    Run {
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
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        mongo: MongoArgs,
    },
    /// Serve the views of a job over Flight SQL without running it (reads its state directory).
    Serve {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        serve: ServeArgs,
        /// With --mongodb-uri, views are served from MongoDB instead of the state directory.
        #[command(flatten)]
        mongo: MongoArgs,
    },
    /// Compute every view once over files (backfill), with the same SQL.
    Batch {
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Run ad-hoc SQL over the current views and reference tables.
    Query {
        /// The SQL to run.
        sql_text: String,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// With --mongodb-uri, views are read from MongoDB instead of the state directory.
        #[command(flatten)]
        mongo: MongoArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// HTTP ingest API: POST /v1/topics/{topic}/records validates records against the
    /// stream declared on the topic and produces the valid ones to Kafka.
    Ingest {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Listen address.
        #[arg(long, env = "TRENDFLOW_INGEST_ADDR", default_value = "127.0.0.1:8081")]
        listen: String,
        /// Partitions of topics the API creates when they are missing.
        #[arg(long, env = "TRENDFLOW_KAFKA_PARTITIONS", default_value_t = 4)]
        partitions: i32,
        /// Largest request body, in bytes.
        #[arg(long, env = "TRENDFLOW_INGEST_MAX_BODY_BYTES", default_value_t = 16 << 20)]
        max_body_bytes: usize,
        /// Require `Authorization: Bearer TOKEN` with a token from this file (one per line).
        #[arg(long, env = "TRENDFLOW_INGEST_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Requests per second one client address may make (0: unlimited).
        #[arg(long, env = "TRENDFLOW_INGEST_RATE_LIMIT", default_value_t = 100.0)]
        rate_limit: f64,
    },
    /// Replay a file (CSV, NDJSON, Parquet) into a Kafka topic as records of a stream.
    Produce {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The file to replay.
        #[arg(long)]
        file: PathBuf,
        /// Topic to write (default: the stream's LOCATION).
        #[arg(long)]
        topic: Option<String>,
        /// Stream whose schema the records follow (default: the one declared on --topic,
        /// or the only stream).
        #[arg(long)]
        stream: Option<String>,
        /// Records per second (default: as fast as the brokers take them).
        #[arg(long)]
        rate: Option<f64>,
        /// Partitions of the topic when it has to be created.
        #[arg(long, env = "TRENDFLOW_KAFKA_PARTITIONS", default_value_t = 4)]
        partitions: i32,
    },
    /// Write products.csv and categories.csv shaped like the Amazon Products 2023 dataset.
    Gen {
        /// Number of products.
        #[arg(long, default_value_t = 1_426_337)]
        rows: u64,
        /// Seed; the same seed gives the same files.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output directory.
        #[arg(long, default_value = "data/generated")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,trendflow=info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `trendflow query … | head`: the reader left, which is no failure of ours.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already holds
/// (many errors print their source themselves).
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            pipeline,
            max_rows,
            max_delay_ms,
            checkpoint_interval_ms,
            checkpoint_max_deltas,
            until_idle,
            http_addr,
            gen_rows,
            serve,
            mongo,
        } => {
            if max_rows == 0 {
                bail!("--max-rows must be at least 1");
            }
            let options = RunOptions {
                max_rows,
                max_delay: Duration::from_millis(max_delay_ms),
                checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
                checkpoint_max_deltas,
                until_idle,
            };
            run(pipeline, options, gen_rows, serve, mongo, &http_addr).await
        }
        Command::Serve { pipeline, serve, mongo } => serve_only(pipeline, serve, mongo).await,
        Command::Batch { pipeline } => batch(pipeline).await,
        Command::Query { sql_text, pipeline, format, mongo } => query(&sql_text, pipeline, format, mongo).await,
        Command::Ingest { pipeline, listen, partitions, max_body_bytes, token_file, rate_limit } => {
            let tokens = match token_file {
                Some(path) => match AuthConfig::parse(&format!("token-file:{}", path.display()))? {
                    AuthConfig::Tokens(tokens) => tokens,
                    _ => unreachable!("a token-file spec parses to tokens"),
                },
                None => Vec::new(),
            };
            ingest(pipeline, &listen, partitions, IngestOptions { max_body_bytes, tokens, requests_per_second: rate_limit }).await
        }
        Command::Produce { pipeline, file, topic, stream, rate, partitions } => {
            produce(pipeline, file, topic, stream.as_deref(), rate, partitions).await
        }
        Command::Gen { rows, seed, out } => {
            let summary = trendflow_datagen::generate(&trendflow_datagen::GenOptions { rows, seed, out })?;
            println!("wrote {} products to {} and categories to {}", summary.rows, summary.products.display(), summary.categories.display());
            Ok(())
        }
    }
}

/// The bindings to use: the flags, else those saved by an earlier run, else (for `run`)
/// generated data.
fn resolve_bindings(args: &PipelineArgs) -> Result<Bindings> {
    let flags = Bindings::parse(&args.sources)?;
    if !flags.is_empty() {
        return Ok(flags.absolute());
    }
    Ok(Bindings::load(&args.state)?)
}

async fn load_catalog(args: &PipelineArgs, bindings: &Bindings, config: datafusion::prelude::SessionConfig) -> Result<Catalog> {
    Ok(Catalog::load(&args.sql, config, &bindings.files()).await?)
}

async fn run(args: PipelineArgs, options: RunOptions, gen_rows: u64, serve: ServeArgs, mongo: MongoArgs, http_addr: &str) -> Result<()> {
    // Cheap checks first: before generating data for a pipeline that cannot start.
    trendflow_engine::catalog::sql_files(&args.sql)?;
    check_listen(&serve.flight_addr, "--flight-addr")?;
    check_listen(http_addr, "--http-addr")?;
    let mut bindings = resolve_bindings(&args)?;
    if bindings.is_empty() && args.kafka_brokers.is_none() {
        bindings = embedded_defaults(&args.sql, &args.state, gen_rows)?;
    }
    let catalog = load_catalog(&args, &bindings, incremental_session_config()).await?;
    let sources = bindings.open_sources(&catalog, &args.source_settings(options.until_idle)).await?;
    bindings.save(&args.state)?;
    let mut mongo_sink = match mongo.options()? {
        Some(options) => Some(MongoSink::new(mongo::connect(&options).await?, options)),
        None => None,
    };
    let mut store = EmbeddedStore::new(args.state.join("store"));
    let mut pipeline = Pipeline::compile(catalog, args.state.clone()).await?;
    let views = pipeline.view_infos();
    let _server = start_server(&serve, serving_context(pipeline.catalog(), &views, Streams::Recent, |view| store.live_table(view)).await?).await?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutting down: finishing the current micro-batch and checkpointing");
            let _ = stop.send(true);
        }
    });
    let status = Arc::new(JobStatus::new(args.state.join("checkpoints").join("CURRENT"), Box::new(store.view_sizes())));
    if let Some(mongo_sink) = &mongo_sink {
        status.watch(mongo_sink.health());
    }
    if http_addr != "none" {
        let addr = serve_status(http_addr, status.clone()).await?;
        eprintln!("status endpoint on http://{addr} (/healthz /readyz /metrics /status)");
    }
    let progress = progress_bar();
    status.set_ready(true);
    let mut on_step = |report: &StepReport| {
        status.record(report);
        progress.inc(report.rows);
        progress.set_message(format!("batch {} · {} rejected", report.batch_id, report.rejected));
        tracing::debug!(batch = report.batch_id, rows = report.rows, ms = report.elapsed.as_millis() as u64, "micro-batch");
    };
    let mut sinks: Vec<&mut (dyn Sink + '_)> = vec![&mut store];
    if let Some(mongo_sink) = mongo_sink.as_mut() {
        sinks.push(mongo_sink);
    }
    let summary = pipeline.run(sources, &mut FanOut::new(sinks), &options, shutdown, &mut on_step).await;
    status.set_ready(false);
    let summary = summary?;
    progress.finish_and_clear();
    let rate = summary.rows as f64 / summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "processed {} records in {} micro-batches ({:.0} records/s){}, {} rejected (see {})",
        summary.rows,
        summary.batches,
        rate,
        if summary.resumed { ", resumed from checkpoint" } else { "" },
        summary.rejected,
        args.state.join("dead_letters").display()
    );
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

/// Starts the Flight SQL server unless `--flight-addr none`.
async fn start_server(args: &ServeArgs, ctx: datafusion::prelude::SessionContext) -> Result<Option<RunningServer>> {
    if args.flight_addr == "none" {
        return Ok(None);
    }
    let options = ServeOptions {
        addr: args.flight_addr.clone(),
        auth: AuthConfig::parse(&args.auth)?,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        limits: QueryLimits {
            memory_bytes: Some(args.query_memory_mb << 20),
            timeout: Duration::from_secs(args.query_timeout_s),
            max_concurrent: args.max_queries,
            ..Default::default()
        },
        ..Default::default()
    };
    let scheme = if options.tls.is_some() { "grpc+tls" } else { "grpc" };
    let server = trendflow_server::serve(ctx, options).await?;
    eprintln!("Flight SQL listening on {scheme}://{}", server.local_addr());
    Ok(Some(server))
}

/// The catalog of a job that runs elsewhere: views from MongoDB when configured,
/// else as persisted in the state directory.
async fn stored_views_context(args: &PipelineArgs, mongo: &MongoArgs) -> Result<datafusion::prelude::SessionContext> {
    if args.sources.is_empty() && !args.state.exists() {
        bail!("no job state in {}: run `trendflow run --state {}` first, or pass --source bindings", args.state.display(), args.state.display());
    }
    let bindings = resolve_bindings(args)?;
    let catalog = load_catalog(args, &bindings, batch_session_config()).await?;
    let views = catalog.view_infos().await?;
    Ok(match mongo.options()? {
        Some(options) => {
            let database = mongo::connect(&options).await?;
            serving_context(&catalog, &views, Streams::Hidden, |view| {
                Arc::new(MongoTable::new(database.clone(), options.collection_of(&view.name), view)) as _
            })
            .await?
        }
        None => {
            let store_dir = args.state.join("store");
            serving_context(&catalog, &views, Streams::Hidden, |view| EmbeddedStore::persisted_table(&store_dir, view)).await?
        }
    })
}

async fn serve_only(args: PipelineArgs, serve: ServeArgs, mongo: MongoArgs) -> Result<()> {
    let ctx = stored_views_context(&args, &mongo).await?;
    let Some(server) = start_server(&serve, ctx).await? else { bail!("serve needs a --flight-addr") };
    tokio::select! {
        result = server.wait() => Ok(result?),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Generated data for a first run with no flags, written once into the state directory,
/// for the tables of the shipped pipeline (`products`, `categories`) that the SQL declares.
fn embedded_defaults(sql: &[PathBuf], state: &Path, rows: u64) -> Result<Bindings> {
    let declared = trendflow_engine::catalog::declared_tables(sql)?;
    let mut bindings = Bindings::default();
    if !declared.iter().any(|t| t == "products") {
        return Ok(bindings);
    }
    let dir = state.join("generated");
    if !dir.join("products.csv").exists() {
        eprintln!("no --source given: generating {rows} products into {} (embedded defaults)", dir.display());
        trendflow_datagen::generate(&trendflow_datagen::GenOptions { rows, seed: 42, out: dir.clone() })?;
    }
    for table in declared.iter().filter(|t| matches!(t.as_str(), "products" | "categories")) {
        bindings.bind_file(table, &dir.join(format!("{table}.csv")));
    }
    Ok(bindings.absolute())
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {human_pos} records ({per_sec}) {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn print_views(views: &[ViewInfo], rows: impl Fn(&str) -> Result<Option<RecordBatch>>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for view in views {
        let Some(batch) = rows(&view.name)? else { continue };
        writeln!(out, "\n{} ({} rows){}", view.name, batch.num_rows(), if batch.num_rows() > 10 { ", first 10:" } else { ":" })?;
        writeln!(out, "{}", pretty_format_batches(&[batch.slice(0, batch.num_rows().min(10))])?)?;
    }
    Ok(())
}

async fn batch(args: PipelineArgs) -> Result<()> {
    let bindings = resolve_bindings(&args)?;
    if bindings.is_empty() && args.kafka_brokers.is_none() {
        bail!("batch needs inputs: pass --source NAME=file:PATH for every stream, or --kafka-brokers to read the topics");
    }
    let catalog = load_catalog(&args, &bindings, batch_session_config()).await?;
    let (tables, rejected) = bindings.read_streams(&catalog, &args.source_settings(true)).await?;
    catalog.replace_streams(tables).await?;
    bindings.save(&args.state)?;
    // The batch result replaces the store; a later `run` must not resume a stale checkpoint on top of it.
    let store_dir = args.state.join("store");
    for stale in [&store_dir, &args.state.join("checkpoints")] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).with_context(|| format!("clearing {}", stale.display()))?;
        }
    }
    let mut store = EmbeddedStore::new(store_dir);
    let infos = catalog.view_infos().await?;
    store.open(&infos).await?;
    for info in &infos {
        let df = catalog.session().table(info.name.as_str()).await?;
        let upserts = datafusion::arrow::compute::concat_batches(&info.schema, &df.collect().await?)?;
        let deletes = RecordBatch::new_empty(info.key_schema());
        store.apply(info, &Changeset { upserts, deletes }).await?;
    }
    store.flush(&CheckpointMeta::default()).await?;
    println!("batch: computed {} views, {rejected} records rejected", infos.len());
    print_views(&infos, |name| Ok(store.rows(name).transpose()?))
}

async fn ingest(args: PipelineArgs, listen: &str, partitions: i32, options: IngestOptions) -> Result<()> {
    let brokers = args.brokers("ingest")?.to_string();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let streams = Catalog::load_streams(&args.sql).await?;
    for stream in &streams {
        kafka::ensure_topic(&brokers, &stream.location, partitions).await?;
    }
    let service = IngestService::new(&streams, RecordProducer::new(&brokers)?, options).await?;
    let topics: Vec<&str> = service.topics().collect();
    eprintln!("ingest API listening on http://{} (POST /v1/topics/{{topic}}/records; topics: {})", listener.local_addr()?, topics.join(", "));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let app = Arc::new(service).router().into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn produce(args: PipelineArgs, file: PathBuf, topic: Option<String>, stream: Option<&str>, rate: Option<f64>, partitions: i32) -> Result<()> {
    let brokers = args.brokers("produce")?.to_string();
    if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be a positive number of records per second");
    }
    let streams = Catalog::load_streams(&args.sql).await?;
    let stream = pick_stream(&streams, stream, topic.as_deref())?;
    let topic = topic.unwrap_or_else(|| stream.location.clone());
    kafka::ensure_topic(&brokers, &topic, partitions).await?;
    let producer = RecordProducer::new(&brokers)?;
    let progress = progress_bar();
    let dead_letters = args.state.join("dead_letters");
    let mut on_progress = |n: u64| progress.set_position(n);
    let summary = kafka::replay_file(stream, file.clone(), &dead_letters, &producer, &topic, rate, &mut on_progress).await?;
    progress.finish_and_clear();
    let secs = summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "produced {} records from {} to topic `{topic}` in {secs:.2} s ({:.0} records/s), {} rejected{}",
        summary.records,
        file.display(),
        summary.records as f64 / secs,
        summary.rejected,
        if summary.rejected > 0 { format!(" (see {})", dead_letters.display()) } else { String::new() }
    );
    Ok(())
}

/// The stream records are for: named, else declared on `topic`, else the only one.
fn pick_stream<'a>(streams: &'a [StreamDecl], name: Option<&str>, topic: Option<&str>) -> Result<&'a StreamDecl> {
    let names = || streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(name) = name {
        return streams.iter().find(|s| s.name == name).with_context(|| format!("no stream `{name}` is declared (streams: {})", names()));
    }
    if let Some(found) = topic.and_then(|t| streams.iter().find(|s| s.location == t)) {
        return Ok(found);
    }
    match streams {
        [only] => Ok(only),
        _ => bail!("several streams are declared ({}): pick one with --stream", names()),
    }
}

async fn query(sql: &str, args: PipelineArgs, format: Format, mongo: MongoArgs) -> Result<()> {
    let ctx = stored_views_context(&args, &mongo).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => writeln!(out, "{}", pretty_format_batches(&batches)?)?,
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            batches.iter().try_for_each(|b| writer.write(b))?;
        }
        Format::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
            batches.iter().try_for_each(|b| writer.write(b))?;
            writer.finish()?;
        }
    }
    Ok(())
}
