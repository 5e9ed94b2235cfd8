//! A Kafka topic as the records of a stream, exactly once.
//!
//! Partitions are assigned by the source itself (no group rebalancing): the
//! engine's checkpoint holds the next offset of every partition, and a restart
//! seeks there. Offsets are committed to the consumer group only after a
//! checkpoint is durable, so lag tools see real progress. New partitions are
//! discovered while running and read from their beginning.
//!
//! Records that do not decode go to a dead-letter topic with the reason and their
//! origin in headers (`dead_letters.rs`). The dead-letter topic's end is part of the
//! checkpointed position too: after a crash, letters already written past the
//! checkpoint are read back and not written twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use trendflow_engine::contract::{MicroBatch, Offsets, Poll, Source, StreamDecl};
use trendflow_engine::EngineError;

use super::dead_letters::{DeadLetterTopic, Rejected};
use super::{blocking, client_config, kafka_error, partition_count, watermarks};
use crate::decode::{with_metadata, RecordDecoder, RecordOrigin, TurnedAway};
use crate::error::Result;

/// The pseudo-partition under which a Kafka source checkpoints the end of its
/// dead-letter topic.
pub const DEAD_LETTER_POSITION: i32 = -2;

/// How often a running source looks for new partitions.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// What a look at the topic finds: its partition count and their end offsets.
type PartitionLook = (i32, BTreeMap<i32, i64>);

/// Settings of a [`KafkaSource`].
#[derive(Debug, Clone)]
pub struct KafkaSourceOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic to read (the stream's `LOCATION` unless re-bound).
    pub topic: String,
    /// Consumer group the source commits its progress to.
    pub group: String,
    /// Stop at the end offsets seen when reading starts (batch runs, `--until-idle`).
    pub bounded: bool,
    /// Larger records are dead-lettered instead of decoded.
    pub max_record_bytes: usize,
    /// Where undecodable records go (default `<topic>.dlq`, or `OPTIONS ('dead_letter_topic' …)`).
    pub dead_letter_topic: String,
}

impl KafkaSourceOptions {
    /// Defaults for reading `stream` from `topic` on `brokers`.
    pub fn new(stream: &StreamDecl, brokers: &str, topic: &str, group: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            group: group.to_string(),
            bounded: false,
            max_record_bytes: stream.options.max_record_bytes,
            dead_letter_topic: stream.options.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}.dlq")),
        }
    }
}

/// Records of one poll, copied out of librdkafka's buffers.
#[derive(Default)]
struct Fetched {
    payloads: Vec<Vec<u8>>,
    /// Record keys as sent (a tombstone's says which row it deletes, so it is not made UTF-8 here).
    keys: Vec<Option<Vec<u8>>>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
}

/// A Kafka topic replayed as the records of one stream.
pub struct KafkaSource {
    stream: StreamDecl,
    decoder: RecordDecoder,
    options: KafkaSourceOptions,
    consumer: Arc<StreamConsumer>,
    dead_letters: DeadLetterTopic,
    /// Next offset to read, per assigned partition.
    positions: BTreeMap<i32, i64>,
    /// With `bounded`: the end offsets to stop at.
    ends: Option<BTreeMap<i32, i64>>,
    /// End offsets as last looked up (every [`DISCOVERY_INTERVAL`]), for the lag.
    latest_ends: BTreeMap<i32, i64>,
    /// The look at partitions and end offsets running in the background, if any.
    look: Option<tokio::task::JoinHandle<Result<PartitionLook>>>,
    assigned: bool,
    last_discovery: Instant,
    last_warning: Option<Instant>,
}

