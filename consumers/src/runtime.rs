//! The worker runtime: a consumer-group member that runs partition tasks
//! with the effectively-once protocol of [`crate::changelog`].
//!
//! Guarantee: every input changes state and causes its outputs once, across
//! crashes and rebalances, on any Kafka-API broker (no transactions): per
//! batch the task *records* the decision (state, outbox, checkpoint) in its
//! changelog partition and waits for the acks, then *publishes* the outbox,
//! marks it published and commits group offsets (for lag monitoring only).
//! On assignment a task restores from the changelog, re-publishes an
//! unpublished outbox byte for byte (same `event_id`s) and resumes from its
//! checkpoint, never from the group offset. Limit: a crash between publish
//! and marker leaves byte-identical copies, which consumers drop.
//!
//! Rebalances use an eager protocol (the range assignor co-partitions joins);
//! callbacks run inside `recv()`, between batches, so nothing is in flight
//! when partitions are revoked.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::events::*;
use keyflow_schemas::kafka::{client_config, PRODUCER_DEFAULTS};
use keyflow_schemas::topics::{dlq_topic, state_topic, TopicNames};
use keyflow_schemas::{Codec, CodecError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::changelog::{self, Entry, OutboxRecord};
use crate::keyed::KeyedRunner;
use crate::metrics::WorkerMetrics;
use crate::task::{process_batch, Input, KeyState, Outcome, Worker};

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
}

/// A batch's commit record carries its state changes when it stays below this.
const MAX_COMMIT_BYTES: usize = 512 * 1024;

/// How much of an oversized record's value the DLQ keeps.
pub const DLQ_OVERSIZED_KEEP_BYTES: usize = 64 * 1024;

/// One partition task's live state.
struct Task<S> {
    states: HashMap<String, KeyState<S>>,
    next_batch: u64,
}

type Tasks<S> = Arc<Mutex<HashMap<i32, Task<S>>>>;

/// Consumer context: restores tasks when partitions are assigned.
struct Ctx<S> {
    worker: &'static str,
    cfg: RuntimeConfig,
    tasks: Tasks<S>,
    metrics: WorkerMetrics,
    ready: Arc<AtomicBool>,
}

impl<S> ClientContext for Ctx<S>
where
    S: Send + Sync + 'static,
{
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics.lag.with_label_values(&[topic.as_str(), &p.to_string()]).set(part.consumer_lag);
                }
            }
        }
    }
}

impl<S> ConsumerContext for Ctx<S>
where
    S: serde::de::DeserializeOwned + Default + Send + Sync + 'static,
{
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.ready.store(false, Ordering::Relaxed);
                self.metrics.ready.set(0);
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // A join task needs partition p of every input: never process half a task.
                let mut per_topic: BTreeMap<String, std::collections::BTreeSet<i32>> = BTreeMap::new();
                for e in tpl.elements() {
                    per_topic.entry(e.topic().to_string()).or_default().insert(e.partition());
                }
                let sets: Vec<_> = per_topic.values().collect();
                if per_topic.len() != self.cfg.inputs.len() || sets.windows(2).any(|w| w[0] != w[1]) {
                    tracing::error!(worker = self.worker, assignment = ?per_topic, "assignment is not co-partitioned (use the range assignor); exiting");
                    std::process::exit(70);
                }
                let mut with_offsets = TopicPartitionList::new();
                let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
                for p in partitions.iter().copied().collect::<std::collections::BTreeSet<_>>() {
                    let started = Instant::now();
                    match restore_task::<S>(self.worker, &self.cfg, p) {
                        Ok((task, checkpoint, stats)) => {
                            self.metrics.restore_seconds.observe(started.elapsed().as_secs_f64());
                            self.metrics.restore_records.inc_by(stats.records);
                            self.metrics.republished.inc_by(stats.republished);
                            for t in &self.cfg.inputs {
                                let topic = self.cfg.names.get(t);
                                let offset = checkpoint
                                    .get(&format!("{topic}/{p}"))
                                    .map_or(Offset::Stored, |o| Offset::Offset(*o));
                                let _ = with_offsets.add_partition_offset(&topic, p, offset);
                            }
                            tasks.insert(p, task);
                        }
                        Err(e) => {
                            // Without its state a task must not run: fail loudly, the
                            // supervisor restarts us and the restore is retried.
                            tracing::error!(worker = self.worker, partition = p, error = %e, "restore failed; exiting");
                            std::process::exit(70);
                        }
                    }
                }
                self.metrics.assigned.set(tasks.len() as i64);
                self.metrics.state_keys.set(tasks.values().map(|t| t.states.len() as i64).sum());
                self.ready.store(true, Ordering::Relaxed);
                self.metrics.ready.set(1);
                tracing::info!(worker = self.worker, ?partitions, "assigned; tasks restored");
                if let Err(e) = consumer.assign(&with_offsets) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                self.metrics.assigned.set(0);
                self.metrics.state_keys.set(0);
                self.metrics.lag.reset();
                self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clear();
                tracing::info!(worker = self.worker, "partitions revoked");
                let _ = consumer.unassign();
            }
            other => tracing::error!(?other, "rebalance error"),
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

