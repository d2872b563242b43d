//! Every Prometheus metric name the project exports, in one place, so
//! dashboards, alerts and the tests that check them agree with the binaries.

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
