//! `trendflow ingest`: the HTTP ingest API in front of Kafka.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use trendflow_connectors::http::{IngestOptions, IngestService};
use trendflow_connectors::kafka::{self, RecordProducer};
use trendflow_engine::catalog::Catalog;
use trendflow_server::auth::AuthConfig;

use super::args::PipelineArgs;
use super::common::ctrl_c;

/// The flags of `trendflow ingest` (its help text is the doc comment of `Command::Ingest`).
#[derive(clap::Args)]
pub struct IngestArgs {
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
}

impl IngestArgs {
    fn ingest_options(&self) -> Result<IngestOptions> {
        let tokens = match &self.token_file {
            Some(path) => match AuthConfig::parse(&format!("token-file:{}", path.display()))? {
                AuthConfig::Tokens(tokens) => tokens,
                _ => unreachable!("a token-file spec parses to tokens"),
            },
            None => Vec::new(),
        };
        Ok(IngestOptions { max_body_bytes: self.max_body_bytes, tokens, requests_per_second: self.rate_limit })
    }
}

pub async fn ingest(args: IngestArgs) -> Result<()> {
    let options = args.ingest_options()?;
    let brokers = args.pipeline.brokers("ingest")?;
    let listen = &args.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let streams = Catalog::load_streams(&args.pipeline.sql).await?;
    for stream in &streams {
        kafka::ensure_topic(brokers, &stream.location, args.partitions).await?;
    }
    let service = IngestService::new(&streams, RecordProducer::new(brokers)?, options).await?;
    let topics: Vec<&str> = service.topics().collect();
    eprintln!(
        "ingest API listening on http://{} (POST /v1/topics/{{topic}}/records, DELETE /v1/topics/{{topic}}/records/{{key}}; topics: {})",
        listener.local_addr()?,
        topics.join(", ")
    );
    let app = Arc::new(service).router().into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(ctrl_c()).await?;
    Ok(())
}
