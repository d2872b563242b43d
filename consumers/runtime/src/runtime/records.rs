//! Records in and out of a task: decoding inputs, DLQ records, the
//! outgoing records of a batch (outputs, changelog entries, markers), and
//! handing them to the producer and collecting their acknowledgements.

use super::*;

/// Decodes a record into an [`Input`].
pub(super) async fn decode(codec: &Codec, m: &BorrowedMessage<'_>, names: &TopicNames) -> Result<Input, CodecError> {
    let topic = m.topic();
    let payload = m.payload();
    let event: AnyEvent = if topic == names.get(OrderEvent::DEFAULT_TOPIC) {
        codec.decode::<OrderEvent>(topic, payload).await?.into()
    } else if topic == names.get(PaymentEvent::DEFAULT_TOPIC) {
        codec.decode::<PaymentEvent>(topic, payload).await?.into()
    } else if topic == names.get(ContractEvent::DEFAULT_TOPIC) {
        codec.decode::<ContractEvent>(topic, payload).await?.into()
    } else {
        codec.decode::<PropertyEvent>(topic, payload).await?.into()
    };
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
    if key != event.key() {
        return Err(CodecError::Contract(format!("record key '{key}' is not the event's key '{}'", event.key())));
    }
    let traceparent = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == headers::TRACEPARENT)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    Ok(Input { topic: topic.to_string(), partition: m.partition(), offset: m.offset(), key, event, traceparent })
}

/// A DLQ record: the original key and value (an oversized value is cut to
/// [`DLQ_OVERSIZED_KEEP_BYTES`], its size in `original.size`) and headers
/// saying why and where it came from.
pub(super) fn dlq_record(
    worker: &str,
    names: &TopicNames,
    m: &BorrowedMessage<'_>,
    class: &str,
    message: &str,
) -> OutboxRecord {
    let payload = m.payload().unwrap_or_default();
    let mut extra = vec![];
    let value = if class == "oversized" {
        extra.push((headers::ORIGINAL_SIZE.to_string(), payload.len().to_string().into_bytes()));
        payload[..payload.len().min(DLQ_OVERSIZED_KEEP_BYTES)].to_vec()
    } else {
        payload.to_vec()
    };
    OutboxRecord {
        topic: names.get(&dlq_topic(worker)),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
        value,
        headers: extra
            .into_iter()
            .chain([
                (headers::ERROR_CLASS.into(), class.as_bytes().to_vec()),
                (headers::ERROR_MESSAGE.into(), message.as_bytes().to_vec()),
                (headers::SOURCE_TOPIC.into(), m.topic().as_bytes().to_vec()),
                (headers::SOURCE_PARTITION.into(), m.partition().to_string().into_bytes()),
                (headers::SOURCE_OFFSET.into(), m.offset().to_string().into_bytes()),
                (headers::WORKER.into(), worker.as_bytes().to_vec()),
            ])
            .collect(),
    }
}

/// Kafka headers of an outbox record.
pub(super) fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v) }))
}

/// A record to produce: an outbox record, or a changelog entry for partition `p`.
pub(super) struct Outgoing<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: Option<i32>,
    pub(super) key: &'a str,
    pub(super) value: Vec<u8>,
    pub(super) headers: OwnedHeaders,
}

impl<'a> Outgoing<'a> {
    pub(super) fn outbox(o: &'a OutboxRecord) -> Self {
        Self {
            topic: &o.topic,
            partition: None,
            key: &o.key,
            value: o.value.clone(),
            headers: owned_headers(&o.headers),
        }
    }

    /// A changelog record; it carries the latest snapshot's offset and its
    /// writer's lineage (see [`SNAPSHOT_HEADER`], [`LINEAGE_HEADER`]).
    pub(super) fn changelog(topic: &'a str, p: i32, entry: &Entry, stamp: Stamp) -> anyhow::Result<Self> {
        let mut headers = OwnedHeaders::new();
        for (name, value) in [(SNAPSHOT_HEADER, stamp.snapshot), (LINEAGE_HEADER, stamp.lineage)] {
            if let Some(o) = value {
                headers = headers.insert(Header { key: name, value: Some(&o.to_string()) });
            }
        }
        Ok(Self { topic, partition: Some(p), key: entry.record_key(), value: serde_json::to_vec(entry)?, headers })
    }

