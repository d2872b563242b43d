//! librdkafka clients built from the shared settings ([`crate::client`]),
//! and topic metadata lookups on any Kafka-API cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::{KafkaArgs, PARTITIONER};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

/// Why a Kafka admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid Kafka client setting: {0}")]
    Config(String),
    #[error(
        "cannot reach the Kafka cluster at {brokers} within {timeout:?} (set by -b/--brokers or KAFKA_BROKERS): \
         {message}"
    )]
    Unreachable { brokers: String, timeout: Duration, message: String },
    #[error(
        "the Kafka cluster at {brokers} refused authentication: {message} (check the SASL settings: \
         -X sasl.username / -X sasl.password, or the --config-file)"
    )]
    Authentication { brokers: String, message: String },
    #[error("creating topic {topic} failed: {message}")]
    Create { topic: String, message: String },
    #[error("topic {topic} does not exist on {brokers} (known topics: {known})")]
    UnknownTopic { topic: String, brokers: String, known: String },
}

/// The context of every client the project's binaries create: librdkafka's
/// log lines and errors reach the logs once; the same line again within
/// [`REPEAT_WINDOW`] (numbers aside) is counted instead, and the count is
/// logged with its next occurrence. (librdkafka repeats a connection error
/// every few hundred milliseconds, and reports some errors twice.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        report_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        report_error(&error, reason);
    }
}

impl ConsumerContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// How long an identical librdkafka line stays counted rather than logged.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// Whether `text` should be logged now, and how many like it were held back
/// since it last was; `None` while it repeats within [`REPEAT_WINDOW`].
fn first_in_window(text: &str) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    use std::time::Instant;
    static SEEN: LazyLock<Mutex<HashMap<String, (Instant, u64)>>> = LazyLock::new(Default::default);
    let key: String = text.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match seen.get_mut(&key) {
        Some((last, held)) if now.duration_since(*last) < REPEAT_WINDOW => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            *last = now;
            Some(std::mem::take(held))
        }
        None => {
            if seen.len() >= 4096 {
                seen.clear();
            }
            seen.insert(key, (now, 0));
            Some(0)
        }
    }
}

/// `text`, with the count of its held-back repeats.
fn with_repeats(text: String, held: u64) -> String {
    match held {
        0 => text,
        n => format!("{text} (and {n} more like it in the last {}s)", REPEAT_WINDOW.as_secs()),
    }
}

/// Logs a librdkafka log line (see [`Quiet`]); for clients with a context of their own.
pub fn report_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    let text = format!("librdkafka: {fac} {message}");
    let Some(held) = first_in_window(&text) else { return };
    let text = with_repeats(text, held);
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "{text}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{text}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{text}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{text}"),
    }
}

/// Logs a librdkafka error event (see [`Quiet`]); for clients with a context of their own.
pub fn report_error(error: &rdkafka::error::KafkaError, reason: &str) {
    let text = format!("librdkafka: {error}: {reason}");
    if let Some(held) = first_in_window(&text) {
        tracing::error!(target: "librdkafka", "{}", with_repeats(text, held));
    }
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

/// How long a worker's fetch may wait on the broker for data. Kafka and the
/// embedded broker answer as soon as data arrives, so this only bounds idle
/// polling. (It was chosen for Tansu, which slept before answering every
/// fetch: infra/BROKER-NOTES.md.)
pub const FETCH_WAIT_MS: &str = "50";

/// Where a reader stands in `topic[p]`: the offset of the next record it
/// would return. It moves past transaction markers too, which are never
/// delivered: on a transactional topic the last offset before the end is
/// usually a marker, so a reader knows it reached the end by its position,
/// not by the last record's offset.
pub fn position<C: ConsumerContext>(consumer: &impl Consumer<C>, topic: &str, p: i32) -> Option<i64> {
    match consumer.position().ok()?.find_partition(topic, p)?.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// A client for reading partitions to their end (restores, the verifier,
/// inspection): no offset commits, short fetch waits (see [`FETCH_WAIT_MS`]), a bounded
/// prefetch queue, and an error instead of a silent jump when the broker
/// says an offset is out of range (a reader that skipped records would
/// restore or verify from a hole).
///
/// A full prefetch queue makes librdkafka wait `fetch.queue.backoff.ms`
/// (default 1 s) before fetching again: a reader that drains 16 MiB in a
/// fifth of a second then idles the rest. Measured on a 116 MB changelog:
/// 18 MB/s with the default, the broker's speed with a short backoff.
pub fn reader_config(kafka: &KafkaArgs, group: &str) -> Result<ClientConfig, KafkaError> {
    client_config(
        kafka,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "error"),
            ("fetch.wait.max.ms", "10"),
            ("queued.max.messages.kbytes", "16384"),
            ("fetch.queue.backoff.ms", "10"),
        ],
    )
}

/// The context of one-shot metadata probes: silent (their caller reports
/// one line), keeping an authentication failure, which the metadata request
/// itself only reports as a transport failure.
#[derive(Default)]
struct Probe {
    auth_failure: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Probe {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) > (RDKafkaLogLevel::Error as i32) {
            report_log(level, fac, log_message);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Authentication) {
            *self.auth_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
    }
}

impl ConsumerContext for Probe {}

/// Topic name → partition count, as the cluster reports it.
pub fn list_topics(kafka: &KafkaArgs, timeout: Duration) -> Result<BTreeMap<String, i32>, KafkaError> {
    let consumer: BaseConsumer<Probe> = client_config(kafka, &[])?
        .create_with_context(Probe::default())
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let md = consumer.fetch_metadata(None, timeout).map_err(|e| {
        // Error events wait in the client's queue until it is polled.
        for _ in 0..5 {
            let _ = consumer.poll(Duration::from_millis(20));
        }
        let auth = consumer.context().auth_failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match auth {
            Some(message) => KafkaError::Authentication { brokers: kafka.brokers.clone(), message },
            None => KafkaError::Unreachable { brokers: kafka.brokers.clone(), timeout, message: e.to_string() },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_repeated_within_the_window_is_held_back_and_counted_numbers_aside() {
        let line = "librdkafka: FAIL 127.0.0.1:1/bootstrap: Connect failed (after 0ms in state CONNECT)";
        assert_eq!(first_in_window(line), Some(0), "the first is logged");
        assert_eq!(first_in_window(&line.replace("0ms", "3ms")), None, "the same line, other numbers: held");
        assert_eq!(first_in_window(line), None);
        assert_eq!(first_in_window("librdkafka: another line"), Some(0), "a different line is logged");
        assert_eq!(with_repeats("x".into(), 2), "x (and 2 more like it in the last 30s)");
    }
}
