//! Sending planned events: Avro-encode through the registry (cached ids),
//! produce with the idempotent producer (acks=all, the project's
//! partitioner), and track every delivery. Nothing is dropped silently: a
//! full local queue makes the sender wait, a transient registry failure is
//! retried with backoff, and a delivery that fails after librdkafka's own
//! retries (`delivery.timeout.ms`) is counted as failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use keyflow_schemas::events::AnyEvent;
use keyflow_schemas::kafka::Quiet;
use keyflow_schemas::topics::TopicNames;
use keyflow_schemas::{Codec, CodecError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;

use crate::gen::Planned;
use crate::stats::Stats;

/// A send that cannot succeed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("encoding {record} for {topic}: {source}")]
    Encode { record: String, topic: String, source: CodecError },
    #[error("producing to {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
}

struct Pending {
    delivery: DeliveryFuture,
    sent_at: Instant,
    topic: String,
    record: &'static str,
    event_id: String,
}

/// The producing end of a run.
pub struct Sink {
    producer: FutureProducer<Quiet>,
    codec: Arc<Codec>,
    names: TopicNames,
    stats: Arc<Stats>,
    pending: mpsc::Sender<Pending>,
}

impl Sink {
    /// A sink and the task that tracks deliveries (await it after [`Sink::close`]).
    pub fn new(
        producer: FutureProducer<Quiet>,
        codec: Arc<Codec>,
        names: TopicNames,
        stats: Arc<Stats>,
    ) -> (Sink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(100_000);
        let tracker = tokio::spawn(track(rx, stats.clone()));
        (Sink { producer, codec, names, stats, pending: tx }, tracker)
    }

    /// Encodes and enqueues one event; waits while the local queue is full.
    pub async fn send(&self, p: &Planned) -> Result<(), SinkError> {
        let topic = self.names.get(p.event.default_topic());
        let payload = self.encode(&topic, &p.event).await?;
        let meta = p.event.metadata();
        let headers = OwnedHeaders::new().insert(Header {
            key: keyflow_schemas::headers::TRACEPARENT,
            value: Some(&keyflow_schemas::headers::root_traceparent(&meta.event_id)),
        });
        let mut record = FutureRecord::to(&topic).key(p.event.key()).payload(&payload).headers(headers);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.stats.on_sent(&topic, p.event.record_name(), p.category, p.duplicate);
                    let pending = Pending {
                        delivery,
                        sent_at: Instant::now(),
                        topic: topic.clone(),
                        record: p.event.record_name(),
                        event_id: meta.event_id.clone(),
                    };
                    // The tracker lives until every sender is dropped.
                    let _ = self.pending.send(pending).await;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.stats.on_queue_full();
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((source, _)) => return Err(SinkError::Produce { topic, source }),
            }
        }
    }

    async fn encode(&self, topic: &str, event: &AnyEvent) -> Result<Vec<u8>, SinkError> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.codec.encode_any(topic, event).await {
                Ok(b) => return Ok(b),
                Err(e) if e.is_transient() => {
                    self.stats.on_registry_retry();
                    tracing::warn!(error = %e, retry_in = ?delay, "schema registry unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(source) => {
                    return Err(SinkError::Encode { record: event.record_name().into(), topic: topic.into(), source })
                }
            }
        }
    }

    /// Flushes what is in flight (up to `timeout`) and ends the tracker.
    pub fn close(self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::error!(error = %e, "flush did not finish; undelivered events are counted as failed");
        }
    }
}

async fn track(mut rx: mpsc::Receiver<Pending>, stats: Arc<Stats>) {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            p = rx.recv(), if open => match p {
                Some(p) => inflight.push(async move {
                    let res = p.delivery.await;
                    (res, p.sent_at.elapsed(), p.topic, p.record, p.event_id)
                }),
                None => open = false,
            },
            Some((res, latency, topic, record, event_id)) = inflight.next(), if !inflight.is_empty() => match res {
                Ok(Ok(_)) => stats.on_acked(&topic, record, latency),
                Ok(Err((e, _))) => {
                    stats.on_failed(&topic, record);
                    tracing::error!(%topic, %event_id, error = %e, "delivery failed");
                }
                Err(_) => {
                    stats.on_failed(&topic, record);
                    tracing::error!(%topic, %event_id, "delivery dropped by the producer");
                }
            },
            else => break,
        }
    }
}
