//! `trendflow`: command-line wiring of the engine and connectors. Every command lives
//! in its own module under `src/cmd/`; this file parses, dispatches and reports errors.

// A command's results are its standard output (the libraries never print).
#![allow(clippy::print_stdout)]

mod cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trendflow", version, about = "Streaming SQL over Arrow and DataFusion: views kept up to date as records stream in")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: keep every view up to date as records arrive.
    Run(cmd::run::RunArgs),
    /// Serve the views of a job over Flight SQL without running it (reads its state directory).
    Serve(cmd::serve::ServeArgs),
    /// Compute every view once over files (backfill), with the same SQL.
    Batch(cmd::batch::BatchArgs),
    /// Run ad-hoc SQL over the current views and reference tables.
    Query(cmd::query::QueryArgs),
    /// HTTP ingest API: POST /v1/topics/{topic}/records validates records against the
    /// stream declared on the topic and produces the valid ones to Kafka;
    /// DELETE /v1/topics/{topic}/records/{key} deletes a key from a changelog stream.
    Ingest(cmd::ingest::IngestArgs),
    /// Replay a file (CSV, NDJSON, Parquet) into a Kafka topic as records of a stream.
    Produce(cmd::produce::ProduceArgs),
    /// Write products.csv and categories.csv shaped like the Amazon Products 2023 dataset.
    Gen(cmd::gen::GenArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,trendflow=info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // `trendflow query … | head`: the reader left, which is no failure of ours.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => cmd::run::run(args).await,
        Command::Serve(args) => cmd::serve::serve(args).await,
        Command::Batch(args) => cmd::batch::batch(args).await,
        Command::Query(args) => cmd::query::query(args).await,
        Command::Ingest(args) => cmd::ingest::ingest(args).await,
        Command::Produce(args) => cmd::produce::produce(args).await,
        Command::Gen(args) => cmd::gen::gen(args),
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
