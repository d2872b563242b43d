//! The worker's Prometheus metrics. Names come from
//! `keyflow_schemas::metrics`, the one place that defines them; every metric
//! carries the worker's name as a constant label.

use keyflow_schemas::metrics as n;

use crate::task::Outcome;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The worker's metrics and their registry.
#[derive(Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    pub consumed: IntCounterVec,
    pub processed: IntCounterVec,
    pub produced: IntCounterVec,
    pub batch_seconds: Histogram,
    pub e2e_latency: Histogram,
    pub checkpoints: IntCounter,
    pub republished: IntCounter,
    pub rebalances: IntCounterVec,
    pub assigned: IntGauge,
    pub lag: IntGaugeVec,
    pub state_keys: IntGauge,
    pub restore_records: IntCounter,
    pub restore_bytes: IntCounter,
    pub restore_seconds: Histogram,
    pub restoring: IntGauge,
    pub in_flight: IntGauge,
    pub ready: IntGauge,
    pub retries: IntCounterVec,
    pub processing_seconds: Histogram,
    pub pending: IntGauge,
    pub snapshots: IntCounter,
    pub trims: IntCounterVec,
    pub transactions: IntCounterVec,
    pub store_bytes: IntGauge,
    pub store_cache: IntCounterVec,
    pub store_starts: IntCounterVec,
    pub first_record_seconds: prometheus::Gauge,
}

/// `result` label of [`n::WORKER_CHANGELOG_TRIMS`].
pub const TRIM_OK: &str = "ok";
pub const TRIM_FAILED: &str = "failed";

/// `kind` label of [`n::WORKER_REBALANCES`].
pub const REBALANCE_ASSIGN: &str = "assign";
pub const REBALANCE_REVOKE: &str = "revoke";
/// `cause` label of [`n::WORKER_RETRIES`].
pub const RETRY_REGISTRY: &str = "registry";
pub const RETRY_BROKER: &str = "broker";
pub const RETRY_RESTORE: &str = "restore";
/// `result` label of [`n::WORKER_TRANSACTIONS`].
pub const TXN_COMMITTED: &str = "committed";
pub const TXN_ABORTED: &str = "aborted";
/// `result` label of [`n::WORKER_STORE_CACHE`].
pub const CACHE_HIT: &str = "hit";
pub const CACHE_MISS: &str = "miss";
/// `result` label of [`n::WORKER_STORE_STARTS`].
pub const STORE_RESUMED: &str = "resumed";
pub const STORE_REBUILT: &str = "rebuilt";

