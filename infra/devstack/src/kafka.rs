//! Topic creation on any Kafka-API cluster (embedded or real) from the
//! catalog's specs.

use std::time::Duration;

use keyflow_schemas::client::KafkaArgs;
pub use keyflow_schemas::kafka::*;
use keyflow_schemas::topics::TopicSpec;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

/// What happened to one topic in [`create_topics`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicOutcome {
    pub name: String,
    pub partitions: i32,
    /// `created`, `exists`, or `exists-with-other-partition-count`.
    pub status: &'static str,
}

/// Creates the topics that do not exist yet; existing ones are left alone
/// and reported (with a warning when their partition count differs).
pub async fn create_topics(
    kafka: &KafkaArgs,
    specs: &[TopicSpec],
    replication_factor: Option<i32>,
) -> Result<Vec<TopicOutcome>, KafkaError> {
    let timeout = Duration::from_secs(30);
    let existing = list_topics(kafka, timeout)?;
    let admin: AdminClient<Quiet> =
        client_config(kafka, &[])?.create_with_context(Quiet).map_err(|e| KafkaError::Config(e.to_string()))?;
    let missing: Vec<&TopicSpec> = specs.iter().filter(|s| !existing.contains_key(&s.name)).collect();
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|s| {
            let rf = replication_factor.unwrap_or(s.replication_factor);
            s.config
                .iter()
                .fold(NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(rf)), |t, (k, v)| t.set(k, v))
        })
        .collect();
    if !new.is_empty() {
        let opts = AdminOptions::new().operation_timeout(Some(timeout));
        let results = admin.create_topics(&new, &opts).await.map_err(|e| KafkaError::Unreachable {
            brokers: kafka.brokers.clone(),
            timeout,
            message: e.to_string(),
        })?;
        for r in results {
            if let Err((topic, code)) = r {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(KafkaError::Create { topic, message: code.to_string() });
                }
            }
        }
    }
    Ok(specs
        .iter()
        .map(|s| match existing.get(&s.name) {
            None => TopicOutcome { name: s.name.clone(), partitions: s.partitions, status: "created" },
            Some(&n) if n == s.partitions => TopicOutcome { name: s.name.clone(), partitions: n, status: "exists" },
            Some(&n) => {
                tracing::warn!(topic = %s.name, has = n, wanted = s.partitions, "topic exists with another partition count");
                TopicOutcome { name: s.name.clone(), partitions: n, status: "exists-with-other-partition-count" }
            }
        })
        .collect())
}
