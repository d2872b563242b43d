//! Every Prometheus metric name the project exports, in one place, so
//! dashboards, alerts and the tests that check them agree with the binaries;
//! and the small HTTP server that exposes them (`/metrics`, `/health`, `/ready`).

/// Producer: events handed to the Kafka client, by topic and event type.
pub const PRODUCER_SENT: &str = "keyflow_producer_events_sent_total";
/// Producer: events acknowledged by the broker, by topic and event type.
pub const PRODUCER_ACKED: &str = "keyflow_producer_events_acked_total";
/// Producer: events whose delivery failed after retries, by topic and event type.
pub const PRODUCER_FAILED: &str = "keyflow_producer_events_failed_total";
/// Producer: re-sent facts injected on purpose (same idempotency_key).
pub const PRODUCER_DUPLICATES: &str = "keyflow_producer_duplicates_injected_total";
/// Producer: send → broker acknowledgement latency.
pub const PRODUCER_DELIVERY_SECONDS: &str = "keyflow_producer_delivery_latency_seconds";
/// Producer: waits because the local queue was full.
pub const PRODUCER_QUEUE_FULL: &str = "keyflow_producer_queue_full_waits_total";
/// Producer: retries of transient schema registry failures.
pub const PRODUCER_REGISTRY_RETRIES: &str = "keyflow_producer_registry_retries_total";

/// Worker: input records received, by topic.
pub const WORKER_CONSUMED: &str = "keyflow_worker_consumed_total";
/// Worker: inputs by outcome (`ok`, `duplicate`, `copy_dropped`, `stale`, `dlq`).
pub const WORKER_PROCESSED: &str = "keyflow_worker_processed_total";
/// Worker: records produced, by topic and event type (DLQ records have type `dlq`).
pub const WORKER_PRODUCED: &str = "keyflow_worker_produced_total";
/// Worker: time to decide, record and publish one batch.
pub const WORKER_BATCH_SECONDS: &str = "keyflow_worker_batch_seconds";
/// Worker: now − `occurred_at` of each applied input.
pub const WORKER_E2E_LATENCY_SECONDS: &str = "keyflow_worker_end_to_end_latency_seconds";
/// Worker: changelog commits (one per task batch).
pub const WORKER_CHECKPOINTS: &str = "keyflow_worker_checkpoints_total";
/// Worker: outbox records re-published after a restore.
pub const WORKER_REPUBLISHED: &str = "keyflow_worker_outbox_republished_total";
/// Worker: rebalance events, by kind (`assign`, `revoke`).
pub const WORKER_REBALANCES: &str = "keyflow_worker_rebalances_total";
/// Worker: partitions (tasks) currently assigned.
pub const WORKER_ASSIGNED: &str = "keyflow_worker_assigned_partitions";
/// Worker: consumer lag per input partition (from librdkafka statistics).
pub const WORKER_LAG: &str = "keyflow_worker_consumer_lag";
/// Worker: keys held in state.
pub const WORKER_STATE_KEYS: &str = "keyflow_worker_state_keys";
/// Worker: changelog records read by restores (counted as they are read).
pub const WORKER_RESTORE_RECORDS: &str = "keyflow_worker_restore_records_total";
/// Worker: changelog bytes read by restores.
pub const WORKER_RESTORE_BYTES: &str = "keyflow_worker_restore_bytes_total";
/// Worker: partitions being restored now (restore progress: the records and
/// bytes counters grow while this is above zero).
pub const WORKER_RESTORING: &str = "keyflow_worker_restoring_partitions";
/// Worker: duration of one task restore.
pub const WORKER_RESTORE_SECONDS: &str = "keyflow_worker_restore_seconds";
/// Worker: inputs of the batch being processed.
pub const WORKER_IN_FLIGHT: &str = "keyflow_worker_in_flight";
/// Worker: 1 once every assigned task is restored and processing.
pub const WORKER_READY: &str = "keyflow_worker_ready";
/// Worker: retries of transient failures (registry or broker unreachable).
pub const WORKER_RETRIES: &str = "keyflow_worker_transient_retries_total";
/// Worker: time to decide one input (histogram, seconds).
pub const WORKER_PROCESSING_SECONDS: &str = "keyflow_worker_processing_seconds";
/// Worker: inputs held back waiting for another input (e.g. requests without an approved contract).
pub const WORKER_PENDING: &str = "keyflow_worker_pending";
/// Worker: state snapshots written to the changelog.
pub const WORKER_SNAPSHOTS: &str = "keyflow_worker_snapshots_total";
/// Worker: changelog trims (DeleteRecords below the latest snapshot), by
/// result (`ok`, `failed`).
pub const WORKER_CHANGELOG_TRIMS: &str = "keyflow_worker_changelog_trims_total";
/// Worker: Kafka transactions ended, by result (`committed`, `aborted`);
/// only `--guarantee exactly-once` runs them, the series exist (at zero) in
/// every mode.
pub const WORKER_TRANSACTIONS: &str = "keyflow_worker_transactions_total";
/// Worker: bytes of the local state store on disk (`--state-store disk`).
pub const WORKER_STORE_BYTES: &str = "keyflow_worker_store_bytes";
/// Worker: key lookups in the local store's cache of hot keys, by result
/// (`hit`, `miss`: read from disk).
pub const WORKER_STORE_CACHE: &str = "keyflow_worker_store_cache_lookups_total";
/// Worker: how assigned tasks got their state, by result (`resumed`: the
/// local store was current or replayed the changelog tail; `rebuilt`: it
/// was missing, behind a trim, ahead, or from another changelog, and was
/// rebuilt from the latest snapshot).
pub const WORKER_STORE_STARTS: &str = "keyflow_worker_store_starts_total";
/// Worker: seconds from process start to the first processed input.
pub const WORKER_FIRST_RECORD_SECONDS: &str = "keyflow_worker_first_record_seconds";

/// Serves `/metrics` from `registry`, `/health` (200 when `health` says the
/// broker answers) and `/ready` (200 when `ready` is set) on `addr`.
pub async fn serve<H, F>(
    addr: std::net::SocketAddr,
    registry: prometheus::Registry,
    health: H,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), String>
where
    H: Fn() -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<(), String>> + Send,
{
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut buf = String::new();
                    // Encoding gathered metric families into a String cannot fail.
                    prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut buf).expect("text encoding");
                    buf
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let health = health.clone();
                async move {
                    match health().await {
                        Ok(()) => (StatusCode::OK, "ok".to_string()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
                    }
                }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(std::sync::atomic::Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "restoring")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
