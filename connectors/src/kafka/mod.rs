//! Kafka: the stream source ([`KafkaSource`]), a batched producer for ingest and
//! replay ([`RecordProducer`]), views written as changelog topics ([`KafkaSink`]), and
//! topic administration.
//!
//! Everything goes through `rdkafka` with its bundled librdkafka. Clients share
//! one configuration ([`client_config`]) so that timeouts and logging agree.
//!
//! Files: `admin.rs` (partition counts, topic creation), `producer.rs`
//! ([`RecordProducer`]), `source.rs` ([`KafkaSource`]), `dead_letters.rs` (the
//! source's dead-letter topic), `replay.rs` (files and rows encoded into a topic),
//! `sink.rs` ([`KafkaSink`]).

mod admin;
mod dead_letters;
mod producer;
mod replay;
mod sink;
mod source;

use std::time::Duration;

use rdkafka::ClientConfig;

pub use admin::{ensure_topic, ensure_topic_with, partition_count};
pub use producer::{OutRecord, RecordProducer};
pub use replay::{encode_rows, record_keys, replay_file, send_rows, EncodedRecords, RecordEncoder, ReplaySummary, BARE_AVRO_READ_ONLY};
pub use sink::{KafkaSink, KafkaSinkOptions};
pub use source::{KafkaSource, KafkaSourceOptions, DEAD_LETTER_POSITION};

use crate::error::{ConnectorError, Result};

/// How long start-up calls (metadata, topic creation) wait for the brokers.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A topic on a set of brokers: `kafka://host:port[,host:port]/topic`.
///
/// ```
/// use trendflow_connectors::kafka::KafkaAddress;
/// let address = KafkaAddress::parse("kafka://127.0.0.1:9092/products").unwrap();
/// assert_eq!((address.brokers.as_str(), address.topic.as_str()), ("127.0.0.1:9092", "products"));
/// assert!(KafkaAddress::parse("kafka://127.0.0.1:9092").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaAddress {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Topic name.
    pub topic: String,
}

impl KafkaAddress {
    /// Parses `kafka://BROKERS/TOPIC`.
    pub fn parse(uri: &str) -> Result<Self> {
        let error = |message: &str| ConnectorError::Binding { binding: uri.to_string(), message: message.to_string() };
        let rest = uri.strip_prefix("kafka://").ok_or_else(|| error("expected kafka://HOST:PORT/TOPIC"))?;
        let (brokers, topic) = rest.split_once('/').ok_or_else(|| error("expected kafka://HOST:PORT/TOPIC: the topic is missing"))?;
        if brokers.is_empty() || topic.is_empty() || topic.contains('/') {
            return Err(error("expected kafka://HOST:PORT/TOPIC"));
        }
        Ok(Self { brokers: brokers.to_string(), topic: topic.to_string() })
    }
}

/// Settings every trendflow Kafka client shares.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "trendflow")
        // Reconnects back off up to 10 s instead of hammering a broker that is down.
        .set("reconnect.backoff.max.ms", "10000")
        .set("socket.keepalive.enable", "true");
    config
}

/// The low and high watermarks of `topic`'s `partition`. A topic created a moment ago
/// may not be in the broker's metadata yet (`UnknownPartition`): that is retried until
/// [`STARTUP_TIMEOUT`], other errors are returned at once.
fn watermarks<C: rdkafka::consumer::ConsumerContext, T: rdkafka::consumer::Consumer<C>>(
    consumer: &T,
    topic: &str,
    partition: i32,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    let started = std::time::Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, partition, STARTUP_TIMEOUT) {
            Err(rdkafka::error::KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownPartition))
                if started.elapsed() < STARTUP_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

fn kafka_error(brokers: &str, what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Kafka { brokers: brokers.to_string(), message: format!("{what}: {e}") }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ConnectorError::Kafka { brokers: String::new(), message: e.to_string() })?
}
