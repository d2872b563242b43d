//! librdkafka clients built from the shared settings ([`crate::client`]),
//! and topic metadata lookups on any Kafka-API cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::{KafkaArgs, PARTITIONER};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Why a Kafka admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid Kafka client setting: {0}")]
    Config(String),
    #[error("cannot reach the Kafka cluster at {brokers} within {timeout:?}: {message}")]
    Unreachable { brokers: String, timeout: Duration, message: String },
    #[error("creating topic {topic} failed: {message}")]
    Create { topic: String, message: String },
    #[error("topic {topic} does not exist on {brokers} (known topics: {known})")]
    UnknownTopic { topic: String, brokers: String, known: String },
}

/// A librdkafka configuration from the shared flags plus `defaults`.
pub fn client_config(kafka: &KafkaArgs, defaults: &[(&str, &str)]) -> Result<ClientConfig, KafkaError> {
    kafka.validate().map_err(KafkaError::Config)?;
    let mut cfg = ClientConfig::new();
    for (k, v) in kafka.settings(defaults) {
        cfg.set(k, v);
    }
    Ok(cfg)
}

/// Producer settings every project producer uses: idempotent, acks=all,
/// the Java-compatible partitioner.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] =
    &[("enable.idempotence", "true"), ("acks", "all"), ("partitioner", PARTITIONER), ("linger.ms", "5")];

/// How long a worker's fetch may wait on the broker for data. Real Kafka
/// answers as soon as data arrives, so this only bounds idle polling; Tansu
/// 0.6 sleeps before answering every fetch, data or not (max wait / 2 from
/// 500 ms up, the whole wait below 250 ms: infra/BROKER-NOTES.md), so the default
/// 500 ms would add ~250 ms to every hop of the pipeline.
pub const FETCH_WAIT_MS: &str = "50";

/// A client for reading partitions to their end (restores, the verifier,
/// inspection): no offset commits, short fetch waits (see [`FETCH_WAIT_MS`];
/// with 500 ms a reader gets one fetch per 250 ms on Tansu), a bounded
/// prefetch queue, and an error instead of a silent jump when the broker
/// says an offset is out of range (a reader that skipped records would
/// restore or verify from a hole).
pub fn reader_config(kafka: &KafkaArgs, group: &str) -> Result<ClientConfig, KafkaError> {
    client_config(
        kafka,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "error"),
            ("fetch.wait.max.ms", "10"),
            ("queued.max.messages.kbytes", "16384"),
        ],
    )
}

/// Topic name → partition count, as the cluster reports it.
pub fn list_topics(kafka: &KafkaArgs, timeout: Duration) -> Result<BTreeMap<String, i32>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka, &[])?.create().map_err(|e| KafkaError::Config(e.to_string()))?;
    let md = consumer.fetch_metadata(None, timeout).map_err(|e| KafkaError::Unreachable {
        brokers: kafka.brokers.clone(),
        timeout,
        message: e.to_string(),
    })?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// Partition count of one topic; a clear error when it does not exist.
pub fn partition_count(kafka: &KafkaArgs, topic: &str, timeout: Duration) -> Result<i32, KafkaError> {
    let topics = list_topics(kafka, timeout)?;
    topics.get(topic).copied().ok_or_else(|| KafkaError::UnknownTopic {
        topic: topic.to_string(),
        brokers: kafka.brokers.clone(),
        known: topics.keys().cloned().collect::<Vec<_>>().join(", "),
    })
}
