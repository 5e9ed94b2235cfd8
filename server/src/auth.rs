//! Optional authentication: a basic-auth handshake exchanged for an expiring bearer token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::Rng;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::error::{Result, ServerError};

/// How clients prove who they are.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthConfig {
    /// No authentication (the default on loopback).
    None,
    /// Basic credentials exchanged for a bearer token in the handshake.
    Basic { user: String, password: String },
    /// Long-lived bearer tokens, one per line of a file (`#` starts a comment).
    Tokens(Vec<String>),
}

impl AuthConfig {
    /// Parses `--auth basic:USER:PASSWORD`, `--auth token-file:PATH` or `none`.
    ///
    /// ```
    /// use trendflow_server::auth::AuthConfig;
    /// assert!(matches!(AuthConfig::parse("basic:ann:secret").unwrap(), AuthConfig::Basic { .. }));
    /// assert!(AuthConfig::parse("basic:ann").is_err());
    /// assert!(AuthConfig::parse("token-file:/no/such/file").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<Self> {
        if spec == "none" {
            return Ok(Self::None);
        }
        let error = |message: &str| ServerError::Config { option: "--auth".into(), message: message.into() };
        if let Some(path) = spec.strip_prefix("token-file:") {
            let text = std::fs::read_to_string(path).map_err(|e| error(&format!("token file {path}: {e}")))?;
            let tokens: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
            if tokens.is_empty() {
                return Err(error(&format!("token file {path} holds no token")));
            }
            return Ok(Self::Tokens(tokens));
        }
        let rest = spec.strip_prefix("basic:").ok_or_else(|| error("expected basic:USER:PASSWORD, token-file:PATH or none"))?;
        let (user, password) = rest.split_once(':').ok_or_else(|| error("expected basic:USER:PASSWORD"))?;
        if user.is_empty() || password.is_empty() {
            return Err(error("user and password must not be empty"));
        }
        Ok(Self::Basic { user: user.into(), password: password.into() })
    }
}

/// Issues and checks bearer tokens.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    token_ttl: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
}

impl Authenticator {
    /// Tokens issued by this authenticator live for `token_ttl`.
    pub fn new(config: AuthConfig, token_ttl: Duration) -> Self {
        Self { config, token_ttl, tokens: Mutex::default() }
    }

    /// True when calls must carry a token.
    pub fn enabled(&self) -> bool {
        self.config != AuthConfig::None
    }

    /// Checks the basic credentials of a handshake and returns a fresh token.
    pub async fn handshake(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let (user, password) = match &self.config {
            AuthConfig::None => return Ok(String::new()),
            AuthConfig::Tokens(_) => return Err(Status::unauthenticated("this server takes bearer tokens from its token file, not a handshake")),
            AuthConfig::Basic { user, password } => (user, password),
        };
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let given = header.strip_prefix("Basic ").and_then(|b| BASE64.decode(b).ok()).and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
        // Constant time: how long the check takes does not tell how close a guess was.
        if !bool::from(given.as_bytes().ct_eq(format!("{user}:{password}").as_bytes())) {
            // Slows down guessing without holding any lock.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Err(Status::unauthenticated("invalid credentials"));
        }
        let token: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(40).map(char::from).collect();
        let mut tokens = self.tokens.lock().expect("token lock poisoned");
        let now = Instant::now();
        tokens.retain(|_, expires| *expires > now);
        tokens.insert(token.clone(), now + self.token_ttl);
        Ok(token)
    }

    /// Accepts the call when auth is off or it carries a valid, unexpired bearer token.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if !self.enabled() {
            return Ok(());
        }
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing bearer token: authenticate with the handshake first"))?;
        if let AuthConfig::Tokens(accepted) = &self.config {
            let found = accepted.iter().fold(subtle::Choice::from(0), |found, t| found | t.as_bytes().ct_eq(token.as_bytes()));
            return bool::from(found).then_some(()).ok_or_else(|| Status::unauthenticated("invalid token"));
        }
        let tokens = self.tokens.lock().expect("token lock poisoned");
        match tokens.get(token) {
            Some(expires) if *expires > Instant::now() => Ok(()),
            Some(_) => Err(Status::unauthenticated("token expired: authenticate again")),
            None => Err(Status::unauthenticated("invalid token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: String) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().unwrap());
        metadata
    }

    #[tokio::test]
    async fn tokens_expire_and_guesses_are_slowed() {
        let config = AuthConfig::Basic { user: "alice".into(), password: "s3cret".into() };
        let auth = Authenticator::new(config, Duration::from_millis(200));
        let started = Instant::now();
        assert!(auth.handshake(&header(format!("Basic {}", BASE64.encode("alice:guess")))).await.is_err());
        assert!(started.elapsed() >= Duration::from_millis(300), "a wrong password is answered late");
        let token = auth.handshake(&header(format!("Basic {}", BASE64.encode("alice:s3cret")))).await.unwrap();
        auth.check(&header(format!("Bearer {token}"))).unwrap();
        assert!(auth.check(&header("Bearer forged".into())).is_err());
        assert!(auth.check(&MetadataMap::new()).is_err(), "a call without a token fails");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let expired = auth.check(&header(format!("Bearer {token}"))).unwrap_err();
        assert!(expired.message().contains("expired"), "{expired}");
    }
}
