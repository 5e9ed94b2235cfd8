//! The connectors' error type.

use std::path::PathBuf;

/// Errors of sources, sinks and record decoding.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A file could not be opened, read or written.
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// A file's content is malformed beyond single records (bad CSV structure, bad Parquet).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// A source or sink address is malformed (`--source name=file:PATH`).
    #[error("binding `{binding}`: {message}")]
    Binding { binding: String, message: String },
    /// Kafka brokers could not be reached, or refused a request.
    #[error("Kafka at {brokers}: {message}")]
    Kafka { brokers: String, message: String },
    /// A schema registry could not be reached, or refused a request.
    #[error("schema registry at {url}: {message}")]
    SchemaRegistry { url: String, message: String },
    /// The embedded result store could not read or write a view's rows.
    #[error("embedded store: {0}")]
    Store(#[source] Box<ConnectorError>),
    /// MongoDB could not be reached or refused a request; `context` says which and where
    /// (the URI without its password).
    #[error("{context}: {cause}")]
    Mongo {
        context: String,
        #[source]
        cause: mongodb::error::Error,
    },
    /// Arrow failed while converting records.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

impl ConnectorError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Io { path: path.to_path_buf(), message: e.to_string() }
    }
}

/// The URI without its password, for messages and logs.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &uri[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_string(),
    }
}

/// Result alias used across the connectors.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