/// What a restore read and re-published.
struct RestoreStats {
    records: u64,
    republished: u64,
}

/// Reads a changelog partition from the beginning, rebuilds the task and
/// re-publishes what was decided but not published.
fn restore_task<S: serde::de::DeserializeOwned + Default>(
    worker: &str,
    cfg: &RuntimeConfig,
    p: i32,
) -> anyhow::Result<(Task<S>, BTreeMap<String, i64>, RestoreStats)> {
    let started = Instant::now();
    let topic = cfg.names.get(&state_topic(worker));
    let consumer: BaseConsumer =
        client_config(&cfg.kafka, &[("group.id", "keyflow-restore"), ("enable.auto.commit", "false")])?.create()?;
    let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(30))?;
    let mut entries = Vec::new();
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut next = low;
        while next < high {
            anyhow::ensure!(Instant::now() < deadline, "restore of {topic}[{p}] did not finish in 300 s");
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    if let Some(v) = m.payload() {
                        entries.push(serde_json::from_slice::<Entry>(v)?);
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
    }
    let records = entries.len() as u64;
    let r = changelog::restore(entries);
    let republished = r.unpublished.iter().map(|(_, o)| o.len() as u64).sum();
    let mut states = HashMap::new();
    for (k, v) in r.states {
        states.insert(k, serde_json::from_value::<KeyState<S>>(v)?);
    }
    if !r.unpublished.is_empty() {
        let producer: rdkafka::producer::BaseProducer = client_config(&cfg.kafka, PRODUCER_DEFAULTS)?.create()?;
        for (batch, outbox) in &r.unpublished {
            for o in outbox {
                producer
                    .send(
                        rdkafka::producer::BaseRecord::to(&o.topic)
                            .key(&o.key)
                            .payload(&o.value)
                            .headers(owned_headers(&o.headers)),
                    )
                    .map_err(|(e, _)| e)?;
            }
            let marker = serde_json::to_vec(&Entry::Published { batch: *batch })?;
            producer
                .send(rdkafka::producer::BaseRecord::to(&topic).partition(p).key("__published").payload(&marker))
                .map_err(|(e, _)| e)?;
            tracing::warn!(worker, partition = p, batch, records = outbox.len(), "re-published an unpublished outbox");
        }
        producer.flush(Duration::from_secs(60))?;
    }
    tracing::info!(worker, partition = p, keys = states.len(), took = ?started.elapsed(), dropped_tail = r.dropped_tail, "task restored");
    Ok((Task { states, next_batch: r.last_batch + 1 }, r.checkpoint, RestoreStats { records, republished }))
}

/// Decodes a record into an [`Input`].
async fn decode(codec: &Codec, m: &BorrowedMessage<'_>, names: &TopicNames) -> Result<Input, CodecError> {
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
        h.iter().find(|h| h.key == "traceparent").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    });
    Ok(Input { topic: topic.to_string(), partition: m.partition(), offset: m.offset(), key, event, traceparent })
}

