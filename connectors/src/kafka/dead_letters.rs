//! The dead-letter topic of a Kafka source: records that do not decode are written
//! there with the reason and their origin in headers, always to partition 0.
//!
//! The topic's end after the source's last letter is part of the source's
//! checkpointed position. After a crash, the letters written past the checkpoint
//! are read back before their records are replayed, so that none is written twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};

use super::{blocking, client_config, ensure_topic, kafka_error, watermarks, KafkaSourceOptions, OutRecord, RecordProducer, STARTUP_TIMEOUT};
use crate::error::Result;

/// A record the source rejected, with where it came from and why.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rejected<'a> {
    /// Partition of the source topic it was read from.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value, as read.
    pub payload: &'a [u8],
    /// Its create time, ms since the epoch.
    pub timestamp: i64,
    /// Why it was rejected.
    pub reason: &'a str,
}

/// The dead-letter topic of one stream's Kafka source.
pub(super) struct DeadLetterTopic {
    producer: RecordProducer,
    brokers: String,
    /// The dead-letter topic.
    topic: String,
    /// Stream and topic of the source, named in every letter's headers.
    stream: String,
    source_topic: String,
    /// Consumer group of the source (the read back uses `<group>-dead-letter-check`).
    group: String,
    /// End of the topic after our last letter (None: neither read back nor written yet).
    end: Option<i64>,
    /// Records already dead-lettered after the restored checkpoint: (partition, offset).
    already_written: HashSet<(i32, i64)>,
}

impl DeadLetterTopic {
    /// Creates the dead-letter topic of `options` (one partition) unless it exists, and
    /// connects a producer to it, for the letters of `stream`.
    pub async fn open(stream: &str, options: &KafkaSourceOptions) -> Result<Self> {
        ensure_topic(&options.brokers, &options.dead_letter_topic, 1).await?;
        let producer = RecordProducer::new(&options.brokers)?;
        Ok(Self {
            producer,
            brokers: options.brokers.clone(),
            topic: options.dead_letter_topic.clone(),
            stream: stream.to_string(),
            source_topic: options.topic.clone(),
            group: options.group.clone(),
            end: None,
            already_written: HashSet::new(),
        })
    }

    /// The end of the topic after our last letter, to checkpoint; None until the
    /// letters were read back or written.
    pub fn end(&self) -> Option<i64> {
        self.end
    }

    /// Writes `rejected` to the topic and waits for the acknowledgements, skipping
    /// those a previous run already wrote there (found by [`Self::read_back`]).
    pub async fn write(&mut self, rejected: &[Rejected<'_>]) -> Result<()> {
        let letters: Vec<&Rejected<'_>> = rejected.iter().filter(|r| !self.already_written.contains(&(r.partition, r.offset))).collect();
        if letters.is_empty() {
            return Ok(());
        }
        let records = letters
            .iter()
            .map(|r| OutRecord {
                key: r.key,
                payload: r.payload,
                timestamp: Some(r.timestamp),
                // Letters are read back from partition 0 after a crash, whatever the topic's partitions.
                partition: Some(0),
            })
            .collect::<Vec<_>>();
        let headers = |n: usize| {
            let r = letters[n];
            letter_headers(&self.stream, &self.source_topic, r.partition, r.offset, r.reason)
        };
        let ends = self.producer.send_all(&self.topic, &records, Some(&headers)).await?;
        if let Some(&end) = ends.get(&0) {
            self.end = Some(self.end.unwrap_or(0).max(end));
        }
        Ok(())
    }

    /// Reads the letters written from offset `from` (the checkpointed end) to the end of
    /// the topic: their records are about to be replayed and must not be dead-lettered
    /// twice. Afterwards [`Self::end`] is the topic's end.
    pub async fn read_back(&mut self, from: i64) -> Result<()> {
        let brokers = self.brokers.clone();
        let topic = self.topic.clone();
        let (stream, source_topic) = (self.stream.clone(), self.source_topic.clone());
        let consumer: BaseConsumer = client_config(&brokers)
            .set("group.id", format!("{}-dead-letter-check", self.group))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| kafka_error(&brokers, "cannot create a consumer", e))?;
        let seen = blocking(move || {
            let (_, high) = watermarks(&consumer, &topic, 0).map_err(|e| kafka_error(&brokers, &format!("cannot read the end of `{topic}`"), e))?;
            let mut seen = HashSet::new();
            if high <= from {
                return Ok((seen, high));
            }
            let mut assignment = TopicPartitionList::new();
            assignment.add_partition_offset(&topic, 0, Offset::Offset(from)).map_err(|e| kafka_error(&brokers, "assign", e))?;
            consumer.assign(&assignment).map_err(|e| kafka_error(&brokers, "assign", e))?;
            // A large topic may take a while: only a reader that stops moving times out.
            let mut progress = Instant::now();
            let mut next = from;
            while next < high {
                if progress.elapsed() > STARTUP_TIMEOUT {
                    return Err(kafka_error(
                        &brokers,
                        &format!("reading back `{topic}`"),
                        format!("no letter for {:?} at offset {next} of {high}", STARTUP_TIMEOUT),
                    ));
                }
                let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
                let message = message.map_err(|e| kafka_error(&brokers, &format!("reading back `{topic}`"), e))?;
                progress = Instant::now();
                next = message.offset() + 1;
                if let Some(origin) = letter_origin(&message, &stream, &source_topic) {
                    seen.insert(origin);
                }
            }
            Ok((seen, high))
        })
        .await?;
        self.already_written = seen.0;
        self.end = Some(seen.1);
        Ok(())
    }
}

/// Headers of a dead letter: why, and where the record came from.
fn letter_headers(stream: &str, topic: &str, partition: i32, offset: i64, reason: &str) -> OwnedHeaders {
    let (partition, offset) = (partition.to_string(), offset.to_string());
    OwnedHeaders::new()
        .insert(Header { key: "trendflow.stream", value: Some(stream) })
        .insert(Header { key: "trendflow.reason", value: Some(reason) })
        .insert(Header { key: "trendflow.topic", value: Some(topic) })
        .insert(Header { key: "trendflow.partition", value: Some(&partition) })
        .insert(Header { key: "trendflow.offset", value: Some(&offset) })
}

/// The (partition, offset) a dead letter of `stream` came from, when it came from `topic`.
fn letter_origin(message: &impl Message, stream: &str, topic: &str) -> Option<(i32, i64)> {
    let headers = message.headers()?;
    let value = |key: &str| headers.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok().map(str::to_string));
    if value("trendflow.stream")? != stream || value("trendflow.topic")? != topic {
        return None;
    }
    Some((value("trendflow.partition")?.parse().ok()?, value("trendflow.offset")?.parse().ok()?))
}
