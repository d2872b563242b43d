//! The start-up check every binary makes before its real work: a Kafka
//! cluster or schema registry that does not answer within
//! [`STARTUP_PATIENCE`] is a configuration error, reported as one line that
//! names the address and the flag or variable that sets it. Outages after
//! start-up are retried with backoff by the code that meets them.

use std::time::Duration;

use crate::client::{KafkaArgs, RegistryArgs};
use crate::registry_admin::{AdminError, RegistryAdmin};

/// How long a binary waits at start-up for the cluster and the registry.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(15);

/// An address that did not answer at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error(
        "cannot reach the Kafka cluster at {brokers} within {patience:?} (set by -b/--brokers or KAFKA_BROKERS): \
         {message}"
    )]
    Kafka { brokers: String, patience: Duration, message: String },
    #[error(
        "cannot reach the schema registry at {url} within {patience:?} (set by --registry or \
         SCHEMA_REGISTRY_URL): {message}"
    )]
    Registry { url: String, patience: Duration, message: String },
    #[error("{0}")]
    Config(String),
}

/// Checks that the Kafka cluster, and the registry when given, answer
/// within `patience` (both at once); the cluster's failure is reported
/// first. Logs nothing while it waits.
pub async fn check_reachable(
    kafka: &KafkaArgs,
    registry: Option<&RegistryArgs>,
    patience: Duration,
) -> Result<(), Unreachable> {
    let cluster = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || crate::kafka::list_topics(&kafka, patience))
    };
    let registry = async {
        match registry {
            Some(args) => check_registry(args, patience).await,
            None => Ok(()),
        }
    };
    let (cluster, registry) = tokio::join!(cluster, registry);
    match cluster {
        Ok(Ok(_)) => {}
        Ok(Err(crate::kafka::KafkaError::Unreachable { message, .. })) => {
            return Err(Unreachable::Kafka { brokers: kafka.brokers.clone(), patience, message })
        }
        Ok(Err(e)) => return Err(Unreachable::Config(e.to_string())),
        Err(e) => return Err(Unreachable::Config(format!("checking the Kafka cluster: {e}"))),
    }
    registry
}

/// Checks that the schema registry answers within `patience` (for a binary
/// that has already checked the cluster its own way). Logs nothing while it waits.
pub async fn check_registry(registry: &RegistryArgs, patience: Duration) -> Result<(), Unreachable> {
    let cfg = registry.config().map_err(Unreachable::Config)?;
    let url = cfg.url.clone();
    let admin = RegistryAdmin::new(cfg).map_err(|e| Unreachable::Config(e.to_string()))?;
    match admin.wait_answering(patience).await {
        Ok(()) => Ok(()),
        Err(AdminError::Unreachable { message, .. }) => Err(Unreachable::Registry { url, patience, message }),
        // It answered, if only to refuse: reachable.
        Err(_) => Ok(()),
    }
}
