//! The HTTP ingest API: `POST /v1/topics/{topic}/records` validates records
//! against the stream declared on that topic and produces the valid ones to Kafka;
//! `DELETE /v1/topics/{topic}/records/{key}` deletes the row of a key from a changelog
//! stream.
//!
//! The body is a JSON array of records or NDJSON (one record per line). The
//! response counts accepted and rejected records and gives, per rejected record,
//! its index in the body and the reason:
//!
//! ```text
//! 200 {"accepted": 2, "rejected": 1, "errors": [{"index": 1, "reason": "invalid JSON record: Json error: whilst decoding field 'price': failed to parse \"abc\" as Float64"}]}
//! ```
//!
//! 400 when no record is valid, 404 for a topic no stream is declared on, 413 for a
//! body over the limit, 401 without a valid bearer token (when tokens are configured),
//! 429 over the per-client request rate, 503 when Kafka does not acknowledge. One long-lived
//! idempotent producer serves all requests; a request returns once its records
//! are acknowledged by all in-sync replicas.
//!
//! Records marked `"_deleted": true` on an `upsert` stream are produced as tombstones
//! (the key, no value), on a `debezium` stream as `"op": "d"` events. A DELETE does the
//! same for the key in its path (URL-encoded): the key column's value, or a JSON object
//! of the key columns when the key has several (`/v1/topics/stock/records/%7B%22sku%22%3A%22A1%22%2C%22site%22%3A2%7D`).
//! Its answer is the POST one for one record (`{"accepted": 1, "rejected": 0, "errors": []}`);
//! 400 for a key that does not fit the key columns or an append-only stream, which has
//! no rows to delete by key.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::json;
use trendflow_engine::contract::StreamDecl;

use crate::decode::{changelog_key, decode_parsed, delete_record, parse_records, parse_text, split_body, Decoded, RecordFormat};
use crate::kafka::{send_rows, RecordEncoder, RecordProducer, BARE_AVRO_READ_ONLY};

/// Settings of the ingest API.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Bearer tokens a request must carry one of (empty: no authentication).
    pub tokens: Vec<String>,
    /// Requests per second one client address may make (0: unlimited); bursts of up
    /// to one second's worth pass.
    pub requests_per_second: f64,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { max_body_bytes: 16 << 20, tokens: Vec::new(), requests_per_second: 0.0 }
    }
}

/// A token bucket per client address.
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one request from `client`'s bucket; false when it is empty.
    fn admit(&self, client: IpAddr, per_second: f64) -> bool {
        if per_second <= 0.0 {
            return true;
        }
        let burst = per_second.max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, last) = buckets.entry(client).or_insert((burst, Instant::now()));
        *tokens = (*tokens + last.elapsed().as_secs_f64() * per_second).min(burst);
        *last = Instant::now();
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether `header` (an `Authorization` value) carries one of `tokens`; every token
/// is compared in constant time, so the time taken does not tell how close a guess was.
fn authorized(header: Option<&str>, tokens: &[String]) -> bool {
    use subtle::ConstantTimeEq;
    let given = header.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("").as_bytes();
    tokens.iter().fold(subtle::Choice::from(0), |found, token| found | token.as_bytes().ct_eq(given)).into()
}

/// What the API serves: the declared streams by topic, and the producer.
pub struct IngestService {
    streams: BTreeMap<String, (StreamDecl, RecordEncoder)>,
    producer: RecordProducer,
    options: IngestOptions,
    limiter: RateLimiter,
}

impl IngestService {
    /// Serves every stream of `streams` on its topic (`LOCATION`); Avro streams get
    /// their writer schema registered. Streams of bare Avro (no registry to frame
    /// records with) are left out, with a warning.
    pub async fn new(streams: &[StreamDecl], producer: RecordProducer, options: IngestOptions) -> crate::Result<Self> {
        let mut by_topic = BTreeMap::new();
        for stream in streams {
            let Some(encoder) = RecordEncoder::for_stream(stream, &stream.location).await? else {
                tracing::warn!(stream = stream.name, "not served: {BARE_AVRO_READ_ONLY}");
                continue;
            };
            by_topic.insert(stream.location.clone(), (stream.clone(), encoder));
        }
        Ok(Self { streams: by_topic, producer, options, limiter: RateLimiter::default() })
    }

