//! Small inspection commands for the dev stack (and any cluster): list topics
//! with partition counts, and print records decoded through the registry.
//! (Debian's kcat is too old for the embedded broker; see README.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::Codec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::kafka::{client_config, partition_count};

/// Reads up to `limit` records of `topic` from the beginning of every
/// partition (stopping early at the end of the topic) and returns them as
/// JSON objects: topic, partition, offset, timestamp, key, headers, record,
/// schema_id, value (or `error` when a value does not decode).
pub async fn peek(
    kafka: &KafkaArgs,
    codec: &Codec,
    topic: &str,
    limit: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let timeout = Duration::from_secs(15);
    let partitions = partition_count(kafka, topic, timeout)?;
    let consumer: BaseConsumer =
        client_config(kafka, &[("group.id", "keyflow-devstack-peek"), ("enable.auto.commit", "false")])?.create()?;
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
    let raw = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<_>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !remaining.is_empty() && out.len() < limit && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if m.offset() + 1 >= remaining.get(&m.partition()).copied().unwrap_or(0) {
                        remaining.remove(&m.partition());
                    }
                    let headers: Vec<serde_json::Value> = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| json!({h.key: h.value.map(|v| String::from_utf8_lossy(v).into_owned())}))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push((
                        m.partition(),
                        m.offset(),
                        m.timestamp().to_millis(),
                        m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        headers,
                        m.payload().map(<[u8]>::to_vec),
                    ));
                }
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
        Ok(out)
    })
    .await??;
    let mut out = Vec::with_capacity(raw.len());
    for (partition, offset, ts, key, headers, payload) in raw {
        let mut v = json!({
            "topic": topic, "partition": partition, "offset": offset,
            "timestamp": ts, "key": key, "headers": headers,
        });
        match codec.decode_json(payload.as_deref()).await {
            Ok(d) => {
                v["record"] = json!(d.record);
                v["schema_id"] = json!(d.schema_id);
                v["value"] = d.json;
            }
            Err(e) => v["error"] = json!(e.to_string()),
        }
        out.push(v);
    }
    Ok(out)
}
