//! The runtime's settings: the assignor, the delivery guarantee, and the
//! settings that only make sense together (checked by [`RuntimeConfig::validate`]).

use super::*;

/// How partitions are spread over a group's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Assignor {
    /// Eager range assignment: partition p of every input on one instance
    /// (required for joins).
    Range,
    /// Incremental cooperative rebalancing (real Kafka, single-input workers):
    /// only moved partitions stop.
    CooperativeSticky,
}

impl Assignor {
    /// The librdkafka `partition.assignment.strategy` value.
    pub fn strategy(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// What the runtime promises about each input's effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Guarantee {
    /// Record the decision in the changelog, then publish it (the default; any
    /// Kafka-API broker). A crash may leave byte-identical copies, which
    /// consumers drop by `event_id`.
    EffectivelyOnce,
    /// Kafka transactions: a batch's outputs, changelog records and input
    /// offsets commit or abort together; readers see no copies. Needs a broker
    /// with transactions (Apache Kafka; not the embedded broker).
    ExactlyOnce,
    /// No changelog: publish, then commit group offsets. State lives in memory
    /// only and a crash replays inputs; the baseline the benchmarks compare against.
    #[value(hide = true)]
    AtLeastOnce,
}

impl Guarantee {
    /// Whether decisions are recorded in the changelog (state survives restarts).
    pub(crate) fn records(self) -> bool {
        self != Guarantee::AtLeastOnce
    }
}

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub kafka: KafkaArgs,
    pub names: TopicNames,
    /// Input topics (default names).
    pub inputs: Vec<&'static str>,
    pub max_in_flight: usize,
    pub max_batch: usize,
    pub dedupe_retention_ms: i64,
    /// `group.instance.id` for static membership.
    pub instance_id: Option<String>,
    /// Larger input records are poison (`oversized`).
    pub max_record_bytes: usize,
    pub assignor: Assignor,
    /// A task snapshots its state once it has written this many changelog
    /// bytes since its last snapshot (or as many as that snapshot's size,
    /// whichever is larger), so a restore reads at most about twice the state.
    pub snapshot_interval_bytes: u64,
    /// Changelog records stay about this size (a batch's commit; snapshot
    /// parts hold half of it); default [`super::CHANGELOG_RECORD_BYTES`].
    pub changelog_record_bytes: usize,
    /// Delete the changelog below a task's latest snapshot once it is written
    /// (committed, in exactly-once), so the changelog stays about the size of
    /// the state instead of its whole history.
    pub trim_changelog: bool,
    pub guarantee: Guarantee,
    /// Write a batch's partition tasks one after the other, not together
    /// (A/B measurements).
    pub serial_task_writes: bool,
    /// Where tasks keep their keys' states.
    pub store: crate::store::StoreConfig,
}

impl RuntimeConfig {
    /// Checks settings that only make sense together; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.assignor == Assignor::CooperativeSticky && self.inputs.len() > 1 {
            return Err(format!(
                "--assignor cooperative-sticky: this worker joins {} topics and needs the range assignor \
                 (partition p of every input on one instance)",
                self.inputs.len()
            ));
        }
        if self.max_in_flight == 0 || self.max_batch == 0 {
            return Err("--max-in-flight and --max-batch must be at least 1".into());
        }
        if self.changelog_record_bytes < 1024 {
            return Err("--changelog-record-bytes must be at least 1024".into());
        }
        if self.store.cache_keys == 0 {
            return Err("--state-cache-keys must be at least 1".into());
        }
        Ok(())
    }
}
