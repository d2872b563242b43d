//! Checks a worker makes before joining its consumer group.

use std::time::Duration;

use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::kafka;
use keyflow_schemas::topics::{check_co_partitioned, TopicNames};

use crate::workers::WorkerKind;

/// Why a worker refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error("worker {worker}: {message}")]
    NotCoPartitioned { worker: &'static str, message: String },
}

/// Checks that the worker's co-partitioned topics exist and agree on their
/// partition count; returns that count.
pub fn check_topics(
    kafka_args: &KafkaArgs,
    names: &TopicNames,
    worker: WorkerKind,
    timeout: Duration,
) -> Result<i32, PreflightError> {
    let topics = worker.co_partitioned(names);
    let existing = kafka::list_topics(kafka_args, timeout)?;
    let mut counts = Vec::new();
    for t in &topics {
        let n = existing.get(t).copied().ok_or_else(|| kafka::KafkaError::UnknownTopic {
            topic: t.clone(),
            brokers: kafka_args.brokers.clone(),
            known: existing.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        counts.push((t.clone(), n));
    }
    check_co_partitioned(&counts).map_err(|message| PreflightError::NotCoPartitioned { worker: worker.name(), message })
}