impl KafkaSource {
    /// Connects to the brokers and checks that the topic exists. Fails with one
    /// clear error when the brokers are unreachable or the topic is missing.
    pub async fn open(stream: StreamDecl, options: KafkaSourceOptions) -> Result<Self> {
        let decoder = RecordDecoder::for_stream(&stream)?;
        let consumer: StreamConsumer = client_config(&options.brokers)
            .set("group.id", &options.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Records of aborted transactions (a crashed writer's, e.g. a trendflow job's
            // `--kafka-sink`) are never read; librdkafka's default, stated.
            .set("isolation.level", "read_committed")
            // Large fetches: the broker, not the client, should be the limit.
            .set("fetch.max.bytes", "67108864")
            .set("max.partition.fetch.bytes", "16777216")
            .set("receive.message.max.bytes", "100000000")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| kafka_error(&options.brokers, "cannot create a consumer", e))?;
        let consumer = Arc::new(consumer);
        let (probe, brokers, topic) = (consumer.clone(), options.brokers.clone(), options.topic.clone());
        let partitions = blocking(move || partition_count(probe.as_ref(), &brokers, &topic)).await?;
        if partitions.is_none() {
            return Err(kafka_error(
                &options.brokers,
                &format!("topic `{}` (stream `{}`)", options.topic, stream.name),
                "does not exist; create it, or start `trendflow ingest` / `trendflow produce`, which create it",
            ));
        }
        let dead_letters = DeadLetterTopic::open(&stream.name, &options).await?;
        Ok(Self {
            stream,
            decoder,
            options,
            consumer,
            dead_letters,
            positions: BTreeMap::new(),
            ends: None,
            latest_ends: BTreeMap::new(),
            look: None,
            assigned: false,
            last_discovery: Instant::now(),
            last_warning: None,
        })
    }

    fn source_error(&self, e: impl std::error::Error + Send + Sync + 'static) -> EngineError {
        EngineError::Source { source_name: self.stream.name.clone(), cause: Box::new(e) }
    }

    /// Assigns every partition of the topic at its position (the beginning when new).
    async fn assign(&mut self) -> Result<()> {
        let (consumer, brokers, topic) = (self.consumer.clone(), self.options.brokers.clone(), self.options.topic.clone());
        let count = blocking(move || partition_count(consumer.as_ref(), &brokers, &topic)).await?.unwrap_or(0);
        self.assign_partitions(count)?;
        if self.options.bounded && self.ends.is_none() {
            self.ends = Some(self.end_offsets().await?);
        }
        Ok(())
    }

    /// Assigns partitions `0..count`: the known ones at their positions, new ones from the start.
    fn assign_partitions(&mut self, count: i32) -> Result<()> {
        let known = self.positions.len();
        for partition in 0..count {
            self.positions.entry(partition).or_insert(0);
        }
        if self.assigned && self.positions.len() == known {
            return Ok(());
        }
        if self.assigned {
            tracing::info!(topic = self.options.topic, partitions = count, "new partitions: reading them from the beginning");
        }
        let mut assignment = TopicPartitionList::new();
        for (&partition, &next) in &self.positions {
            assignment
                .add_partition_offset(&self.options.topic, partition, Offset::Offset(next))
                .map_err(|e| kafka_error(&self.options.brokers, "cannot assign partitions", e))?;
        }
        self.consumer.assign(&assignment).map_err(|e| kafka_error(&self.options.brokers, "cannot assign partitions", e))?;
        self.assigned = true;
        Ok(())
    }

    /// Every [`DISCOVERY_INTERVAL`], looks at the topic's partitions and end offsets in the
    /// background (metadata round trips must not stall micro-batches), and applies the
    /// previous look once it is done: new partitions are assigned, the lag refreshed.
    async fn look_around(&mut self) {
        if self.look.as_ref().is_some_and(|look| look.is_finished()) {
            match self.look.take().expect("checked above").await {
                Ok(Ok((count, ends))) => {
                    self.latest_ends = ends;
                    if let Err(e) = self.assign_partitions(count) {
                        self.warn_transient(&e);
                    }
                }
                Ok(Err(e)) => self.warn_transient(&e),
                Err(e) => self.warn_transient(&e),
            }
        }
        if self.look.is_none() && self.last_discovery.elapsed() >= DISCOVERY_INTERVAL {
            let (consumer, brokers, topic) = (self.consumer.clone(), self.options.brokers.clone(), self.options.topic.clone());
            self.look = Some(tokio::task::spawn_blocking(move || {
                let count = partition_count(consumer.as_ref(), &brokers, &topic)?.unwrap_or(0);
                Ok((count, fetch_ends(&consumer, &brokers, &topic, 0..count)?))
            }));
            self.last_discovery = Instant::now();
        }
    }

    async fn end_offsets(&self) -> Result<BTreeMap<i32, i64>> {
        let (consumer, brokers, topic) = (self.consumer.clone(), self.options.brokers.clone(), self.options.topic.clone());
        let partitions: Vec<i32> = self.positions.keys().copied().collect();
        blocking(move || fetch_ends(&consumer, &brokers, &topic, partitions)).await
    }

    fn caught_up(&self) -> bool {
        self.ends.as_ref().is_some_and(|ends| ends.iter().all(|(p, end)| self.positions.get(p).is_some_and(|pos| pos >= end)))
    }

    /// Gathers up to `max_rows` records, waiting at most `max_delay` after the first call.
    async fn fetch(&mut self, max_rows: usize, max_delay: Duration) -> Fetched {
        let deadline = tokio::time::Instant::now() + max_delay;
        let mut fetched = Fetched::default();
        while fetched.offsets.len() < max_rows && !self.caught_up() {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    self.warn_transient(&e);
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            let (partition, offset) = (message.partition(), message.offset());
            let next = self.positions.entry(partition).or_insert(0);
            if offset < *next {
                continue; // re-delivered after a re-assignment
            }
            *next = offset + 1;
            fetched.payloads.push(message.payload().unwrap_or_default().to_vec());
            fetched.keys.push(message.key().map(<[u8]>::to_vec));
            fetched.partitions.push(partition);
            fetched.offsets.push(offset);
            fetched.timestamps.push(message.timestamp().to_millis().unwrap_or_else(now_ms));
        }
        fetched
    }

    /// Moves positions past records the consumer passed over without delivering them:
    /// transaction markers, and the records of aborted transactions. The consumer's own
    /// position is past them; ours, taken from delivered records, is not, and a bounded
    /// read of a transactionally written topic (a `--kafka-sink`'s) would wait for them
    /// forever.
    fn skip_undelivered(&mut self) {
        let Ok(list) = self.consumer.position() else { return };
        for element in list.elements_for_topic(&self.options.topic) {
            if let Offset::Offset(next) = element.offset() {
                let position = self.positions.entry(element.partition()).or_insert(0);
                *position = (*position).max(next);
            }
        }
    }

    /// Logs a consumer error at most every 10 s; librdkafka reconnects with backoff by itself.
    fn warn_transient(&mut self, e: &dyn std::fmt::Display) {
        if self.last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(brokers = self.options.brokers, topic = self.options.topic, "Kafka: {e}; retrying");
            self.last_warning = Some(Instant::now());
        }
    }

