//! A client of the Confluent Schema Registry REST API: the writer schema under an
//! id (to decode Confluent-framed records), and the id of a schema under a subject
//! (to encode them).
//!
//! Plain HTTP only, with optional basic authentication from the URL
//! (`http://user:password@registry:8081`, `%XX` escapes allowed). Connection
//! failures, server errors and 429 are retried with backoff; the registry's own
//! "schema not found" (error code 40403) is an answer, not an error.

use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::error::{redact, ConnectorError, Result};

/// Attempts of one request before the registry counts as unreachable.
const ATTEMPTS: u32 = 6;
/// Wait before the first retry; doubled after each (about 6 s in all).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the registry holds under a schema id.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaLookup {
    /// An Avro schema (JSON).
    Avro(String),
    /// No usable schema: not registered, or not Avro. The reason names the id.
    Refused(String),
}

/// A Confluent Schema Registry at one base URL.
///
/// ```no_run
/// # async fn demo() -> trendflow_connectors::Result<()> {
/// use trendflow_connectors::schema_registry::{SchemaLookup, SchemaRegistry};
///
/// let registry = SchemaRegistry::new("http://127.0.0.1:8081")?;
/// let id = registry.register("products-value", r#"{"type": "record", "name": "P", "fields": []}"#).await?;
/// assert!(matches!(registry.schema(id).await?, SchemaLookup::Avro(_)));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SchemaRegistry {
    /// `http://host:port/prefix`, without credentials or a trailing slash.
    base: String,
    authorization: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry").field("base", &self.base).finish_non_exhaustive()
    }
}

impl SchemaRegistry {
    /// A client of the registry at `url` (`http://[user:password@]host:port[/prefix]`).
    pub fn new(url: &str) -> Result<Self> {
        let invalid = |message: &str| ConnectorError::SchemaRegistry { url: redact(url), message: message.to_string() };
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(invalid(if url.starts_with("https://") {
                "https is not supported; use an http:// URL (e.g. through a local TLS proxy)"
            } else {
                "the URL must start with http://"
            }));
        };
        // Credentials may hold '/' (API secrets often do): they end at the last '@'.
        let (credentials, rest) = rest.rsplit_once('@').map_or((None, rest), |(c, r)| (Some(c), r));
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(invalid("the URL has no host"));
        }
        let base = format!("http://{host}/{}", path.trim_end_matches('/')).trim_end_matches('/').to_string();
        base.parse::<hyper::Uri>().map_err(|e| invalid(&e.to_string()))?;
        let authorization = credentials.map(|c| {
            let (user, password) = c.split_once(':').unwrap_or((c, ""));
            let decode = |text| percent_encoding::percent_decode_str(text).decode_utf8_lossy();
            let pair = format!("{}:{}", decode(user), decode(password));
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self { base, authorization, client })
    }

    /// The base URL, without credentials (for messages).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema registered under `id`.
    pub async fn schema(&self, id: u32) -> Result<SchemaLookup> {
        let (status, body) = self.request(Method::GET, &format!("/schemas/ids/{id}"), None).await?;
        // Only the registry's own "schema not found" (40403) condemns the records: any
        // other 404 (a wrong path, a proxy) is a misconfiguration, and an error.
        if status == StatusCode::NOT_FOUND && body.get("error_code").and_then(Value::as_u64) == Some(40403) {
            return Ok(SchemaLookup::Refused(format!("writer schema {id} is not in the schema registry at {}", self.base)));
        }
        let kind = body.get("schemaType").and_then(Value::as_str).unwrap_or("AVRO");
        if kind != "AVRO" {
            return Ok(SchemaLookup::Refused(format!("writer schema {id} is a {kind} schema; only Avro is read")));
        }
        match body.get("schema").and_then(Value::as_str) {
            Some(schema) if status.is_success() => Ok(SchemaLookup::Avro(schema.to_string())),
            _ => Err(self.error(&format!("GET /schemas/ids/{id} answered {status}: {body}"))),
        }
    }

    /// Registers `schema` (Avro JSON) under `subject` (or finds it registered) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let path = format!("/subjects/{subject}/versions");
        let (status, body) = self.request(Method::POST, &path, Some(json!({ "schema": schema }))).await?;
        match body.get("id").and_then(Value::as_u64) {
            Some(id) if status.is_success() => u32::try_from(id).map_err(|_| self.error(&format!("schema id {id} is out of range"))),
            _ if status == StatusCode::CONFLICT => Err(self.error(&format!(
                "the registry refuses the declared columns as a new version of `{subject}` (incompatible with the versions there: {body}); \
                 align the declared columns with the subject's schema, or write to another topic"
            ))),
            _ => Err(self.error(&format!("POST {path} answered {status}: {body}"))),
        }
    }

    /// One request, retried with backoff on connection failures and server errors.
    async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value)> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.send(method.clone(), path, body.as_ref())).await;
            let failure = match outcome {
                Ok(Ok((status, _))) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                    format!("{method} {path} answered {status}")
                }
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => e,
                Err(_) => format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"),
            };
            if attempt == ATTEMPTS {
                return Err(self.error(&format!("{failure} ({ATTEMPTS} attempts)")));
            }
            tracing::warn!(registry = self.base, "{failure}; retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", "application/vnd.schemaregistry.v1+json, application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let content = body.map(Value::to_string).unwrap_or_default();
        if body.is_some() {
            request = request.header("content-type", "application/vnd.schemaregistry.v1+json");
        }
        let request = request.body(Full::new(Bytes::from(content))).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| format!("cannot connect: {e}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        // Error bodies are JSON too ({"error_code": …, "message": …}); anything else is kept as text.
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    fn error(&self, message: &str) -> ConnectorError {
        ConnectorError::SchemaRegistry { url: self.base.clone(), message: message.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_credentials_kept_out_of_messages() {
        let registry = SchemaRegistry::new("http://ann:secret@registry:8081/api/").unwrap();
        assert_eq!(registry.url(), "http://registry:8081/api");
        assert_eq!(registry.authorization.as_deref(), Some("Basic YW5uOnNlY3JldA=="));
        assert!(!format!("{registry:?}").contains("secret"));
        let https = SchemaRegistry::new("https://ann:secret@registry").unwrap_err().to_string();
        assert!(https.contains("https is not supported") && !https.contains("secret"), "{https}");
        assert!(SchemaRegistry::new("registry:8081").unwrap_err().to_string().contains("must start with http://"));
        // A secret with '/' and an escaped '+'; a user without a password.
        let slashed = SchemaRegistry::new("http://key:a/b%2Bc@registry:8081").unwrap();
        assert_eq!(slashed.url(), "http://registry:8081");
        let sent =
            slashed.authorization.unwrap().strip_prefix("Basic ").map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap();
        assert_eq!(sent, b"key:a/b+c");
        let user_only = SchemaRegistry::new("http://key@registry").unwrap().authorization.unwrap();
        assert_eq!(user_only, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("key:")));
    }

    /// Nothing listens on the port: the request is retried, then fails naming the registry.
    #[tokio::test]
    async fn an_unreachable_registry_fails_after_retries() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let registry = SchemaRegistry::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let message = registry.schema(1).await.unwrap_err().to_string();
        assert!(message.contains(&format!("127.0.0.1:{port}")) && message.contains("6 attempts"), "{message}");
    }
}
