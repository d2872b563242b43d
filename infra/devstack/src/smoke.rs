//! `devstack smoke`: produces one Avro event of every type through the
//! registry and reads each back from its partition and offset, proving the
//! contracts, the codec, the registry and the broker work end to end.

use std::time::{Duration, Instant};

use keyflow_schemas::client::{KafkaArgs, RegistryArgs};
use keyflow_schemas::events::TopicEvent;
use keyflow_schemas::kafka::Quiet;
use keyflow_schemas::samples::samples;
use keyflow_schemas::Codec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::kafka::{client_config, PRODUCER_DEFAULTS};

/// One event produced and read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SmokeLine {
    pub topic: String,
    pub record: &'static str,
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub schema_id: u32,
    pub bytes: usize,
    pub read_back: bool,
}

/// What the smoke run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SmokeReport {
    pub events: Vec<SmokeLine>,
    pub elapsed_ms: u128,
    pub ok: bool,
}

struct Ctx<'a> {
    codec: &'a Codec,
    producer: FutureProducer<Quiet>,
    kafka: &'a KafkaArgs,
}

impl Ctx<'_> {
    async fn roundtrip<E: TopicEvent + PartialEq>(&self, events: &[E], out: &mut Vec<SmokeLine>) -> anyhow::Result<()> {
        let topic = E::DEFAULT_TOPIC;
        for event in events {
            let payload = self.codec.encode(topic, event).await?;
            let rdkafka::producer::future_producer::Delivery { partition, offset, .. } = self
                .producer
                .send(FutureRecord::to(topic).key(event.key()).payload(&payload), Duration::from_secs(30))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("producing {} to {topic}: {e}", event.record_name()))?;
            let read = self.read_at(topic, partition, offset).await?;
            let back: E = self.codec.decode(topic, read.as_deref()).await?;
            out.push(SmokeLine {
                topic: topic.to_string(),
                record: event.record_name(),
                key: event.key().to_string(),
                partition,
                offset,
                schema_id: Codec::schema_id(Some(&payload))?,
                bytes: payload.len(),
                read_back: &back == event,
            });
        }
        Ok(())
    }

    async fn read_at(&self, topic: &str, partition: i32, offset: i64) -> anyhow::Result<Option<Vec<u8>>> {
        let consumer: BaseConsumer<Quiet> =
            keyflow_schemas::kafka::reader_config(self.kafka, "keyflow-devstack-smoke")?.create_with_context(Quiet)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        consumer.assign(&tpl)?;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) if m.offset() == offset => return Ok(m.payload().map(<[u8]>::to_vec)),
                    Some(Err(e)) => return Err(anyhow::anyhow!("reading {topic}[{partition}]@{offset}: {e}")),
                    _ => {}
                }
            }
            Err(anyhow::anyhow!("record {topic}[{partition}]@{offset} not readable within 30 s"))
        })
        .await?
    }
}

/// Runs the smoke round trip against any cluster and registry.
pub async fn run(kafka: &KafkaArgs, registry: &RegistryArgs) -> anyhow::Result<SmokeReport> {
    let start = Instant::now();
    let codec = Codec::new(&registry.config().map_err(anyhow::Error::msg)?)?;
    let producer: FutureProducer<Quiet> = client_config(kafka, PRODUCER_DEFAULTS)?.create_with_context(Quiet)?;
    let ctx = Ctx { codec: &codec, producer, kafka };
    let run_id = uuid::Uuid::new_v4().to_string();
    let s = samples(&run_id);
    let mut events = Vec::new();
    ctx.roundtrip(&s.orders, &mut events).await?;
    ctx.roundtrip(&s.payments, &mut events).await?;
    ctx.roundtrip(&s.fulfillments, &mut events).await?;
    ctx.roundtrip(&s.loyalty, &mut events).await?;
    ctx.roundtrip(&s.contracts, &mut events).await?;
    ctx.roundtrip(&s.properties, &mut events).await?;
    ctx.roundtrip(&s.evaluations, &mut events).await?;
    let ok = events.iter().all(|e| e.read_back);
    Ok(SmokeReport { events, elapsed_ms: start.elapsed().as_millis(), ok })
}

impl SmokeReport {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<24} {:<31} {:>4} {:>7} {:>6} {:>6}  {}\n",
            "topic", "record", "part", "offset", "schema", "bytes", "read back"
        );
        for e in &self.events {
            s += &format!(
                "{:<24} {:<31} {:>4} {:>7} {:>6} {:>6}  {}\n",
                e.topic,
                e.record,
                e.partition,
                e.offset,
                e.schema_id,
                e.bytes,
                if e.read_back { "identical" } else { "DIFFERENT" }
            );
        }
        s
    }
}