/// A DLQ record: the original key and value (an oversized value is cut to
/// [`DLQ_OVERSIZED_KEEP_BYTES`], its size in `original.size`) and headers
/// saying why and where it came from.
fn dlq_record(worker: &str, names: &TopicNames, m: &BorrowedMessage<'_>, class: &str, message: &str) -> OutboxRecord {
    let payload = m.payload().unwrap_or_default();
    let mut extra = vec![];
    let value = if class == "oversized" {
        extra.push(("original.size".to_string(), payload.len().to_string().into_bytes()));
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
                ("error.class".into(), class.as_bytes().to_vec()),
                ("error.message".into(), message.as_bytes().to_vec()),
                ("source.topic".into(), m.topic().as_bytes().to_vec()),
                ("source.partition".into(), m.partition().to_string().into_bytes()),
                ("source.offset".into(), m.offset().to_string().into_bytes()),
                ("worker".into(), worker.as_bytes().to_vec()),
            ])
            .collect(),
    }
}

/// Kafka headers of an outbox record.
fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v) }))
}

/// A record to produce: an outbox record, or a changelog entry for partition `p`.
struct Outgoing<'a> {
    topic: &'a str,
    partition: Option<i32>,
    key: &'a str,
    value: Vec<u8>,
    headers: OwnedHeaders,
}

impl<'a> Outgoing<'a> {
    fn outbox(o: &'a OutboxRecord) -> Self {
        Self {
            topic: &o.topic,
            partition: None,
            key: &o.key,
            value: o.value.clone(),
            headers: owned_headers(&o.headers),
        }
    }

    fn changelog(topic: &'a str, p: i32, key: &'a str, entry: &Entry) -> anyhow::Result<Self> {
        Ok(Self { topic, partition: Some(p), key, value: serde_json::to_vec(entry)?, headers: OwnedHeaders::new() })
    }
}

/// Produces all records and waits until every one is acknowledged.
async fn send_all(producer: &FutureProducer, records: &[Outgoing<'_>]) -> anyhow::Result<()> {
    let mut futures = Vec::with_capacity(records.len());
    for o in records {
        let mut r = FutureRecord::to(o.topic).key(o.key).payload(&o.value).headers(o.headers.clone());
        if let Some(p) = o.partition {
            r = r.partition(p);
        }
        futures.push(producer.send(r, Duration::from_secs(300)));
    }
    for f in futures::future::join_all(futures).await {
        f.map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    }
    Ok(())
}

/// Encodes an output, retrying a registry outage with capped exponential
/// backoff (the batch, and so the partition, waits); other errors are fatal.
async fn encode_with_retry(
    codec: &Codec,
    topic: &str,
    event: &AnyEvent,
    metrics: &WorkerMetrics,
) -> anyhow::Result<Vec<u8>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match codec.encode_any(topic, event).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                metrics.retries.with_label_values(&["registry"]).inc();
                tracing::warn!(error = %e, retry_in = ?delay, "registry unavailable while encoding; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(anyhow::anyhow!("encoding {} for {topic}: {e}", event.record_name())),
        }
    }
}

