//! Steps several commands share: finding the bindings and the catalog, serving views,
//! printing them, showing progress and waiting for Ctrl-C.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};
use indicatif::{ProgressBar, ProgressStyle};
use trendflow_connectors::binding::Bindings;
use trendflow_connectors::mongo::{self, MongoTable};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::ViewInfo;
use trendflow_engine::serving::{serving_context, Streams};
use trendflow_engine::session::batch_session_config;
use trendflow_server::auth::AuthConfig;
use trendflow_server::service::QueryLimits;
use trendflow_server::{RunningServer, ServeOptions};

use super::args::{FlightArgs, MongoArgs, PipelineArgs};

/// The target of the commands' log lines: the binary's, as before the commands had
/// modules of their own, so `RUST_LOG` filters and log readers see the same lines.
pub const LOG_TARGET: &str = "trendflow";

/// The bindings to use: the flags, else those saved by an earlier run, else (for `run`)
/// generated data.
pub fn resolve_bindings(args: &PipelineArgs) -> Result<Bindings> {
    let flags = Bindings::parse(&args.sources)?;
    if !flags.is_empty() {
        return Ok(flags.absolute());
    }
    Ok(Bindings::load(&args.state)?)
}

pub async fn load_catalog(args: &PipelineArgs, bindings: &Bindings, config: SessionConfig) -> Result<Catalog> {
    Ok(Catalog::load(&args.sql, config, &bindings.files()).await?)
}

/// Starts the Flight SQL server unless `--flight-addr none`.
pub async fn start_server(args: &FlightArgs, ctx: SessionContext) -> Result<Option<RunningServer>> {
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
pub async fn stored_views_context(args: &PipelineArgs, mongo: &MongoArgs) -> Result<SessionContext> {
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

/// Prints the first rows of every view that `rows` has rows for.
pub fn print_views(views: &[ViewInfo], rows: impl Fn(&str) -> Result<Option<RecordBatch>>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for view in views {
        let Some(batch) = rows(&view.name)? else { continue };
        writeln!(out, "\n{} ({} rows){}", view.name, batch.num_rows(), if batch.num_rows() > 10 { ", first 10:" } else { ":" })?;
        writeln!(out, "{}", pretty_format_batches(&[batch.slice(0, batch.num_rows().min(10))])?)?;
    }
    Ok(())
}

/// A spinner counting records on a terminal; hidden when stderr is not one (logs, tests).
pub fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {human_pos} records ({per_sec}) {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Resolves when Ctrl-C (SIGINT) arrives: how every long-running command learns to stop.
/// Should listening for it fail, it never resolves (the command then runs until it ends
/// by itself or is killed) rather than stopping a job nobody asked to stop.
pub async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(target: LOG_TARGET, "cannot listen for Ctrl-C: {e}");
        std::future::pending::<()>().await;
    }
}
