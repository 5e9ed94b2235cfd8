//! Topic administration: partition counts, and creating topics trendflow writes to.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

use super::{client_config, kafka_error, STARTUP_TIMEOUT};
use crate::error::Result;

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
    ensure_topic_with(brokers, topic, partitions, &[]).await
}

/// [`ensure_topic`], creating the topic with the topic `configs` given (e.g.
/// `cleanup.policy=compact`); a topic that exists is left as it is.
pub async fn ensure_topic_with(brokers: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<()> {
    let admin = admin_client(brokers)?;
    // -1: the broker's default (KIP-464, Kafka 2.4+).
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (name, value) in configs {
        new = new.set(name, value);
    }
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
