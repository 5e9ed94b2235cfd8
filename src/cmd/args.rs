//! Groups of flags several commands share (flattened into their `Args` structs).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use trendflow_connectors::binding::SourceSettings;
use trendflow_connectors::mongo::MongoOptions;

/// Options every pipeline command shares.
#[derive(clap::Args, Clone)]
pub struct PipelineArgs {
    /// SQL files or directories of `*.sql` defining sources and views.
    #[arg(long = "sql", env = "TRENDFLOW_SQL", default_value = "sql", value_delimiter = ',')]
    pub sql: Vec<PathBuf>,
    /// Bind a declared table to an input: NAME=file:PATH (.csv, .json/.ndjson, .parquet) or, for streams, NAME=kafka://HOST:PORT/TOPIC. Repeatable.
    #[arg(long = "source", env = "TRENDFLOW_SOURCES", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Directory for checkpoints, the embedded result store and dead letters.
    #[arg(long, env = "TRENDFLOW_STATE", default_value = "trendflow-state")]
    pub state: PathBuf,
    /// Kafka bootstrap servers (HOST:PORT[,HOST:PORT]): streams without a --source
    /// binding read their LOCATION topic there.
    #[arg(long, env = "TRENDFLOW_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The job's name on Kafka: the consumer group it commits its progress to (for lag
    /// tools; positions themselves live in the checkpoint) and, with --kafka-sink, its
    /// transactional id (`<group>.sink`). Two jobs need two groups.
    #[arg(long, env = "TRENDFLOW_KAFKA_GROUP", default_value = "trendflow")]
    pub kafka_group: String,
}

impl PipelineArgs {
    pub fn source_settings(&self, bounded: bool) -> SourceSettings {
        SourceSettings {
            dead_letter_dir: self.state.join("dead_letters"),
            kafka_brokers: self.kafka_brokers.clone(),
            kafka_group: self.kafka_group.clone(),
            bounded,
        }
    }

    pub fn brokers(&self, command: &str) -> Result<&str> {
        self.kafka_brokers.as_deref().with_context(|| format!("{command} needs Kafka: pass --kafka-brokers HOST:PORT or set TRENDFLOW_KAFKA_BROKERS"))
    }
}

/// Options of the MongoDB sink and reader.
#[derive(clap::Args, Clone)]
pub struct MongoArgs {
    /// MongoDB connection string: `run` upserts the views there too; `serve` and `query`
    /// read the views from there.
    #[arg(long, env = "TRENDFLOW_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// Database of the view collections.
    #[arg(long, env = "TRENDFLOW_MONGODB_DATABASE", default_value = "trendflow")]
    pub mongodb_database: String,
    /// Write concern: `majority` or a number of nodes.
    #[arg(long, env = "TRENDFLOW_MONGODB_WRITE_CONCERN", default_value = "majority")]
    pub mongodb_write_concern: String,
    /// Write a view to another collection: VIEW=COLLECTION. Repeatable.
    #[arg(long = "mongodb-collection")]
    pub mongodb_collections: Vec<String>,
    /// Create a secondary index: VIEW=COLUMN[+COLUMN...]. Repeatable.
    #[arg(long = "mongodb-index")]
    pub mongodb_indexes: Vec<String>,
}

impl MongoArgs {
    pub fn options(&self) -> Result<Option<MongoOptions>> {
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
pub struct FlightArgs {
    /// Flight SQL listen address (`none` disables the server; port 0 picks a free port).
    #[arg(long, env = "TRENDFLOW_FLIGHT_ADDR", default_value = "127.0.0.1:50051")]
    pub flight_addr: String,
    /// Client authentication: `none`, `basic:USER:PASSWORD` (exchanged for an expiring bearer
    /// token in the handshake) or `token-file:PATH` (long-lived bearer tokens, one per line).
    #[arg(long, env = "TRENDFLOW_FLIGHT_AUTH", default_value = "none", hide_env_values = true)]
    pub auth: String,
    /// PEM certificate for TLS (with --tls-key).
    #[arg(long, env = "TRENDFLOW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "TRENDFLOW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Memory one query may use, in MiB.
    #[arg(long, env = "TRENDFLOW_QUERY_MEMORY_MB", default_value_t = 512)]
    pub query_memory_mb: usize,
    /// Longest a query may run, in seconds.
    #[arg(long, env = "TRENDFLOW_QUERY_TIMEOUT_S", default_value_t = 60)]
    pub query_timeout_s: u64,
    /// Queries running at once; more are refused until one ends.
    #[arg(long, env = "TRENDFLOW_MAX_QUERIES", default_value_t = 16)]
    pub max_queries: usize,
}