    /// Decodes fetched records; rejected ones go to the dead-letter topic first.
    async fn decode(&mut self, fetched: Fetched) -> Result<MicroBatch> {
        let records: Vec<&[u8]> = fetched.payloads.iter().map(Vec::as_slice).collect();
        let keys: Vec<Option<&[u8]>> = fetched.keys.iter().map(Option::as_deref).collect();
        let decoded = self.decoder.decode(&self.stream, &records, &keys, self.options.max_record_bytes).await?;
        let rejected: Vec<(usize, String)> = decoded.rejected.into_iter().map(|(row, reason, _)| (row, reason)).collect();
        let letters: Vec<Rejected<'_>> = rejected
            .iter()
            .map(|(i, reason)| Rejected {
                partition: fetched.partitions[*i],
                offset: fetched.offsets[*i],
                key: fetched.keys[*i].as_deref(),
                payload: &fetched.payloads[*i],
                timestamp: fetched.timestamps[*i],
                reason,
            })
            .collect();
        self.dead_letters.write(&letters).await?;
        let accepted = decoded.rows;
        let keys: StringArray = accepted.iter().map(|&i| fetched.keys[i].as_deref().map(String::from_utf8_lossy)).collect();
        let keys = if keys.null_count() == keys.len() { None } else { Some(keys) };
        let origin = RecordOrigin {
            partitions: accepted.iter().map(|&i| fetched.partitions[i]).collect(),
            offsets: accepted.iter().map(|&i| fetched.offsets[i]).collect(),
            timestamps: accepted.iter().zip(&decoded.arrivals).map(|(&i, given)| given.unwrap_or(fetched.timestamps[i])).collect(),
            keys,
        };
        let batch = with_metadata(&self.stream, &decoded.batch, origin)?;
        let mut offsets: Offsets = self.positions.clone();
        if let Some(end) = self.dead_letters.end() {
            offsets.insert(DEAD_LETTER_POSITION, end);
        }
        Ok(MicroBatch::new(batch, &decoded.deleted, offsets, rejected.len() as u64))
    }
}

