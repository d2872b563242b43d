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

/// Checks that the worker's changelog never expires by age: its snapshots
/// are the state, and an idle partition writes none, so `retention.ms`
/// would one day delete the only copy of its keys' state (the worker trims
/// the history below each snapshot itself).
pub async fn check_changelog_retention(kafka_args: &KafkaArgs, changelog: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<kafka::Quiet> = kafka::client_config(kafka_args, &[])?.create_with_context(kafka::Quiet)?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    // A broker that cannot describe configs is not a reason to refuse.
    let described = match admin.describe_configs(&[ResourceSpecifier::Topic(changelog)], &opts).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(topic = changelog, error = %e, "could not check the changelog's retention");
            return Ok(());
        }
    };
    let Some(Ok(resource)) = described.into_iter().next() else { return Ok(()) };
    let retention = resource.get("retention.ms").and_then(|e| e.value.clone()).unwrap_or_default();
    let policy = resource.get("cleanup.policy").and_then(|e| e.value.clone()).unwrap_or_default();
    if policy.contains("delete") && retention.parse::<i64>().is_ok_and(|ms| ms >= 0) {
        anyhow::bail!(
            "changelog {changelog} has retention.ms={retention}: it holds the workers' state, which an idle partition \
             never rewrites, so it must not expire by age; set retention.ms=-1 (workers delete the history below \
             each snapshot themselves)"
        );
    }
    Ok(())
}
