//! # trendflow-server
//!
//! Arrow Flight SQL over the tables of a DataFusion session (in trendflow:
//! views with their current results, and reference tables). Read-only;
//! optional basic-auth handshake with bearer tokens; optional TLS; per-query
//! memory, time and concurrency limits.
//!
//! ```no_run
//! # async fn example() -> trendflow_server::Result<()> {
//! use datafusion::prelude::SessionContext;
//! use trendflow_server::{auth::AuthConfig, serve, ServeOptions};
//!
//! let ctx = SessionContext::new();
//! let options = ServeOptions { addr: "127.0.0.1:50051".into(), ..Default::default() };
//! let server = serve(ctx, options).await?;
//! println!("Flight SQL on {}", server.local_addr());
//! server.wait().await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod error;
pub mod service;
pub mod session;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::prelude::SessionContext;
use tokio::task::JoinHandle;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use error::{Result, ServerError};

use crate::auth::{AuthConfig, Authenticator};
use crate::service::{QueryLimits, TrendflowFlightSql};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Listen address; port 0 picks a free port (see [`RunningServer::local_addr`]).
    pub addr: String,
    /// Authentication.
    pub auth: AuthConfig,
    /// Lifetime of bearer tokens.
    pub token_ttl: Duration,
    /// PEM certificate and key for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Per-query bounds.
    pub limits: QueryLimits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:50051".into(),
            auth: AuthConfig::None,
            token_ttl: Duration::from_secs(3600),
            tls: None,
            limits: QueryLimits::default(),
        }
    }
}

/// A server running in the background.
pub struct RunningServer {
    addr: SocketAddr,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the server stops (it stops only on a transport error).
    pub async fn wait(self) -> Result<()> {
        self.task.await.map_err(|e| ServerError::Transport(e.to_string()))?
    }
}

/// Binds `options.addr` and serves Flight SQL over the tables of `ctx` in the background.
pub async fn serve(ctx: SessionContext, options: ServeOptions) -> Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(&options.addr).await.map_err(|e| ServerError::Bind {
        addr: options.addr.clone(),
        message: format!("{e}; pass --flight-addr 127.0.0.1:0 for any free port, or --flight-addr none"),
    })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Bind { addr: options.addr.clone(), message: e.to_string() })?;
    let service = TrendflowFlightSql::new(ctx, Authenticator::new(options.auth, options.token_ttl), options.limits);
    let mut builder = Server::builder();
    if let Some((cert, key)) = &options.tls {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| ServerError::Tls(format!("{}: {e}", p.display())));
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity)).map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    let incoming = tokio_stream_listener(listener);
    let router = builder.add_service(FlightServiceServer::new(service));
    let task = tokio::spawn(async move { router.serve_with_incoming(incoming).await.map_err(|e| ServerError::Transport(e.to_string())) });
    Ok(RunningServer { addr, task })
}

/// Accepted connections as the stream tonic serves from.
fn tokio_stream_listener(listener: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