/// The end offset of each of `partitions` (a blocking round trip per partition).
fn fetch_ends(consumer: &StreamConsumer, brokers: &str, topic: &str, partitions: impl IntoIterator<Item = i32>) -> Result<BTreeMap<i32, i64>> {
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) =
                watermarks(consumer, topic, p).map_err(|e| kafka_error(brokers, &format!("cannot read the end of `{topic}` partition {p}"), e))?;
            Ok((p, high))
        })
        .collect()
}

#[async_trait]
impl Source for KafkaSource {
    fn stream(&self) -> &str {
        &self.stream.name
    }

    fn identity(&self) -> String {
        format!("kafka:{}", self.options.topic)
    }

    async fn reject(&mut self, rows: &RecordBatch, reasons: &[String]) -> trendflow_engine::Result<Offsets> {
        let away = TurnedAway::of(&self.stream, rows).map_err(|e| self.source_error(e))?;
        let letters: Vec<Rejected<'_>> = (0..away.records.len())
            .map(|i| Rejected {
                partition: away.partitions[i],
                offset: away.offsets[i],
                key: away.keys[i].as_deref().map(str::as_bytes),
                payload: away.records[i].as_bytes(),
                timestamp: away.timestamps[i],
                reason: &reasons[i],
            })
            .collect();
        self.dead_letters.write(&letters).await.map_err(|e| self.source_error(e))?;
        Ok(self.dead_letters.end().map(|end| Offsets::from([(DEAD_LETTER_POSITION, end)])).unwrap_or_default())
    }

    async fn poll(&mut self, max_rows: usize, max_delay: Duration) -> trendflow_engine::Result<Poll> {
        if self.dead_letters.end().is_none() {
            // No checkpoint was restored (no `seek`): a run that crashed before its first
            // checkpoint may have written letters for the records about to be read.
            self.dead_letters.read_back(0).await.map_err(|e| self.source_error(e))?;
        }
        if !self.assigned {
            self.assign().await.map_err(|e| self.source_error(e))?;
            // The first look for new partitions and the lag comes one interval later.
            self.last_discovery = Instant::now();
        } else if !self.options.bounded {
            self.look_around().await;
        }
        if self.caught_up() {
            return Ok(Poll::Finished);
        }
        let fetched = self.fetch(max_rows.max(1), max_delay).await;
        if fetched.offsets.is_empty() {
            self.skip_undelivered();
            return Ok(if self.caught_up() { Poll::Finished } else { Poll::Idle });
        }
        self.decode(fetched).await.map(Poll::Batch).map_err(|e| self.source_error(e))
    }

    async fn seek(&mut self, offsets: &Offsets) -> trendflow_engine::Result<()> {
        self.positions = offsets.iter().filter(|(p, _)| **p >= 0).map(|(p, o)| (*p, *o)).collect();
        self.assigned = false;
        // No letter checkpointed: any letter of ours from the start is a replay.
        let from = offsets.get(&DEAD_LETTER_POSITION).copied().unwrap_or(0);
        self.dead_letters.read_back(from).await.map_err(|e| self.source_error(e))
    }

    fn lag(&self) -> Option<u64> {
        if self.latest_ends.is_empty() {
            return None; // not looked at the end offsets yet
        }
        let behind = |(p, end): (&i32, &i64)| (end - self.positions.get(p).copied().unwrap_or(0)).max(0) as u64;
        Some(self.latest_ends.iter().map(behind).sum())
    }

    async fn commit(&mut self, offsets: &Offsets) -> trendflow_engine::Result<()> {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in offsets.iter().filter(|(p, _)| **p >= 0) {
            list.add_partition_offset(&self.options.topic, partition, Offset::Offset(next)).map_err(|e| self.source_error(e))?;
        }
        // Only for lag tools: positions live in the checkpoint, so a failed commit loses nothing.
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(group = self.options.group, "cannot commit offsets to the consumer group: {e}");
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