    /// The topics records can be posted to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.streams.keys().map(String::as_str)
    }

    /// The HTTP routes of the API.
    ///
    /// ```no_run
    /// # async fn demo(service: trendflow_connectors::http::IngestService) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
    /// let app = std::sync::Arc::new(service).router();
    /// axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
    /// # }
    /// ```
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/topics/{topic}/records", post(post_records))
            .route("/v1/topics/{topic}/records/{key}", delete(delete_key))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self)
    }

    /// Checks the client's token and rate; the response to send instead when refused.
    fn refuse(&self, client: IpAddr, headers: &HeaderMap) -> Option<Response> {
        if !self.options.tokens.is_empty() {
            let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            if !authorized(header, &self.options.tokens) {
                let mut response = error(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer TOKEN` header is required".into());
                response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Some(response);
            }
        }
        if !self.limiter.admit(client, self.options.requests_per_second) {
            let mut response =
                error(StatusCode::TOO_MANY_REQUESTS, format!("more than {} requests/s from {client}; retry later", self.options.requests_per_second));
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Some(response);
        }
        None
    }

    /// The stream declared on `topic` and its encoder.
    fn stream(&self, topic: &str) -> Option<(&StreamDecl, RecordEncoder)> {
        self.streams.get(topic).map(|(stream, encoder)| (stream, *encoder))
    }

    /// The 404 for a topic no stream is declared on.
    fn unknown_topic(&self, topic: &str) -> Response {
        let known: Vec<&str> = self.topics().collect();
        error(StatusCode::NOT_FOUND, format!("no stream is declared on topic `{topic}` (topics: {})", known.join(", ")))
    }

    async fn ingest(&self, topic: &str, body: Body) -> Response {
        let Some((stream, encoder)) = self.stream(topic) else { return self.unknown_topic(topic) };
        let Ok(bytes) = axum::body::to_bytes(body, self.options.max_body_bytes).await else {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} bytes; send fewer records per request", self.options.max_body_bytes),
            );
        };
        let records = match split_body(&bytes) {
            Ok(records) if records.is_empty() => return error(StatusCode::BAD_REQUEST, "the body holds no records".into()),
            Ok(records) => records,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        let slices: Vec<&[u8]> = records.iter().map(|r| r.as_ref()).collect();
        let parsed = parse_text(stream, &slices, stream.options.max_record_bytes);
        let decoded = match decode_parsed(parsed, &stream.payload_schema, changelog_key(stream)) {
            Ok(decoded) => decoded,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        self.produce(stream, encoder, topic, &decoded).await
    }

    /// Deletes the row whose key is `key` (see [`delete_record`]) from the changelog stream on `topic`.
    async fn delete(&self, topic: &str, key: &str) -> Response {
        let Some((stream, encoder)) = self.stream(topic) else { return self.unknown_topic(topic) };
        let Some(key_columns) = changelog_key(stream) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{}` on topic `{topic}` is an append-only stream, which has no rows to delete by key; \
                     declare OPTIONS ('changelog' 'upsert') with a PRIMARY KEY to delete records",
                    stream.name
                ),
            );
        };
        let record = match delete_record(stream, key.as_bytes()) {
            Ok(record) => record,
            Err(reason) => return answer(0, &[json!({"index": 0, "reason": format!("the key in the path {reason}")})]),
        };
        let parsed = parse_records(RecordFormat::Json, &stream.payload_schema, &[record.as_bytes()], stream.options.max_record_bytes);
        match decode_parsed(parsed, &stream.payload_schema, Some(key_columns)) {
            Ok(decoded) => self.produce(stream, encoder, topic, &decoded).await,
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    /// Produces the accepted records of `decoded` (deletes as the stream's changelog
    /// writes them) and answers with the counts and the reasons of the rejected ones.
    async fn produce(&self, stream: &StreamDecl, encoder: RecordEncoder, topic: &str, decoded: &Decoded) -> Response {
        let errors: Vec<_> = decoded.rejected.iter().map(|(index, reason, _)| json!({"index": index, "reason": reason})).collect();
        let accepted = decoded.batch.num_rows();
        if accepted > 0 {
            if let Err(e) = send_rows(&self.producer, stream, encoder, topic, &decoded.batch, &decoded.deleted).await {
                return error(StatusCode::SERVICE_UNAVAILABLE, format!("records not stored, send them again: {e}"));
            }
        }
        answer(accepted, &errors)
    }
}

/// The answer to a request that produced `accepted` records and rejected those `errors` name.
fn answer(accepted: usize, errors: &[serde_json::Value]) -> Response {
    let status = if accepted == 0 { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let body = json!({"accepted": accepted, "rejected": errors.len(), "errors": errors});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn post_records(
    State(service): State<Arc<IngestService>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match service.refuse(client.ip(), &headers) {
        Some(refused) => refused,
        None => service.ingest(&topic, body).await,
    }
}

async fn delete_key(
    State(service): State<Arc<IngestService>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path((topic, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match service.refuse(client.ip(), &headers) {
        Some(refused) => refused,
        None => service.delete(&topic, &key).await,
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, [("content-type", "application/json")], json!({ "error": message }).to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_rates_are_checked() {
        let tokens = vec!["s3cret".to_string(), "other".to_string()];
        assert!(authorized(Some("Bearer other"), &tokens));
        assert!(!authorized(Some("Bearer s3cre"), &tokens) && !authorized(Some("s3cret"), &tokens) && !authorized(None, &tokens));
        let limiter = RateLimiter::default();
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let admitted = (0..10).filter(|_| limiter.admit(client, 3.0)).count();
        assert_eq!(admitted, 3, "a burst of one second's worth");
        assert!(limiter.admit("127.0.0.2".parse().unwrap(), 3.0), "buckets are per client");
        assert!((0..100).all(|_| limiter.admit(client, 0.0)), "0 means unlimited");
    }

    /// A bare-Avro stream cannot be written (no registry id to frame records with): it
    /// is left out, and the other streams are served.
    #[tokio::test]
    async fn bare_avro_streams_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let sql = "CREATE EXTERNAL TABLE a (id VARCHAR NOT NULL) STORED AS KAFKA LOCATION 'a';\n\
                   CREATE EXTERNAL TABLE b (id VARCHAR NOT NULL) STORED AS KAFKA LOCATION 'b' OPTIONS ('format' 'avro', \
                   'avro_schema' '{\"type\": \"record\", \"name\": \"B\", \"fields\": [{\"name\": \"id\", \"type\": \"string\"}]}');";
        std::fs::write(dir.path().join("s.sql"), sql).unwrap();
        let streams = trendflow_engine::catalog::Catalog::load_streams(&[dir.path().to_path_buf()]).await.unwrap();
        // No broker is contacted until a record is sent.
        let producer = RecordProducer::new("127.0.0.1:1").unwrap();
        let service = IngestService::new(&streams, producer, IngestOptions::default()).await.unwrap();
        assert_eq!(service.topics().collect::<Vec<_>>(), vec!["a"]);
    }
}
