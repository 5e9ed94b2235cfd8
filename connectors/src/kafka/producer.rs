//! The batched, idempotent producer of ingest, replay and dead letters, and the
//! transactional one of view changelogs.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{client_config, kafka_error};
use crate::error::Result;

/// How long transaction calls (start, commit, abort) wait for the brokers.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of every producer: acknowledged by all in-sync replicas, idempotent
/// (no duplicates from librdkafka's own retries), batched.
fn producer_config(brokers: &str) -> rdkafka::ClientConfig {
    let mut config = client_config(brokers);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("message.max.bytes", "16777216")
        // librdkafka retries through a broker outage for this long, then the caller
        // gets an error (the ingest API answers 503, so the client sends again).
        .set("message.timeout.ms", "30000");
    config
}

/// One record to produce.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Record key (partitions by key).
    pub key: Option<&'a [u8]>,
    /// Record value; empty is sent as no value at all (a tombstone).
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
        let producer = producer_config(brokers).create().map_err(|e| kafka_error(brokers, "cannot create a producer", e))?;
        Ok(Self { producer, brokers: brokers.to_string() })
    }

    /// Connects a transactional producer to `brokers`: what it sends between
    /// [`begin`](Self::begin) and [`commit`](Self::commit) is read by `read_committed`
    /// consumers all at once or, when aborted, never. Starting it fences any earlier
    /// producer with the same `transactional_id` (a previous run of the job that may
    /// still be alive) and aborts that producer's open transaction.
    pub async fn transactional(brokers: &str, transactional_id: &str) -> Result<Self> {
        let producer: FutureProducer = producer_config(brokers)
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", "60000")
            .create()
            .map_err(|e| kafka_error(brokers, "cannot create a transactional producer", e))?;
        let (init, owner) = (producer.clone(), brokers.to_string());
        super::blocking(move || {
            init.init_transactions(TRANSACTION_TIMEOUT)
                .map_err(|e| kafka_error(&owner, "cannot start transactions (is the broker 0.11 or later, with a transaction log?)", e))
        })
        .await?;
        Ok(Self { producer, brokers: brokers.to_string() })
    }

    /// Opens a transaction (transactional producers only).
    pub fn begin(&self) -> Result<()> {
        self.producer.begin_transaction().map_err(|e| self.transaction_error("cannot begin a transaction", e))
    }

    /// Commits the open transaction: every record sent in it becomes visible at once. A
    /// commit that failed in a way librdkafka calls retriable (a timeout) is tried again.
    pub async fn commit(&self) -> Result<()> {
        let mut attempts = 0;
        loop {
            let producer = self.producer.clone();
            let outcome = super::blocking(move || Ok(producer.commit_transaction(TRANSACTION_TIMEOUT))).await?;
            match outcome {
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => attempts += 1,
                outcome => return outcome.map_err(|e| self.transaction_error("cannot commit the transaction", e)),
            }
        }
    }

    /// Aborts the open transaction: none of its records will ever be read committed.
    pub async fn abort(&self) -> Result<()> {
        let producer = self.producer.clone();
        let outcome = super::blocking(move || Ok(producer.abort_transaction(TRANSACTION_TIMEOUT))).await?;
        outcome.map_err(|e| self.transaction_error("cannot abort the transaction", e))
    }

    fn transaction_error(&self, what: &str, e: KafkaError) -> crate::ConnectorError {
        // librdkafka reports a fenced producer as its own `Fenced`, whatever the broker said.
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        let hint = if fenced { " (another producer with this transactional.id started: a second job with the same --kafka-group?)" } else { "" };
        kafka_error(&self.brokers, &format!("{what}{hint}"), e)
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
            let mut out = FutureRecord::<[u8], [u8]>::to(topic);
            if !record.payload.is_empty() {
                out = out.payload(record.payload);
            }
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
