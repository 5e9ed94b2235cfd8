//! The server's error type.

/// Errors starting or configuring the Flight SQL server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    /// An option is malformed (e.g. `--auth`).
    #[error("{option}: {message}")]
    Config { option: String, message: String },
    /// TLS material could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC transport failed while serving.
    #[error("Flight SQL transport: {0}")]
    Transport(String),
}

/// Result alias of the server crate.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