/// Runs `worker` until `shutdown` completes.
pub async fn run<W: Worker>(
    worker: W,
    cfg: RuntimeConfig,
    codec: Arc<Codec>,
    metrics: WorkerMetrics,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let name = worker.name();
    let tasks: Tasks<W::State> = Arc::new(Mutex::new(HashMap::new()));
    let mut settings: Vec<(&str, &str)> = vec![
        ("group.id", name),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", "range"),
        ("statistics.interval.ms", "5000"),
    ];
    if let Some(id) = &cfg.instance_id {
        settings.push(("group.instance.id", id));
    }
    let ctx = Ctx { worker: name, cfg: cfg.clone(), tasks: tasks.clone(), metrics: metrics.clone(), ready };
    let consumer: StreamConsumer<Ctx<W::State>> = client_config(&cfg.kafka, &settings)?.create_with_context(ctx)?;
    let inputs: Vec<String> = cfg.inputs.iter().map(|t| cfg.names.get(t)).collect();
    consumer.subscribe(&inputs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let producer: FutureProducer = client_config(&cfg.kafka, PRODUCER_DEFAULTS)?.create()?;
    let runner = KeyedRunner::new(cfg.max_in_flight);
    let state_topic = cfg.names.get(&state_topic(name));
    tokio::pin!(shutdown);
    tracing::info!(worker = name, ?inputs, "worker started");
    loop {
        let first = tokio::select! {
            _ = &mut shutdown => break,
            m = consumer.recv() => match m {
                Ok(m) => m,
                Err(e) => {
                    // Broker errors surface here (transport failures while a broker
                    // restarts): librdkafka reconnects by itself, so wait and poll on.
                    metrics.retries.with_label_values(&["broker"]).inc();
                    tracing::warn!(error = %e, "consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let mut batch = vec![first];
        while batch.len() < cfg.max_batch {
            match tokio::time::timeout(Duration::from_millis(5), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error while gathering a batch");
                    break;
                }
                Err(_) => break,
            }
        }
        let batch_started = Instant::now();
        metrics.in_flight.set(batch.len() as i64);
        for m in &batch {
            metrics.consumed.with_label_values(&[m.topic()]).inc();
        }
        // Group by task (partition), keeping offset order within each input partition.
        let mut by_task: BTreeMap<i32, Vec<&BorrowedMessage<'_>>> = BTreeMap::new();
        for m in &batch {
            by_task.entry(m.partition()).or_default().push(m);
        }
        for (p, msgs) in by_task {
            let mut inputs = Vec::with_capacity(msgs.len());
            let mut decoded = Vec::with_capacity(msgs.len());
            let mut outbox = Vec::new();
            let mut checkpoint = BTreeMap::new();
            for m in &msgs {
                checkpoint.insert(format!("{}/{}", m.topic(), m.partition()), m.offset() + 1);
                let size = m.payload().map_or(0, <[u8]>::len);
                if size > cfg.max_record_bytes {
                    let why = format!("value of {size} bytes exceeds --max-record-bytes {}", cfg.max_record_bytes);
                    tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), %why, "poison record to DLQ");
                    outbox.push(dlq_record(name, &cfg.names, m, "oversized", &why));
                    continue;
                }
                let mut delay = Duration::from_millis(200);
                loop {
                    match decode(&codec, m, &cfg.names).await {
                        Ok(i) => {
                            inputs.push(i);
                            decoded.push(*m);
                            break;
                        }
                        Err(e) if e.is_transient() => {
                            metrics.retries.with_label_values(&["registry"]).inc();
                            tracing::warn!(error = %e, retry_in = ?delay, "registry unavailable; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                        Err(e) => {
                            tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), error = %e, "poison record to DLQ");
                            outbox.push(dlq_record(name, &cfg.names, m, e.class(), &e.to_string()));
                            break;
                        }
                    }
                }
            }
            let (mut states, batch_no) = {
                let mut t = tasks.lock().unwrap_or_else(|p| p.into_inner());
                let Some(task) = t.get_mut(&p) else { continue };
                task.next_batch += 1;
                (std::mem::take(&mut task.states), task.next_batch - 1)
            };
            let inputs_meta: Vec<i64> = inputs.iter().map(|i| i.event.metadata().occurred_at).collect();
            let result = process_batch(&worker, &runner, &mut states, inputs, cfg.dedupe_retention_ms).await;
            for o in &result.outputs {
                let topic = cfg.names.get(o.event.default_topic());
                let value = encode_with_retry(&codec, &topic, &o.event, &metrics).await?;
                let mut headers = vec![];
                if let Some(t) = &o.traceparent {
                    headers.push(("traceparent".to_string(), t.as_bytes().to_vec()));
                }
                outbox.push(OutboxRecord { topic, key: o.event.key().to_string(), value, headers });
            }
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            for (input, outcome) in inputs_meta.iter().zip(&result.outcomes) {
                metrics.processed.with_label_values(&[outcome.label()]).inc();
                if matches!(outcome, Outcome::Ok { .. }) {
                    metrics.e2e_latency.observe((now - input).max(0) as f64 / 1000.0);
                }
            }
            for (m, outcome) in decoded.iter().zip(&result.outcomes) {
                if let Outcome::Rejected(why) = outcome {
                    tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), %why, "contract violation to DLQ");
                    outbox.push(dlq_record(name, &cfg.names, m, "contract_violation", why));
                }
            }
            // Outputs keep their relative order in the outbox; everything else is a DLQ record.
            let dlq_name = cfg.names.get(&dlq_topic(name));
            let mut output_types = result.outputs.iter().map(|o| o.event.record_name());
            let outbox_types: Vec<&str> = outbox
                .iter()
                .map(|o| if o.topic == dlq_name { "dlq" } else { output_types.next().unwrap_or("unknown") })
                .collect();
            // 1. Record the decision.
            // One record per batch when it fits; otherwise one state record per key first.
            let mut changed = BTreeMap::new();
            for (key, ks) in &result.changed {
                changed.insert(key.clone(), serde_json::to_value(ks)?);
            }
            let commit = Entry::Commit { batch: batch_no, checkpoint, outbox: outbox.clone(), states: changed };
            let mut log = vec![Outgoing::changelog(&state_topic, p, "__commit", &commit)?];
            if log[0].value.len() > MAX_COMMIT_BYTES {
                let Entry::Commit { batch, checkpoint, outbox, states: changed } = commit else {
                    unreachable!("built above")
                };
                log.clear();
                for (key, state) in changed {
                    // The record key is not used: every changelog record names its partition.
                    log.push(Outgoing::changelog(&state_topic, p, "__state", &Entry::State { key, state })?);
                }
                let bare = Entry::Commit { batch, checkpoint, outbox, states: BTreeMap::new() };
                log.push(Outgoing::changelog(&state_topic, p, "__commit", &bare)?);
            }
            send_all(&producer, &log).await?;
            // 2. Publish it.
            let out: Vec<Outgoing<'_>> = outbox.iter().map(Outgoing::outbox).collect();
            send_all(&producer, &out).await?;
            for (o, ty) in outbox.iter().zip(&outbox_types) {
                metrics.produced.with_label_values(&[o.topic.as_str(), ty]).inc();
            }
            metrics.checkpoints.inc();
            // 3. Mark it published, without waiting for the ack: a lost marker only
            // makes a restore re-publish this outbox byte for byte (copies consumers
            // drop), and the idempotent producer keeps it ahead of the next batch's
            // changelog records. Saves one broker round trip per batch.
            let marker = Entry::Published { batch: batch_no };
            let m = Outgoing::changelog(&state_topic, p, "__published", &marker)?;
            let record = FutureRecord::to(m.topic).partition(p).key(m.key).payload(&m.value);
            if let Err((e, _)) = producer.send_result(record) {
                tracing::warn!(error = %e, batch = batch_no, "published marker not queued; a restore will re-publish");
            }
            if let Some(task) = tasks.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&p) {
                task.states = states;
            }
        }
        metrics.in_flight.set(0);
        metrics.batch_seconds.observe(batch_started.elapsed().as_secs_f64());
        metrics
            .state_keys
            .set(tasks.lock().unwrap_or_else(|p| p.into_inner()).values().map(|t| t.states.len() as i64).sum());
        // 4. Group offsets, for lag monitoring only (the checkpoint is the truth).
        let mut tpl = TopicPartitionList::new();
        for m in &batch {
            let _ = tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit failed (lag only)");
        }
    }
    tracing::info!(worker = name, "draining and leaving the group");
    consumer.unsubscribe();
    let r: KafkaResult<()> = producer.flush(Duration::from_secs(30));
    r?;
    Ok(())
}
