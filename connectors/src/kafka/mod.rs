//! Kafka: the stream source ([`KafkaSource`]), a batched producer for ingest and
//! replay ([`RecordProducer`]), and topic administration.
//!
//! Everything goes through `rdkafka` with its bundled librdkafka. Clients share
//! one configuration ([`client_config`]) so that timeouts and logging agree.

mod replay;
mod source;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

pub use replay::{encode_rows, record_keys, replay_file, send_rows, EncodedRecords, RecordEncoder, ReplaySummary, BARE_AVRO_READ_ONLY};
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

fn kafka_error(brokers: &str, what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Kafka { brokers: brokers.to_string(), message: format!("{what}: {e}") }
}

/// The number of partitions of `topic`, or `None` when the topic does not exist.
/// Fails with a clear error when the brokers cannot be reached.
pub fn partition_count<C: ConsumerContext>(consumer: &impl Consumer<C>, brokers: &str, topic: &str) -> Result<Option<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), STARTUP_TIMEOUT)
        .map_err(|e| kafka_error(brokers, "cannot reach the brokers (is Kafka running there?)", e))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    match found.error() {
        None if !found.partitions().is_empty() => Ok(Some(found.partitions().len() as i32)),
        None => Ok(None),
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => Ok(None),
        Some(code) => Err(kafka_error(brokers, &format!("topic `{topic}`"), RDKafkaErrorCode::from(code))),
    }
}

/// Creates `topic` with `partitions` partitions unless it exists, replicated as the
/// cluster's `default.replication.factor` says (so a topic trendflow creates on a
/// three-broker cluster survives the loss of a broker like the user's other topics).
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin = admin_client(brokers)?;
    // -1: the broker's default (KIP-464, Kafka 2.4+).
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(STARTUP_TIMEOUT));
    let results = admin.create_topics([&new], &options).await.map_err(|e| kafka_error(brokers, "cannot create topics", e))?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(kafka_error(brokers, &format!("cannot create topic `{name}`"), code)),
        }
    }
    Ok(())
}

fn admin_client(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    client_config(brokers).create().map_err(|e| kafka_error(brokers, "cannot create an admin client", e))
}

/// One record to produce.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Record key (partitions by key).
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub payload: &'a [u8],
    /// Create time, ms since the epoch (None: now).
    pub timestamp: Option<i64>,
    /// Partition to write to (None: chosen by key).
    pub partition: Option<i32>,
}

/// A long-lived, idempotent producer that sends records in batches and waits for
/// every acknowledgement (`acks=all`) before reporting success.
///
/// ```no_run
/// # async fn demo() -> trendflow_connectors::Result<()> {
/// use trendflow_connectors::kafka::{OutRecord, RecordProducer};
/// let producer = RecordProducer::new("127.0.0.1:9092")?;
/// let record = OutRecord { key: Some(b"B01"), payload: br#"{"asin":"B01"}"#, timestamp: None, partition: None };
/// producer.send_all("products", &[record], None).await?;
/// # Ok(()) }
/// ```
pub struct RecordProducer {
    producer: FutureProducer,
    brokers: String,
}

impl RecordProducer {
    /// Connects a producer to `brokers`.
    pub fn new(brokers: &str) -> Result<Self> {
        let producer = client_config(brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .set("message.max.bytes", "16777216")
            // librdkafka retries through a broker outage for this long, then the caller
            // gets an error (the ingest API answers 503, so the client sends again).
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(|e| kafka_error(brokers, "cannot create a producer", e))?;
        Ok(Self { producer, brokers: brokers.to_string() })
    }

    /// Sends `records` to `topic` and waits until all are acknowledged. Returns, per
    /// partition, the offset after the last record written there.
    pub async fn send_all(
        &self,
        topic: &str,
        records: &[OutRecord<'_>],
        headers: Option<&(dyn Fn(usize) -> OwnedHeaders + Sync)>,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut pending = std::collections::VecDeque::new();
        let mut ends = BTreeMap::new();
        for (i, record) in records.iter().enumerate() {
            let mut out = FutureRecord::<[u8], [u8]>::to(topic).payload(record.payload);
            if let Some(key) = record.key {
                out = out.key(key);
            }
            if let Some(timestamp) = record.timestamp {
                out = out.timestamp(timestamp);
            }
            if let Some(partition) = record.partition {
                out = out.partition(partition);
            }
            if let Some(headers) = headers {
                out = out.headers(headers(i));
            }
            loop {
                match self.producer.send_result(out) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    // The local queue is full: wait for the oldest record, then retry.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        out = back;
                        match pending.pop_front() {
                            Some(oldest) => self.acknowledged(topic, oldest.await, &mut ends)?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => return Err(kafka_error(&self.brokers, &format!("cannot produce to `{topic}`"), e)),
                }
            }
        }
        for delivery in pending {
            self.acknowledged(topic, delivery.await, &mut ends)?;
        }
        Ok(ends)
    }

    fn acknowledged(
        &self,
        topic: &str,
        delivery: std::result::Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
        ends: &mut BTreeMap<i32, i64>,
    ) -> Result<()> {
        match delivery {
            Ok(Ok(delivered)) => {
                let end = ends.entry(delivered.partition).or_insert(0);
                *end = (*end).max(delivered.offset + 1);
                Ok(())
            }
            Ok(Err((e, _))) => Err(kafka_error(&self.brokers, &format!("a record to `{topic}` was not acknowledged"), e)),
            Err(_) => Err(kafka_error(&self.brokers, &format!("producing to `{topic}`"), "the producer shut down")),
        }
    }
}
