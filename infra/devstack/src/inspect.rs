//! Small inspection commands for the dev stack (and any cluster): list topics
//! with partition counts, and print records decoded through the registry.
//! (Debian's kcat is too old for the embedded broker; see README.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::kafka::Quiet;
use keyflow_schemas::Codec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::kafka::partition_count;
use keyflow_schemas::kafka::{position, reader_config};

/// One record as read from the topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Option<Vec<u8>>,
}

impl RawRecord {
    pub fn from_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        RawRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The key as text (empty when null).
    pub fn key_text(&self) -> String {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default()
    }
}

/// One record as a JSON object: topic, partition, offset, timestamp (ms),
/// time (RFC 3339), key, headers (name → text), and either type (e.g.
/// `OrderPlaced`), record (the full Avro name), schema_id and value (the
/// decoded record) or error (why it does not decode).
pub async fn record_json(codec: &Codec, topic: &str, r: &RawRecord) -> Value {
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |v| Value::String(String::from_utf8_lossy(v).into()))))
        .collect();
    let mut v = json!({
        "topic": topic, "partition": r.partition, "offset": r.offset,
        "timestamp": r.timestamp, "time": r.timestamp.map(format_rfc3339),
        "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
    });
    match codec.decode_json(r.payload.as_deref()).await {
        Ok(d) => {
            v["type"] = json!(d.record.rsplit('.').next().unwrap_or(&d.record));
            v["record"] = json!(d.record);
            v["schema_id"] = json!(d.schema_id);
            v["value"] = d.json;
        }
        Err(e) => v["error"] = json!(e.to_string()),
    }
    v
}

/// ms since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_rfc3339(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Streams one partition from its low to its high watermark (as of the
/// call) in batches through a bounded channel, so a reader of millions of
/// records holds only a few batches at a time. A read error ends the stream
/// with an `Err` item.
pub fn stream_partition(
    kafka: &KafkaArgs,
    topic: &str,
    partition: i32,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<anyhow::Result<Vec<RawRecord>>>> {
    let timeout = Duration::from_secs(15);
    let consumer: BaseConsumer<Quiet> = reader_config(kafka, "keyflow-devstack-read")?.create_with_context(Quiet)?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    if high <= low {
        return Ok(rx);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let topic = topic.to_string();
    std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(1024);
        let mut last_progress = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.offset() < high => {
                    last_progress = Instant::now();
                    let done = m.offset() + 1 >= high;
                    batch.push(RawRecord::from_message(&m));
                    if (batch.len() >= 1024 || done) && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                        return;
                    }
                    if done {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.blocking_send(Err(anyhow::anyhow!("reading {topic}[{partition}]: {e}")));
                    return;
                }
                // Past the end with no record at it: a transaction marker ends the range.
                None if position(&consumer, &topic, partition).is_some_and(|o| o >= high) => {
                    let _ = tx.blocking_send(Ok(std::mem::take(&mut batch)));
                    return;
                }
                None if last_progress.elapsed() > Duration::from_secs(120) => {
                    let _ = tx.blocking_send(Err(anyhow::anyhow!(
                        "reading {topic}[{partition}] stalled for 120 s before offset {high}"
                    )));
                    return;
                }
                None => {}
            }
        }
    });
    Ok(rx)
}

/// Reads up to `limit` records of `topic` from the beginning of every
/// partition, stopping at the end of the topic (its high watermarks when the
/// read starts), ordered by partition then offset.
pub async fn read_raw(kafka: &KafkaArgs, topic: &str, limit: usize) -> anyhow::Result<Vec<RawRecord>> {
    let timeout = Duration::from_secs(15);
    let partitions = partition_count(kafka, topic, timeout)?;
    let consumer: BaseConsumer<Quiet> = reader_config(kafka, "keyflow-devstack-peek")?.create_with_context(Quiet)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            remaining.insert(p, high);
        }
    }
    if remaining.is_empty() {
        return Ok(vec![]);
    }
    consumer.assign(&tpl)?;
    let topic = topic.to_string();
    let mut out = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<RawRecord>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !remaining.is_empty() && out.len() < limit {
            anyhow::ensure!(Instant::now() < deadline, "reading did not reach the end of the topic within 120 s");
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let Some(&high) = remaining.get(&m.partition()) else { continue };
                    if m.offset() + 1 >= high {
                        remaining.remove(&m.partition());
                    }
                    if m.offset() >= high {
                        continue;
                    }
                    out.push(RawRecord::from_message(&m));
                }
                Some(Err(e)) => return Err(e.into()),
                // Past the end with no record at it: a transaction marker ends the range.
                None => remaining.retain(|&p, &mut high| position(&consumer, &topic, p).is_none_or(|o| o < high)),
            }
        }
        Ok(out)
    })
    .await??;
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// Reads like [`read_raw`] and decodes every value through the registry
/// (one JSON object per record, as `devstack tail` prints them).
pub async fn peek(
    kafka: &KafkaArgs,
    codec: &Codec,
    topic: &str,
    limit: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for r in read_raw(kafka, topic, limit).await? {
        out.push(record_json(codec, topic, &r).await);
    }
    Ok(out)
}