    /// The marker saying batch `batch`'s outbox is published.
    pub(super) fn published(topic: &'a str, p: i32, batch: u64, stamp: Stamp) -> anyhow::Result<Self> {
        Self::changelog(topic, p, &Entry::Published { batch }, stamp)
    }

    pub(super) fn record(&self) -> FutureRecord<'_, str, Vec<u8>> {
        let r = FutureRecord::to(self.topic).key(self.key).payload(&self.value).headers(self.headers.clone());
        match self.partition {
            Some(p) => r.partition(p),
            None => r,
        }
    }
}

/// Queues the marker saying batch `batch` of partition `p` is published,
/// without waiting for its acknowledgement: a lost marker only makes a restore
/// re-publish the outbox byte for byte (copies consumers drop). Returns the
/// marker's size and delivery, or `None` (logged) when it could not be queued.
pub(super) fn queue_published(
    producer: &FutureProducer<Quiet>,
    topic: &str,
    p: i32,
    batch: u64,
    stamp: Stamp,
) -> Option<(u64, rdkafka::producer::DeliveryFuture)> {
    let queued = match Outgoing::published(topic, p, batch, stamp) {
        Ok(m) => match producer.send_result(m.record()) {
            Ok(d) => Ok((m.value.len() as u64, d)),
            Err((e, _)) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    queued
        .inspect_err(|e| {
            tracing::warn!(partition = p, batch, error = %e, "published marker not queued; a restore will re-publish")
        })
        .ok()
}

/// Snapshot parts sent before the oldest one must be acknowledged.
pub(super) const SNAPSHOT_PARTS_IN_FLIGHT: usize = 8;

/// Hands a record to the producer (its bytes are copied), waiting while the
/// producer's queue is full; the future resolves on the broker's answer.
pub(super) async fn enqueue(
    producer: &FutureProducer<Quiet>,
    o: &Outgoing<'_>,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    loop {
        match producer.send_result(o.record()) {
            Ok(f) => return Ok(f),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => anyhow::bail!("producing a {}-byte record to {} failed: {e}", o.value.len(), o.topic),
        }
    }
}

/// The offset of a delivered record, or why `what` was not delivered.
pub(super) fn delivered(
    d: Option<Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>>,
    what: impl std::fmt::Display,
) -> anyhow::Result<i64> {
    match d {
        Some(Ok(Ok(delivery))) => Ok(delivery.offset),
        Some(Ok(Err((e, _)))) => anyhow::bail!("producing {what} failed: {e}"),
        Some(Err(_)) | None => anyhow::bail!("producing {what}: the producer dropped it"),
    }
}

/// Produces all records and waits until every one is acknowledged; returns their offsets.
pub(super) async fn send_all(producer: &FutureProducer<Quiet>, records: &[Outgoing<'_>]) -> anyhow::Result<Vec<i64>> {
    let mut in_flight = Vec::with_capacity(records.len());
    for o in records {
        in_flight.push(enqueue(producer, o).await?);
    }
    let mut offsets = Vec::with_capacity(records.len());
    for (d, o) in futures::future::join_all(in_flight).await.into_iter().zip(records) {
        offsets.push(delivered(Some(d), format_args!("a {}-byte record to {}", o.value.len(), o.topic))?);
    }
    Ok(offsets)
}

/// The changelog records of one decided batch (its [`changelog::batch_entries`])
/// for partition `p` of `topic`.
pub(super) fn decision_records<'a>(
    topic: &'a str,
    p: i32,
    entries: &[changelog::Entry],
    stamp: Stamp,
) -> anyhow::Result<Vec<Outgoing<'a>>> {
    // The record key is not used: every changelog record names its partition.
    entries.iter().map(|e| Outgoing::changelog(topic, p, e, stamp)).collect()
}