const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl WorkerMetrics {
    /// Metrics labelled `worker=<name>`.
    pub fn new(worker: &str) -> Self {
        let registry = Registry::new_custom(None, Some([("worker".to_string(), worker.to_string())].into()))
            .expect("valid constant label");
        // Names and label sets are static and valid; registering them cannot fail.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).expect("valid metric"));
        let gauge = |name: &str, help: &str| reg(&registry, IntGauge::new(name, help).expect("valid metric"));
        let histogram = |name: &str, help: &str| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
                    .expect("valid metric"),
            )
        };
        let m = Self {
            consumed: counter_vec(n::WORKER_CONSUMED, "Input records received.", &["topic"]),
            processed: counter_vec(n::WORKER_PROCESSED, "Inputs by outcome.", &["outcome"]),
            produced: counter_vec(n::WORKER_PRODUCED, "Records produced.", &["topic", "type"]),
            batch_seconds: histogram(n::WORKER_BATCH_SECONDS, "Time to decide, record and publish a batch."),
            e2e_latency: histogram(n::WORKER_E2E_LATENCY_SECONDS, "now - occurred_at of applied inputs."),
            checkpoints: counter(n::WORKER_CHECKPOINTS, "Changelog commits."),
            republished: counter(n::WORKER_REPUBLISHED, "Outbox records re-published after a restore."),
            rebalances: counter_vec(n::WORKER_REBALANCES, "Rebalance events.", &["kind"]),
            assigned: gauge(n::WORKER_ASSIGNED, "Partitions (tasks) assigned."),
            lag: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(n::WORKER_LAG, "Consumer lag per input partition."),
                    &["topic", "partition"],
                )
                .expect("valid metric"),
            ),
            state_keys: gauge(n::WORKER_STATE_KEYS, "Keys held in state."),
            restore_records: counter(n::WORKER_RESTORE_RECORDS, "Changelog records read by restores."),
            restore_bytes: counter(n::WORKER_RESTORE_BYTES, "Changelog bytes read by restores."),
            restore_seconds: histogram(n::WORKER_RESTORE_SECONDS, "Duration of a task restore."),
            restoring: gauge(n::WORKER_RESTORING, "Partitions being restored now."),
            in_flight: gauge(n::WORKER_IN_FLIGHT, "Inputs of the batch being processed."),
            ready: gauge(n::WORKER_READY, "1 once every assigned task is restored."),
            retries: counter_vec(n::WORKER_RETRIES, "Retries of transient failures.", &["cause"]),
            processing_seconds: histogram(n::WORKER_PROCESSING_SECONDS, "Time to decide one input."),
            pending: gauge(n::WORKER_PENDING, "Inputs waiting for another input."),
            snapshots: counter(n::WORKER_SNAPSHOTS, "State snapshots written to the changelog."),
            trims: counter_vec(
                n::WORKER_CHANGELOG_TRIMS,
                "Changelog trims below the latest snapshot, by result.",
                &["result"],
            ),
            transactions: counter_vec(n::WORKER_TRANSACTIONS, "Kafka transactions ended, by result.", &["result"]),
            store_bytes: gauge(n::WORKER_STORE_BYTES, "Bytes of the local state store on disk."),
            store_cache: counter_vec(n::WORKER_STORE_CACHE, "Local store cache lookups, by result.", &["result"]),
            store_starts: counter_vec(
                n::WORKER_STORE_STARTS,
                "Tasks started from their local store (resumed) or rebuilt from a snapshot.",
                &["result"],
            ),
            first_record_seconds: reg(
                &registry,
                prometheus::Gauge::new(
                    n::WORKER_FIRST_RECORD_SECONDS,
                    "Seconds from start to the first processed input.",
                )
                .expect("valid metric"),
            ),
            registry,
        };
        // Every series of a known label value exists from the start (at zero),
        // so rates and alerts over them work before the first occurrence.
        for o in Outcome::LABELS {
            m.processed.with_label_values(&[o]);
        }
        for k in [REBALANCE_ASSIGN, REBALANCE_REVOKE] {
            m.rebalances.with_label_values(&[k]);
        }
        for c in [RETRY_REGISTRY, RETRY_BROKER, RETRY_RESTORE] {
            m.retries.with_label_values(&[c]);
        }
        for r in [TXN_COMMITTED, TXN_ABORTED] {
            m.transactions.with_label_values(&[r]);
        }
        for r in [TRIM_OK, TRIM_FAILED] {
            m.trims.with_label_values(&[r]);
        }
        for r in [CACHE_HIT, CACHE_MISS] {
            m.store_cache.with_label_values(&[r]);
        }
        for r in [STORE_RESUMED, STORE_REBUILT] {
            m.store_starts.with_label_values(&[r]);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_metric_is_registered_under_its_shared_name() {
        let m = WorkerMetrics::new("payment");
        m.consumed.with_label_values(&["orders"]).inc();
        m.processed.with_label_values(&["ok"]).inc();
        m.produced.with_label_values(&["payments", "PaymentAuthorized"]).inc();
        m.lag.with_label_values(&["orders", "0"]).set(3);
        let names: Vec<String> = m.registry.gather().iter().map(|f| f.name().to_string()).collect();
        for want in [
            n::WORKER_CONSUMED,
            n::WORKER_PROCESSED,
            n::WORKER_PRODUCED,
            n::WORKER_BATCH_SECONDS,
            n::WORKER_E2E_LATENCY_SECONDS,
            n::WORKER_CHECKPOINTS,
            n::WORKER_REPUBLISHED,
            n::WORKER_REBALANCES,
            n::WORKER_ASSIGNED,
            n::WORKER_LAG,
            n::WORKER_STATE_KEYS,
            n::WORKER_RESTORE_RECORDS,
            n::WORKER_RESTORE_BYTES,
            n::WORKER_RESTORE_SECONDS,
            n::WORKER_RESTORING,
            n::WORKER_IN_FLIGHT,
            n::WORKER_READY,
            n::WORKER_RETRIES,
            n::WORKER_PROCESSING_SECONDS,
            n::WORKER_PENDING,
            n::WORKER_SNAPSHOTS,
            n::WORKER_CHANGELOG_TRIMS,
            n::WORKER_TRANSACTIONS,
            n::WORKER_STORE_BYTES,
            n::WORKER_STORE_CACHE,
            n::WORKER_STORE_STARTS,
            n::WORKER_FIRST_RECORD_SECONDS,
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing");
        }
    }
}
