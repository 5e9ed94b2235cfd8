//! Views written to Kafka as changelogs ([`KafkaSink`]): each row a keyed upsert, each
//! row that left the view a tombstone, so that another job (or any consumer) can read
//! the topic as an `upsert` stream of the view.
//!
//! Records are keyed as an `upsert` stream expects its tombstones to be (see
//! [`record_keys`]: the key's value as text when the view's key is one column, a JSON
//! object of its key columns when it has several, `{}` for a one-row view without key
//! columns), and their values are JSON objects of the row (nulls left out). Changes are
//! coalesced by key between checkpoints and written in one Kafka transaction when the
//! engine flushes before each checkpoint, so `read_committed` readers see a checkpoint's
//! changes all at once or not at all, and a crash while writing leaves nothing behind.
//! A crash after the commit and before the checkpoint replays that interval: its rows
//! are written again with the same absolute values, which an upsert reader applies
//! idempotently. At start-up every aggregating view's topic is reset to the
//! checkpointed result ([`Sink::reset`]): the topic is read back, and rows the lost run
//! wrote that the result lacks are tombstoned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use trendflow_engine::contract::{Changeset, CheckpointMeta, Sink, ViewInfo};
use trendflow_engine::EngineError;

use super::{blocking, client_config, encode_rows, ensure_topic_with, kafka_error, partition_count, record_keys, OutRecord, RecordProducer};
use crate::decode::RecordFormat;
use crate::error::{ConnectorError, Result};

/// The Kafka key of a view row when the view has no key columns (a global aggregate).
const KEYLESS: &[u8] = b"{}";
/// Longest wait for a view's topic to be read back at start-up.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Where views go: which view to which topic, on which brokers.
#[derive(Debug, Clone)]
pub struct KafkaSinkOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// View name → topic.
    pub topics: BTreeMap<String, String>,
    /// Partitions of the topics the sink creates (compacted); existing topics are kept as they are.
    pub partitions: i32,
    /// The producer's `transactional.id`: one per job, stable across its restarts.
    pub transactional_id: String,
}

/// Writes views' changes into Kafka topics, exactly once per checkpoint interval.
///
/// ```no_run
/// # async fn demo() -> trendflow_connectors::Result<()> {
/// use trendflow_connectors::kafka::{KafkaSink, KafkaSinkOptions};
/// let options = KafkaSinkOptions {
///     brokers: "127.0.0.1:9092".into(),
///     topics: [("price_levels".to_string(), "trendflow.price_levels".to_string())].into(),
///     partitions: 1,
///     transactional_id: "trendflow.sink".into(),
/// };
/// let sink = KafkaSink::connect(options).await?; // then: Pipeline::run(…, &mut sink, …)
/// # Ok(()) }
/// ```
pub struct KafkaSink {
    options: KafkaSinkOptions,
    producer: RecordProducer,
    /// Per view: key → value (empty: a tombstone) of the changes since the last flush.
    pending: HashMap<String, HashMap<Vec<u8>, Vec<u8>>>,
    /// Records committed since the sink started.
    written: u64,
}

impl KafkaSink {
    /// Starts the transactional producer, fencing an earlier run of the same job.
    pub async fn connect(options: KafkaSinkOptions) -> Result<Self> {
        let producer = RecordProducer::transactional(&options.brokers, &options.transactional_id).await?;
        Ok(Self { options, producer, pending: HashMap::new(), written: 0 })
    }

    /// Records committed to the views' topics since the sink started.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Which view goes to which topic: `view → topic, …`.
    pub fn describe(&self) -> String {
        self.options.topics.iter().map(|(view, topic)| format!("{view} → {topic}")).collect::<Vec<_>>().join(", ")
    }

    /// The coalesced changes of `view`, if it goes to a topic.
    fn pending_of(&mut self, view: &str) -> Option<&mut HashMap<Vec<u8>, Vec<u8>>> {
        self.options.topics.contains_key(view).then(|| self.pending.entry(view.to_string()).or_default())
    }

    /// Sends every pending change in one transaction; aborts it on any failure.
    async fn write_pending(&mut self) -> Result<()> {
        self.producer.begin()?;
        let mut sent = 0;
        for (view, changes) in &self.pending {
            let topic = &self.options.topics[view];
            let records: Vec<OutRecord<'_>> = changes
                .iter()
                .map(|(key, value)| OutRecord { key: Some(key.as_slice()), payload: value.as_slice(), timestamp: None, partition: None })
                .collect();
            if let Err(e) = self.producer.send_all(topic, &records, None).await {
                return Err(self.aborted(e).await);
            }
            sent += records.len() as u64;
        }
        if let Err(e) = self.producer.commit().await {
            return Err(self.aborted(e).await);
        }
        self.written += sent;
        self.pending.clear();
        Ok(())
    }

    /// `cause`, after aborting the open transaction (whose failure is logged: the
    /// broker aborts it by itself once the transaction times out).
    async fn aborted(&self, cause: ConnectorError) -> ConnectorError {
        if let Err(e) = self.producer.abort().await {
            tracing::warn!(error = %e, "Kafka sink: aborting the failed transaction failed too");
        }
        cause
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self, views: &[ViewInfo]) -> Result<(), EngineError> {
        let known: HashSet<&str> = views.iter().map(|v| v.name.as_str()).collect();
        if let Some(unknown) = self.options.topics.keys().find(|v| !known.contains(v.as_str())) {
            let mut names: Vec<&str> = known.into_iter().collect();
            names.sort_unstable();
            return Err(EngineError::Sink(format!("--kafka-sink names `{unknown}`, which is not a view (views: {})", names.join(", ")).into()));
        }
        for topic in self.options.topics.values() {
            ensure_topic_with(&self.options.brokers, topic, self.options.partitions, &[("cleanup.policy", "compact")]).await.map_err(sink_error)?;
        }
        Ok(())
    }

    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> Result<(), EngineError> {
        let key_columns: Vec<usize> = (0..view.key.len()).collect();
        let Some(pending) = self.pending_of(&view.name) else { return Ok(()) };
        let deleted = view_keys(&changes.deletes, &key_columns).map_err(sink_error)?;
        for key in deleted {
            pending.insert(key, Vec::new());
        }
        let keys = view_keys(&changes.upserts, &view.key).map_err(sink_error)?;
        let values = encode_rows(RecordFormat::Json, &changes.upserts).map_err(sink_error)?;
        for (i, key) in keys.into_iter().enumerate() {
            pending.insert(key, values.get(i).to_vec());
        }
        Ok(())
    }

    async fn flush(&mut self, _meta: &CheckpointMeta) -> Result<(), EngineError> {
        if self.pending.values().all(HashMap::is_empty) {
            return Ok(());
        }
        self.write_pending().await.map_err(sink_error)
    }

    async fn reset(&mut self, view: &ViewInfo, rows: &RecordBatch) -> Result<(), EngineError> {
        let Some(topic) = self.options.topics.get(&view.name).cloned() else { return Ok(()) };
        let mut stale = live_keys(&self.options.brokers, &topic).await.map_err(sink_error)?;
        let keys = view_keys(rows, &view.key).map_err(sink_error)?;
        let values = encode_rows(RecordFormat::Json, rows).map_err(sink_error)?;
        let pending = self.pending_of(&view.name).expect("the view goes to a topic");
        pending.clear();
        for (i, key) in keys.into_iter().enumerate() {
            stale.remove(&key);
            pending.insert(key, values.get(i).to_vec());
        }
        for key in stale {
            pending.insert(key, Vec::new());
        }
        // Now, not at the next checkpoint: a job resumed with nothing new to read has none.
        self.write_pending().await.map_err(sink_error)
    }
}

fn sink_error(e: ConnectorError) -> EngineError {
    EngineError::Sink(Box::new(e))
}

/// The Kafka key of each row of `batch` whose key columns are `key`.
fn view_keys(batch: &RecordBatch, key: &[usize]) -> Result<Vec<Vec<u8>>> {
    Ok(match record_keys(batch, key)? {
        None => vec![KEYLESS.to_vec(); batch.num_rows()],
        // A NULL single-column key is written as JSON's null (an upsert reader takes it for
        // the text `null`: such a row cannot be deleted by its tombstone; see the README).
        Some(keys) => (0..keys.len()).map(|i| if keys.is_valid(i) { keys.value(i).as_bytes().to_vec() } else { b"null".to_vec() }).collect(),
    })
}

/// The keys `topic` holds a row for, as a `read_committed` reader of its changelog sees
/// them now: keys whose last record is not a tombstone.
async fn live_keys(brokers: &str, topic: &str) -> Result<HashSet<Vec<u8>>> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    blocking(move || {
        let consumer: BaseConsumer = client_config(&brokers)
            .set("group.id", format!("{topic}.read-back"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| kafka_error(&brokers, "cannot create a consumer", e))?;
        let partitions = partition_count(&consumer, &brokers, &topic)?.unwrap_or(0);
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(&topic, partition, Offset::Beginning).map_err(|e| kafka_error(&brokers, "assign", e))?;
        }
        consumer.assign(&list).map_err(|e| kafka_error(&brokers, &format!("cannot read `{topic}` back"), e))?;
        let (mut live, mut at_end) = (HashSet::new(), HashSet::new());
        let deadline = Instant::now() + READ_BACK_TIMEOUT;
        while (at_end.len() as i32) < partitions {
            if Instant::now() > deadline {
                return Err(kafka_error(&brokers, &format!("reading `{topic}` back"), format!("not at its end after {READ_BACK_TIMEOUT:?}")));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition);
                }
                Some(Err(e)) => tracing::warn!(topic, "Kafka: {e}; retrying"),
                Some(Ok(message)) => {
                    let key = message.key().unwrap_or_default().to_vec();
                    match message.payload() {
                        Some(value) if !value.is_empty() => live.insert(key),
                        _ => live.remove(&key),
                    };
                }
            }
        }
        Ok(live)
    })
    .await
}
