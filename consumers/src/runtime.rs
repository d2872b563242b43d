//! The worker runtime: a consumer-group member that runs partition tasks
//! with the effectively-once protocol of [`crate::changelog`].
//!
//! Guarantee: every input changes state and causes its outputs once, across
//! crashes and rebalances, on any Kafka-API broker (no transactions): per
//! batch the task *records* the decision (state, outbox, checkpoint) in its
//! changelog partition and waits for the acks, then *publishes* the outbox;
//! once the outbox is acknowledged it marks it published and commits group
//! offsets (for lag monitoring only). That acknowledgement is awaited while
//! the next batch of the task is recorded (or when the task goes idle, before
//! a snapshot, at shutdown, and on revoke after a flush), so recording batch
//! N+1 overlaps publishing batch N; outputs of N are always handed to the
//! producer before those of N+1, which keeps them in order.
//! On assignment a task restores from the changelog (starting at its latest
//! snapshot), re-publishes an unpublished outbox byte for byte (same
//! `event_id`s) and resumes from its checkpoint, never from the group offset.
//! Limit: a crash between publish and marker leaves byte-identical copies,
//! which consumers drop.
//!
//! With `--guarantee exactly-once` (brokers with transactions) each batch
//! is decided first, then its outputs, changelog records (no outbox) and
//! input offsets are written in one Kafka transaction; a failed transaction
//! is aborted and its tasks restored from the committed changelog.
//!
//! Rebalances: the range assignor (eager) co-partitions joins; a worker with
//! one input may use cooperative-sticky on real Kafka. Callbacks run inside
//! `recv()`, between batches, so no batch is being decided when partitions are
//! revoked; the revoke flushes the producer and marks what it delivered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::events::*;
use keyflow_schemas::headers;
use keyflow_schemas::kafka::{client_config, Quiet, PRODUCER_DEFAULTS};
use keyflow_schemas::topics::{dlq_topic, state_topic, TopicNames};
use keyflow_schemas::{Codec, CodecError};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::changelog::{self, Entry, OutboxRecord, Record, RestoreError, LINEAGE_HEADER, SNAPSHOT_HEADER};
use crate::keyed::KeyedRunner;
use crate::metrics::{self, WorkerMetrics};
use crate::task::{process_batch, Input, KeyDelta, KeyState, Outcome, Worker};

mod records;
mod restore;
use records::*;
use restore::*;

/// How partitions are spread over a group's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Assignor {
    /// Eager range assignment: partition p of every input on one instance
    /// (required for joins).
    Range,
    /// Incremental cooperative rebalancing (real Kafka, single-input workers):
    /// only moved partitions stop.
    CooperativeSticky,
}

impl Assignor {
    /// The librdkafka `partition.assignment.strategy` value.
    pub fn strategy(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// What the runtime promises about each input's effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Guarantee {
    /// Record the decision in the changelog, then publish it (the default; any
    /// Kafka-API broker). A crash may leave byte-identical copies, which
    /// consumers drop by `event_id`.
    EffectivelyOnce,
    /// Kafka transactions: a batch's outputs, changelog records and input
    /// offsets commit or abort together; readers see no copies. Needs a broker
    /// with transactions (Apache Kafka; not the embedded broker).
    ExactlyOnce,
    /// No changelog: publish, then commit group offsets. State lives in memory
    /// only and a crash replays inputs; the baseline the benchmarks compare against.
    #[value(hide = true)]
    AtLeastOnce,
}

impl Guarantee {
    /// Whether decisions are recorded in the changelog (state survives restarts).
    fn records(self) -> bool {
        self != Guarantee::AtLeastOnce
    }
}

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
    pub assignor: Assignor,
    /// A task snapshots its state once it has written this many changelog
    /// bytes since its last snapshot (or as many as that snapshot's size,
    /// whichever is larger), so a restore reads at most about twice the state.
    pub snapshot_interval_bytes: u64,
    /// Delete the changelog below a task's latest snapshot once it is written
    /// (committed, in exactly-once), so the changelog stays about the size of
    /// the state instead of its whole history.
    pub trim_changelog: bool,
    pub guarantee: Guarantee,
    /// Write a batch's partition tasks one after the other, not together
    /// (A/B measurements).
    pub serial_task_writes: bool,
}

impl RuntimeConfig {
    /// Checks settings that only make sense together; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.assignor == Assignor::CooperativeSticky && self.inputs.len() > 1 {
            return Err(format!(
                "--assignor cooperative-sticky: this worker joins {} topics and needs the range assignor \
                 (partition p of every input on one instance)",
                self.inputs.len()
            ));
        }
        if self.max_in_flight == 0 || self.max_batch == 0 {
            return Err("--max-in-flight and --max-batch must be at least 1".into());
        }
        Ok(())
    }
}

/// A batch stops gathering inputs at this many payload bytes (whatever
/// `--max-batch` says), so that the changelog parts of a batch (its outbox and
/// state changes, see [`decision_records`]) stay few.
const MAX_BATCH_INPUT_BYTES: usize = 1024 * 1024;

/// A batch's commit record carries its state changes when it stays below this.
const MAX_COMMIT_BYTES: usize = 512 * 1024;

/// State bytes per snapshot part (records stay well below the clients' 1 MiB
/// `message.max.bytes`; a single larger key gets a part of its own).
const SNAPSHOT_PART_BYTES: usize = 256 * 1024;

/// How many of a transactional changelog's last offsets a restore reads, one
/// try after another, to find the latest snapshot pointer (a batch writes a
/// few records and one commit marker; an aborted snapshot many).
const TXN_POINTER_TAILS: [i64; 3] = [16, 256, 4096];

/// How long a failing restore is retried before the worker gives up (exit 70).
const RESTORE_PATIENCE: Duration = Duration::from_secs(120);

/// How much of an oversized record's value the DLQ keeps.
pub const DLQ_OVERSIZED_KEEP_BYTES: usize = 64 * 1024;

/// One partition task's live state.
struct Task<S> {
    states: HashMap<String, KeyState<S>>,
    next_batch: u64,
    /// Next input offset per input partition, as of the last committed batch.
    checkpoint: BTreeMap<String, i64>,
    /// Offset of the first part of the latest complete snapshot.
    snapshot: Option<i64>,
    /// The offset of this owner's claim on the partition (see
    /// [`changelog::Entry::Claim`]); every record it writes carries it.
    lineage: Option<i64>,
    /// Changelog bytes written since that snapshot, and the snapshot's size.
    since_snapshot: u64,
    snapshot_bytes: u64,
    /// A snapshot written in the open transaction: the changelog below it is
    /// deleted once the transaction commits (exactly-once).
    trim_after_commit: Option<i64>,
    /// Sum of the worker's pending work over the keys.
    pending: i64,
    /// The last batch, recorded and handed to the producer, whose outputs
    /// are not acknowledged yet (effectively-once only).
    unacked: Option<Unacked>,
    /// What this owner wrote to its changelog partition since it last made
    /// sure nobody else claimed it.
    ownership: Ownership,
}

/// An owner's own records in its changelog partition since `verified`, the
/// offset up to which it has checked that no other owner claimed the
/// partition. When they fill every offset up to a snapshot's last part, the
/// check costs nothing; otherwise the gap is read (see [`Runtime::still_owner`]).
#[derive(Default)]
struct Ownership {
    verified: i64,
    /// Own records known to be acknowledged above `verified`.
    written: u64,
    /// Own records queued without waiting (published markers).
    queued: Vec<rdkafka::producer::DeliveryFuture>,
}

impl Ownership {
    fn new(claim: i64) -> Self {
        Ownership { verified: claim, written: 0, queued: vec![] }
    }

    /// A record queued without waiting: counted once acknowledged.
    fn wrote_later(&mut self, delivery: rdkafka::producer::DeliveryFuture) {
        self.reap();
        self.queued.push(delivery);
    }

    /// Counts the queued records already answered.
    fn reap(&mut self) {
        let mut pending = Vec::with_capacity(self.queued.len());
        for mut d in self.queued.drain(..) {
            match futures::FutureExt::now_or_never(&mut d) {
                Some(Ok(Ok(_))) => self.written += 1,
                Some(_) => {}
                None => pending.push(d),
            }
        }
        self.queued = pending;
    }
}

/// A recorded batch whose outputs are being published. It is marked
/// published once they are acknowledged: while the next batch is recorded,
/// when the task goes idle, before a snapshot, or when the partition is
/// released — so recording batch N+1 overlaps publishing batch N.
struct Unacked {
    batch: u64,
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
    /// Group offsets to commit once the outputs are acknowledged (lag only).
    offsets: Vec<GroupOffset>,
}

/// One input partition's next offset, for the group commit.
type GroupOffset = (String, i32, i64);

/// The headers every changelog record of a task carries.
#[derive(Debug, Clone, Copy, Default)]
struct Stamp {
    /// [`SNAPSHOT_HEADER`]: where a restore starts.
    snapshot: Option<i64>,
    /// [`LINEAGE_HEADER`]: the writer's claim.
    lineage: Option<i64>,
}

impl<S> Task<S> {
    fn stamp(&self) -> Stamp {
        Stamp { snapshot: self.snapshot, lineage: self.lineage }
    }

    /// A task without history: it starts at the group's committed offsets.
    fn empty() -> Self {
        Task {
            states: HashMap::new(),
            next_batch: 1,
            checkpoint: BTreeMap::new(),
            snapshot: None,
            lineage: None,
            ownership: Ownership::default(),
            since_snapshot: 0,
            snapshot_bytes: 0,
            trim_after_commit: None,
            pending: 0,
            unacked: None,
        }
    }
}

type Tasks<S> = Arc<Mutex<HashMap<i32, Task<S>>>>;

fn lock<S>(tasks: &Tasks<S>) -> std::sync::MutexGuard<'_, HashMap<i32, Task<S>>> {
    tasks.lock().unwrap_or_else(|p| p.into_inner())
}

/// Consumer context: restores tasks when partitions are assigned.
struct Ctx<W: Worker> {
    worker: Arc<W>,
    cfg: RuntimeConfig,
    tasks: Tasks<W::State>,
    metrics: WorkerMetrics,
    ready: Arc<AtomicBool>,
    /// The runtime's producer: flushed before partitions are released, so
    /// the next owner's restore sees every record this member queued (the
    /// published markers are not awaited).
    producer: FutureProducer<Quiet>,
    /// The worker's changelog topic.
    state_topic: String,
}

impl<W: Worker> Ctx<W> {
    fn publish_gauges(&self, tasks: &HashMap<i32, Task<W::State>>) {
        self.metrics.assigned.set(tasks.len() as i64);
        self.metrics.state_keys.set(tasks.values().map(|t| t.states.len() as i64).sum());
        self.metrics.pending.set(tasks.values().map(|t| t.pending).sum());
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, incremental: bool) {
        self.ready.store(false, Ordering::Relaxed);
        self.metrics.ready.set(0);
        self.metrics.rebalances.with_label_values(&[metrics::REBALANCE_ASSIGN]).inc();
        let mut per_topic: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for e in tpl.elements() {
            per_topic.entry(e.topic().to_string()).or_default().insert(e.partition());
        }
        // A join task needs partition p of every input: never process half a
        // task. (No partitions at all is fine: more instances than partitions.)
        let sets: Vec<_> = per_topic.values().collect();
        let half = per_topic.len() != self.cfg.inputs.len() || sets.windows(2).any(|w| w[0] != w[1]);
        if !incremental && !per_topic.is_empty() && half {
            tracing::error!(worker = self.worker.name(), assignment = ?per_topic, "assignment is not co-partitioned (use the range assignor); exiting");
            std::process::exit(70);
        }
        let partitions: BTreeSet<i32> = per_topic.values().flatten().copied().collect();
        if self.cfg.guarantee == Guarantee::ExactlyOnce && !partitions.is_empty() {
            // KIP-447: a read_committed member's offset fetch waits while a
            // transaction that sends offsets for these partitions is still
            // open, so the previous owner's last commit (or abort) lands
            // before the restore reads the changelog.
            let mut tpl = TopicPartitionList::new();
            for (topic, ps) in &per_topic {
                for p in ps {
                    tpl.add_partition(topic, *p);
                }
            }
            if let Err(e) = consumer.committed_offsets(tpl, RESTORE_PATIENCE) {
                tracing::error!(worker = self.worker.name(), error = %e, "waiting for the previous owner's transactions failed; exiting");
                std::process::exit(70);
            }
        }
        let mut with_offsets = TopicPartitionList::new();
        let mut tasks = lock(&self.tasks);
        self.metrics.restoring.set(partitions.len() as i64);
        tracing::info!(worker = self.worker.name(), ?partitions, "partitions assigned; restoring their tasks");
        let claims = match self.cfg.guarantee.records() && !partitions.is_empty() {
            true => with_retry("claiming the assigned partitions", &self.metrics, || {
                claim_partitions(&self.cfg, &self.state_topic, &partitions)
            }),
            false => Ok(BTreeMap::new()),
        };
        let claims = claims.unwrap_or_else(|e| {
            tracing::error!(worker = self.worker.name(), error = %format!("{e:#}"), "claiming the assigned partitions failed; exiting");
            std::process::exit(70);
        });
        for p in partitions.iter().copied() {
            let started = Instant::now();
            let restored = match claims.get(&p) {
                Some(c) => restore_with_retry(&*self.worker, &self.cfg, p, &self.metrics, Restore::Claimed(*c)),
                None => Ok((Task::empty(), RestoreStats { republished: 0 })),
            };
            match restored {
                Ok((task, stats)) => {
                    self.metrics.restore_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.republished.inc_by(stats.republished);
                    for (topic, offset) in resume_offsets(&self.cfg, p, &task) {
                        let _ = with_offsets.add_partition_offset(&topic, p, offset);
                    }
                    tasks.insert(p, task);
                    self.metrics.restoring.dec();
                }
                Err(e) => {
                    // Without its state a task must not run: fail loudly, the
                    // supervisor restarts us and the restore is retried.
                    tracing::error!(worker = self.worker.name(), partition = p, error = %format!("{e:#}"), "restore failed; exiting");
                    std::process::exit(70);
                }
            }
        }
        self.publish_gauges(&tasks);
        self.ready.store(true, Ordering::Relaxed);
        self.metrics.ready.set(1);
        tracing::info!(worker = self.worker.name(), ?partitions, "assigned; tasks restored");
        let r = if incremental { consumer.incremental_assign(&with_offsets) } else { consumer.assign(&with_offsets) };
        if let Err(e) = r {
            tracing::error!(error = %e, "assign failed");
        }
        // The restored checkpoint is where the group stands. A previous owner
        // killed between recording a batch and committing its offsets left the
        // group's committed offset behind it; with no input after the
        // takeover nothing else would move it, and the lag would show records
        // that were processed long ago.
        if self.cfg.guarantee == Guarantee::EffectivelyOnce {
            let restored: Vec<GroupOffset> = with_offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
                    _ => None,
                })
                .collect();
            commit_offsets(consumer, &restored, CommitMode::Async);
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, incremental: bool) {
        self.metrics.rebalances.with_label_values(&[metrics::REBALANCE_REVOKE]).inc();
        self.metrics.lag.reset();
        if let Err(e) = self.producer.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "flushing before releasing partitions failed; the next owner re-publishes what is unmarked");
        }
        let mut tasks = lock(&self.tasks);
        let released: Vec<i32> = if incremental {
            tpl.elements().iter().map(|e| e.partition()).collect()
        } else {
            tasks.keys().copied().collect()
        };
        // Mark what the flush published, so the next owner re-publishes nothing.
        let mut committable = vec![];
        let mut marked = false;
        for p in &released {
            let Some(mut task) = tasks.remove(p) else { continue };
            let Some(u) = task.unacked.take() else { continue };
            // Never wait here: what the flush did not deliver stays unmarked.
            let acked =
                u.deliveries.into_iter().all(|d| matches!(futures::FutureExt::now_or_never(d), Some(Ok(Ok(_)))));
            if !acked {
                continue;
            }
            committable.extend(u.offsets);
            if self.cfg.guarantee.records() {
                marked |= queue_published(&self.producer, &self.state_topic, *p, u.batch, task.stamp()).is_some();
            }
        }
        if marked {
            let _ = self.producer.flush(Duration::from_secs(10));
        }
        commit_offsets(consumer, &committable, CommitMode::Sync);
        if incremental {
            let _ = consumer.incremental_unassign(tpl);
        } else {
            let _ = consumer.unassign();
        }
        self.publish_gauges(&tasks);
        tracing::info!(worker = self.worker.name(), revoked = tpl.count(), "partitions revoked");
    }
}

impl<W: Worker> ClientContext for Ctx<W> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        keyflow_schemas::kafka::report_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        keyflow_schemas::kafka::report_error(&error, reason);
    }

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

impl<W: Worker> ConsumerContext for Ctx<W> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        let incremental = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl, incremental),
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl, incremental),
            other => tracing::error!(?other, "rebalance error"),
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

/// The batch was abandoned because the worker is shutting down; nothing of it
/// was recorded, so a restart redoes it from the checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("shutting down")]
struct Stopping;

/// Waits `delay`, or less when shutdown is requested; then fails with
/// [`Stopping`] if it was.
async fn backoff(delay: Duration, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    if !*stop.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
    if *stop.borrow() {
        return Err(Stopping.into());
    }
    Ok(())
}

/// Runs `op`, retrying its transient failures (registry unreachable) with
/// capped exponential backoff while the batch (and so the partition) waits.
/// Returns the first non-transient error; gives up when shutdown starts.
async fn retry_transient<T, F, Fut>(
    what: &str,
    metrics: &WorkerMetrics,
    stop: &mut watch::Receiver<bool>,
    mut op: F,
) -> anyhow::Result<Result<T, CodecError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CodecError>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                metrics.retries.with_label_values(&[metrics::RETRY_REGISTRY]).inc();
                tracing::warn!(error = %e, retry_in = ?delay, "registry unavailable while {what}; retrying");
                backoff(delay, stop).await?;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            other => return Ok(other),
        }
    }
}

/// One task's share of a batch, decided and encoded but not yet written.
struct Decided<S> {
    p: i32,
    batch: u64,
    inputs: usize,
    /// The task's states, taken out of it while the batch runs.
    states: HashMap<String, KeyState<S>>,
    /// Outputs and DLQ records, in input order.
    outbox: Vec<OutboxRecord>,
    /// Event types of the outbox's outputs (DLQ records excluded).
    output_types: Vec<&'static str>,
    checkpoint: BTreeMap<String, i64>,
    offsets: Vec<GroupOffset>,
    changed: BTreeMap<String, KeyDelta<S>>,
    pending_delta: i64,
    /// Started, decoded, decided, encoded.
    timings: [Instant; 4],
}

/// Everything a running worker shares across batches.
struct Runtime<W: Worker> {
    worker: Arc<W>,
    cfg: RuntimeConfig,
    codec: Arc<Codec>,
    metrics: WorkerMetrics,
    producer: FutureProducer<Quiet>,
    /// Deletes changelog records below a snapshot.
    admin: AdminClient<Quiet>,
    runner: KeyedRunner,
    tasks: Tasks<W::State>,
    state_topic: String,
    dlq_topic: String,
    /// The producer's `transactional.id` (exactly-once only; for messages).
    transactional_id: String,
    /// Another member claimed a partition of this one: leave the group and
    /// join again, so the group's assignment and the claims agree again
    /// (whichever member was wrong about the partition).
    rejoin: AtomicBool,
}

impl<W: Worker> Runtime<W> {
    /// Decides each task's share of a batch, one task after the other
    /// (offset order within each input partition), then records and
    /// publishes them together. Returns the group offsets that may be
    /// committed now: those of batches whose outputs are acknowledged.
    /// `Stopping` when shutdown interrupted a decision: the tasks decided
    /// before it are written, and the drain commits their offsets once their
    /// outputs are acknowledged.
    async fn run_tasks(
        &self,
        by_task: BTreeMap<i32, Vec<&BorrowedMessage<'_>>>,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<GroupOffset>> {
        let mut decided = Vec::with_capacity(by_task.len());
        let mut stopping = None;
        for (p, msgs) in by_task {
            match self.decide(p, &msgs, stop).await {
                Ok(d) => decided.extend(d),
                Err(e) if e.is::<Stopping>() => {
                    tracing::info!(partition = p, "shutdown during an outage: the batch is left to the next owner");
                    stopping = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // The tasks' writes overlap: a batch waits for one changelog round
        // trip, not one per partition. Each task writes only its own
        // changelog partition, and a failed write stops the worker.
        let written = match self.cfg.serial_task_writes {
            false => futures::future::try_join_all(decided.into_iter().map(|d| self.write(d))).await?,
            true => {
                let mut written = Vec::with_capacity(decided.len());
                for d in decided {
                    written.push(self.write(d).await?);
                }
                written
            }
        };
        match stopping {
            Some(e) => Err(e),
            None => Ok(written.into_iter().flatten().collect()),
        }
    }

    /// Decodes, decides and encodes one task's share of a batch: everything
    /// but the writes (so a transaction need not stay open while the registry
    /// is retried). `None` when the partition is no longer assigned.
    async fn decide(
        &self,
        p: i32,
        msgs: &[&BorrowedMessage<'_>],
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Decided<W::State>>> {
        let (cfg, metrics, name) = (&self.cfg, &self.metrics, self.worker.name());
        let started = Instant::now();
        let mut inputs = Vec::with_capacity(msgs.len());
        let mut decoded = Vec::with_capacity(msgs.len());
        let mut outbox = Vec::new();
        let mut checkpoint = BTreeMap::new();
        let mut offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in msgs {
            checkpoint.insert(format!("{}/{}", m.topic(), m.partition()), m.offset() + 1);
            offsets.insert((m.topic(), m.partition()), m.offset() + 1);
            let size = m.payload().map_or(0, <[u8]>::len);
            if size > cfg.max_record_bytes {
                let why = format!("value of {size} bytes exceeds --max-record-bytes {}", cfg.max_record_bytes);
                tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), %why, "poison record to DLQ");
                outbox.push(dlq_record(name, &cfg.names, m, "oversized", &why));
                continue;
            }
            match retry_transient("decoding", metrics, stop, || decode(&self.codec, m, &cfg.names)).await? {
                Ok(i) => {
                    inputs.push(i);
                    decoded.push(*m);
                }
                Err(e) => {
                    tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), error = %e, "poison record to DLQ");
                    outbox.push(dlq_record(name, &cfg.names, m, e.class(), &e.to_string()));
                }
            }
        }
        // Poison never reaches the worker; it counts as a DLQ outcome all the same.
        metrics.processed.with_label_values(&[Outcome::DLQ]).inc_by(outbox.len() as u64);
        let (mut states, batch_no) = {
            let mut t = lock(&self.tasks);
            let Some(task) = t.get_mut(&p) else { return Ok(None) };
            task.next_batch += 1;
            (std::mem::take(&mut task.states), task.next_batch - 1)
        };
        let occurred: Vec<i64> = inputs.iter().map(|i| i.event.metadata().occurred_at).collect();
        let decoded_at = Instant::now();
        let result = process_batch(&*self.worker, &self.runner, &mut states, inputs, cfg.dedupe_retention_ms).await;
        let decided_at = Instant::now();
        let mut output_types = Vec::with_capacity(result.outputs.len());
        for o in &result.outputs {
            let topic = cfg.names.get(o.event.default_topic());
            let value =
                match retry_transient("encoding", metrics, stop, || self.codec.encode_any(&topic, &o.event)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => anyhow::bail!("encoding {} for {topic}: {e}", o.event.record_name()),
                    Err(stopping) => {
                        self.put_back(p, states);
                        return Err(stopping);
                    }
                };
            let cause = headers::cause(&o.cause_topic, p, o.cause_offset);
            let mut hs = vec![(headers::CAUSE.to_string(), cause.into_bytes())];
            if let Some(t) = &o.traceparent {
                let child = headers::child_traceparent(t, &o.event.metadata().event_id);
                hs.push((headers::TRACEPARENT.to_string(), child.into_bytes()));
            }
            outbox.push(OutboxRecord { topic, key: o.event.key().to_string(), value, headers: hs });
            output_types.push(o.event.record_name());
        }
        let now = keyflow_schemas::process::now_ms();
        for ((at, outcome), took) in occurred.iter().zip(&result.outcomes).zip(&result.elapsed) {
            metrics.processed.with_label_values(&[outcome.label()]).inc();
            metrics.processing_seconds.observe(took.as_secs_f64());
            if matches!(outcome, Outcome::Ok { .. }) {
                metrics.e2e_latency.observe((now - at).max(0) as f64 / 1000.0);
            }
        }
        for (m, outcome) in decoded.iter().zip(&result.outcomes) {
            match outcome {
                Outcome::Rejected(why) => {
                    tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), %why, "contract violation to DLQ");
                    outbox.push(dlq_record(name, &cfg.names, m, "contract_violation", why));
                }
                Outcome::Ignored(why) => {
                    tracing::debug!(topic = m.topic(), partition = p, offset = m.offset(), why, "input ignored")
                }
                _ => {}
            }
        }
        let offsets: Vec<GroupOffset> = offsets.into_iter().map(|((t, q), o)| (t.to_string(), q, o)).collect();
        Ok(Some(Decided {
            p,
            batch: batch_no,
            inputs: msgs.len(),
            states,
            outbox,
            output_types,
            checkpoint,
            offsets,
            changed: result.changed,
            pending_delta: result.pending_delta,
            timings: [started, decoded_at, decided_at, Instant::now()],
        }))
    }

    /// Records and publishes a decided task batch (see [`Guarantee`]);
    /// returns the group offsets that may be committed now.
    async fn write(&self, d: Decided<W::State>) -> anyhow::Result<Vec<GroupOffset>> {
        let (cfg, metrics) = (&self.cfg, &self.metrics);
        let Decided { p, batch: batch_no, inputs, states, outbox, output_types, checkpoint, offsets, changed, .. } = d;
        let [started, decoded_at, decided_at, encoded_at] = d.timings;
        let stamp = lock(&self.tasks).get(&p).map(Task::stamp).unwrap_or_default();
        let topic = self.state_topic.as_str();
        // 1. Record the decision, while the previous batch's outputs are still
        // being acknowledged; that batch is marked published once both are in.
        // (The at-least-once baseline only waits for the previous batch: the
        // changelog is the one difference.) Inside a transaction the outputs
        // commit with the record, so it carries no outbox and nothing waits.
        let (mut written, mut records) = (0, 0);
        let previous = lock(&self.tasks).get_mut(&p).and_then(|t| t.unacked.take());
        let mut committable = match cfg.guarantee {
            Guarantee::EffectivelyOnce => {
                let log = decision_records(topic, p, batch_no, &checkpoint, &outbox, &changed, stamp)?;
                written = log.iter().map(|o| o.value.len() as u64).sum();
                let (recorded, settled) = futures::join!(send_all(&self.producer, &log), self.settle(p, previous));
                records = recorded?.len() as u64;
                settled?
            }
            Guarantee::ExactlyOnce => {
                let log = decision_records(topic, p, batch_no, &checkpoint, &[], &changed, stamp)?;
                for o in &log {
                    written += o.value.len() as u64;
                    enqueue(&self.producer, o).await?;
                }
                vec![]
            }
            Guarantee::AtLeastOnce => self.settle(p, previous).await?,
        };
        let recorded_at = Instant::now();
        // 2. Publish it: hand the outputs to the producer and go on; the next
        // batch (or idleness, a snapshot, shutdown, a revoke) waits for their
        // acknowledgement — or the transaction's commit does.
        let mut deliveries = Vec::with_capacity(outbox.len());
        for o in &outbox {
            let delivery = enqueue(&self.producer, &Outgoing::outbox(o)).await?;
            // A transaction's commit waits for its records itself.
            if cfg.guarantee != Guarantee::ExactlyOnce {
                deliveries.push(delivery);
            }
        }
        let unacked = if cfg.guarantee == Guarantee::ExactlyOnce {
            committable.extend(offsets);
            None
        } else {
            Some(Unacked { batch: batch_no, deliveries, offsets })
        };
        tracing::debug!(
            partition = p,
            inputs,
            outputs = outbox.len(),
            decode = ?decoded_at - started,
            decide = ?decided_at - decoded_at,
            encode = ?encoded_at - decided_at,
            record = ?recorded_at - encoded_at,
            publish = ?recorded_at.elapsed(),
            "batch done"
        );
        let mut types = output_types.into_iter();
        for o in &outbox {
            let ty = if o.topic == self.dlq_topic { "dlq" } else { types.next().unwrap_or("unknown") };
            metrics.produced.with_label_values(&[o.topic.as_str(), ty]).inc();
        }
        metrics.checkpoints.inc();
        let due = {
            let mut t = lock(&self.tasks);
            let Some(task) = t.get_mut(&p) else { return Ok(committable) };
            task.checkpoint.extend(checkpoint);
            task.since_snapshot += written;
            task.ownership.written += records;
            task.pending += d.pending_delta;
            task.unacked = unacked;
            task.since_snapshot >= cfg.snapshot_interval_bytes.max(task.snapshot_bytes)
        };
        if due && cfg.guarantee.records() {
            // A snapshot stands for published batches only.
            let last = lock(&self.tasks).get_mut(&p).and_then(|t| t.unacked.take());
            committable.extend(self.settle(p, last).await?);
            self.snapshot(p, batch_no, &states).await?;
        }
        self.put_back(p, states);
        Ok(committable)
    }

    /// Waits until `unacked`'s outputs are acknowledged, then marks its batch
    /// published without waiting for that ack: a lost marker only makes a
    /// restore re-publish the outbox byte for byte (copies consumers drop).
    /// Returns the batch's group offsets, now committable.
    async fn settle(&self, p: i32, unacked: Option<Unacked>) -> anyhow::Result<Vec<GroupOffset>> {
        let Some(u) = unacked else { return Ok(vec![]) };
        for d in futures::future::join_all(u.deliveries).await {
            delivered(Some(d), format_args!("an output of batch {} of partition {p}", u.batch))?;
        }
        if !self.cfg.guarantee.records() {
            return Ok(u.offsets);
        }
        let mut tasks = lock(&self.tasks);
        let stamp = tasks.get(&p).map(Task::stamp).unwrap_or_default();
        let written = queue_published(&self.producer, &self.state_topic, p, u.batch, stamp);
        if let (Some(t), Some((n, delivery))) = (tasks.get_mut(&p), written) {
            t.since_snapshot += n;
            t.ownership.wrote_later(delivery);
        }
        Ok(u.offsets)
    }

    /// Settles every task's unacknowledged batch except those of `busy`
    /// (partitions whose next batch is running); returns the committable offsets.
    async fn settle_others(&self, busy: &BTreeSet<i32>) -> anyhow::Result<Vec<GroupOffset>> {
        let waiting: Vec<(i32, Unacked)> = lock(&self.tasks)
            .iter_mut()
            .filter(|(p, _)| !busy.contains(*p))
            .filter_map(|(p, t)| t.unacked.take().map(|u| (*p, u)))
            .collect();
        let mut out = vec![];
        for (p, u) in waiting {
            out.extend(self.settle(p, Some(u)).await?);
        }
        Ok(out)
    }

    /// Exactly-once: decides every task's share of the batch first (registry
    /// retries happen outside any transaction), then writes them all and
    /// the input offsets in one transaction and commits it. Returns why the
    /// batch must be undone, if it must, and whether a transaction was begun
    /// (nothing of the batch is then committed); an error when the producer
    /// failed for good (fenced) or shutdown interrupted the decisions.
    async fn transact(
        &self,
        consumer: &StreamConsumer<Ctx<W>>,
        by_task: BTreeMap<i32, Vec<&BorrowedMessage<'_>>>,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<(anyhow::Error, bool)>> {
        let mut decided = Vec::with_capacity(by_task.len());
        for (p, msgs) in by_task {
            match self.decide(p, &msgs, stop).await {
                Ok(d) => decided.extend(d),
                Err(e) if e.is::<Stopping>() => return Err(e),
                Err(e) => return Ok(Some((e, false))),
            }
        }
        self.producer.begin_transaction().map_err(|e| self.transaction_error(e, "beginning a transaction"))?;
        let mut offsets = vec![];
        for d in decided {
            match self.write(d).await {
                Ok(o) => offsets.extend(o),
                Err(e) => return Ok(Some((e, true))),
            }
        }
        let group = consumer.group_metadata().context("the consumer has no group metadata to commit with")?;
        let committed = tokio::task::block_in_place(|| {
            if !offsets.is_empty() {
                let tpl = offsets_list(&offsets);
                retry_retriable(|| self.producer.send_offsets_to_transaction(&tpl, &group, TXN_CALL_TIMEOUT))?;
            }
            retry_retriable(|| self.producer.commit_transaction(TXN_CALL_TIMEOUT))
        });
        match committed {
            Ok(()) => {
                self.metrics.transactions.with_label_values(&[metrics::TXN_COMMITTED]).inc();
                let below: Vec<(i32, i64)> = lock(&self.tasks)
                    .iter_mut()
                    .filter_map(|(p, t)| t.trim_after_commit.take().map(|at| (*p, at)))
                    .collect();
                self.trim(&below).await;
                Ok(None)
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                Ok(Some((anyhow::Error::new(KafkaError::Transaction(e)).context("committing a transaction"), true)))
            }
            Err(e) => Err(self.transaction_error(e, "committing a transaction")),
        }
    }

    /// A transactional call's failure that the worker cannot recover from,
    /// explained: a broker without transactions, a fenced producer, or an
    /// error that outlasted its retries.
    fn transaction_error(&self, e: KafkaError, what: &str) -> anyhow::Error {
        let KafkaError::Transaction(t) = &e else { return anyhow::Error::new(e).context(what.to_string()) };
        if t.code() == RDKafkaErrorCode::UnsupportedFeature {
            return anyhow::anyhow!(
                "--guarantee exactly-once: the broker does not support Kafka transactions ({t}); \
                 use --guarantee effectively-once"
            );
        }
        if t.is_fatal() {
            return anyhow::Error::new(e).context(format!(
                "{what}: this producer was fenced (another instance took over transactional.id {} or this \
                 member's partitions); it stops, its successor continues from the committed state",
                self.transactional_id
            ));
        }
        anyhow::Error::new(e).context(what.to_string())
    }

    /// Undoes a failed batch: aborts its transaction (when one was begun) and
    /// rolls each of its tasks back to the last committed batch — state
    /// restored from the changelog (read_committed), inputs rewound to its
    /// checkpoint — so the batch is decided again from scratch. `expected`
    /// holds each task's next batch number before the failed one: a restore
    /// that does not yet see that far (the previous commit's markers not yet
    /// written) is read again.
    fn abort_transaction(
        &self,
        consumer: &StreamConsumer<Ctx<W>>,
        expected: &BTreeMap<i32, u64>,
        why: &anyhow::Error,
        began: bool,
    ) -> anyhow::Result<()> {
        let parts: Vec<i32> = expected.keys().copied().collect();
        tracing::warn!(error = %format!("{why:#}"), partitions = ?parts, "transaction failed; aborting it and rolling its tasks back");
        tokio::task::block_in_place(|| {
            // A batch undone before its transaction began (a decision failed)
            // is rolled back all the same, but it is not an aborted transaction.
            if began {
                retry_retriable(|| self.producer.abort_transaction(TXN_CALL_TIMEOUT))
                    .map_err(|e| self.transaction_error(e, "aborting a failed transaction"))?;
                self.metrics.transactions.with_label_values(&[metrics::TXN_ABORTED]).inc();
            }
            for (&p, &next) in expected {
                if !lock(&self.tasks).contains_key(&p) {
                    continue;
                }
                let started = Instant::now();
                let task = loop {
                    let lineage = lock(&self.tasks).get(&p).and_then(|t| t.lineage);
                    let how = Restore::Rollback { lineage };
                    let (task, _) = restore_with_retry(&*self.worker, &self.cfg, p, &self.metrics, how)?;
                    if task.next_batch >= next {
                        break task;
                    }
                    if started.elapsed() > RESTORE_PATIENCE {
                        anyhow::bail!(
                            "rolling back partition {p}: its changelog shows batch {} committed, not {}",
                            task.next_batch - 1,
                            next - 1
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                for (topic, offset) in resume_offsets(&self.cfg, p, &task) {
                    let offset = match offset {
                        Offset::Stored => committed_offset(consumer, &topic, p)?,
                        o => o,
                    };
                    consumer
                        .seek(&topic, p, offset, Duration::from_secs(10))
                        .with_context(|| format!("rewinding {topic}[{p}] to {offset:?} after an abort"))?;
                }
                lock(&self.tasks).insert(p, task);
            }
            tracing::info!(partitions = ?parts, "rolled back to the last committed batch");
            Ok(())
        })
    }

    /// Whether another owner has claimed partition `p` up to offset `last`
    /// (a snapshot's last part, `parts` records): `Some(its claim)` if so.
    /// Free when this owner's own records fill every offset since the last
    /// check; otherwise the offsets between are read.
    async fn still_owner(&self, p: i32, parts: u64, last: i64) -> anyhow::Result<Option<i64>> {
        let queued = match lock(&self.tasks).get_mut(&p) {
            Some(t) => std::mem::take(&mut t.ownership.queued),
            None => return Ok(None),
        };
        // Queued before the parts, so answered before them.
        let acked = futures::future::join_all(queued).await.into_iter().filter(|d| matches!(d, Ok(Ok(_)))).count();
        let (verified, written, lineage) = match lock(&self.tasks).get_mut(&p) {
            Some(t) => {
                t.ownership.written += parts + acked as u64;
                (t.ownership.verified, t.ownership.written, t.lineage)
            }
            None => return Ok(None),
        };
        let Some(lineage) = lineage else { return Ok(None) };
        if written as i64 == last - verified {
            self.verified(p, last);
            return Ok(None);
        }
        let (cfg, topic) = (&self.cfg, self.state_topic.as_str());
        let records = tokio::task::block_in_place(|| -> anyhow::Result<Vec<Record>> {
            let consumer = ChangelogSource::client(cfg)?;
            let mut reader = ChangelogReader::open(consumer, topic, p, (verified + 1, last + 1), false, false)?;
            let records = reader.by_ref().collect();
            reader.finish()?;
            Ok(records)
        })?;
        if let Some(claim) = changelog::newer_claim(&records, lineage) {
            return Ok(Some(claim));
        }
        self.verified(p, last);
        Ok(None)
    }

    /// Nobody else claimed partition `p` up to `offset`.
    fn verified(&self, p: i32, offset: i64) {
        if let Some(t) = lock(&self.tasks).get_mut(&p) {
            t.ownership.verified = offset;
            t.ownership.written = 0;
        }
    }

    fn put_back(&self, p: i32, states: HashMap<String, KeyState<W::State>>) {
        if let Some(task) = lock(&self.tasks).get_mut(&p) {
            task.states = states;
        }
    }

    /// Writes every key's state as of `batch` (published) as snapshot parts,
    /// then points later records at it: the first record that carries the
    /// new pointer is a repeated `Published` marker of the same batch.
    async fn snapshot(&self, p: i32, batch: u64, states: &HashMap<String, KeyState<W::State>>) -> anyhow::Result<()> {
        let started = Instant::now();
        let (checkpoint, old) = match lock(&self.tasks).get(&p) {
            Some(t) => (t.checkpoint.clone(), t.stamp()),
            None => return Ok(()),
        };
        // Two passes over the keys (sizes, then parts), each part sent as soon
        // as it is built with a few in flight: memory stays at a few parts,
        // not a copy of the whole state.
        let snapshot = changelog::SnapshotParts::new(batch, checkpoint, states, SNAPSHOT_PART_BYTES);
        let parts = snapshot.parts();
        let topic = self.state_topic.as_str();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut offsets = Vec::with_capacity(parts as usize);
        let mut bytes = 0u64;
        for entry in snapshot {
            let entry = entry?;
            let record = Outgoing::changelog(topic, p, &entry, old)?;
            bytes += record.value.len() as u64;
            in_flight.push_back(enqueue(&self.producer, &record).await?);
            while in_flight.len() >= SNAPSHOT_PARTS_IN_FLIGHT {
                offsets.push(delivered(in_flight.next().await, format_args!("a snapshot part to {topic}"))?);
            }
        }
        while let Some(d) = in_flight.next().await {
            offsets.push(delivered(Some(d), format_args!("a snapshot part to {topic}"))?);
        }
        let at = offsets[0];
        if self.cfg.guarantee == Guarantee::EffectivelyOnce {
            // Later records may point at this snapshot only if no other owner
            // claimed the partition before it was complete (see changelog::newer_claim).
            let last = offsets.iter().copied().max().unwrap_or(at);
            match self.still_owner(p, offsets.len() as u64, last).await {
                Ok(None) => {}
                Ok(Some(claim)) => {
                    tracing::warn!(
                        worker = self.worker.name(),
                        partition = p,
                        claim,
                        "another member claimed this partition: this one stops writing it and rejoins the group \
                         (what it wrote since is skipped by every restore)"
                    );
                    let mut tasks = lock(&self.tasks);
                    tasks.remove(&p);
                    self.metrics.assigned.set(tasks.len() as i64);
                    self.rejoin.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %format!("{e:#}"), "could not check the partition's owner; the snapshot is not used");
                    // Try again after another interval, not at every batch.
                    if let Some(t) = lock(&self.tasks).get_mut(&p) {
                        t.since_snapshot = 0;
                    }
                    return Ok(());
                }
            }
        }
        let marker = Outgoing::published(topic, p, batch, Stamp { snapshot: Some(at), ..old })?;
        let marked = send_all(&self.producer, std::slice::from_ref(&marker)).await?;
        let exactly_once = self.cfg.guarantee == Guarantee::ExactlyOnce;
        if let Some(t) = lock(&self.tasks).get_mut(&p) {
            t.snapshot = Some(at);
            t.snapshot_bytes = bytes;
            t.since_snapshot = 0;
            if exactly_once {
                t.ownership.written += 1;
                t.trim_after_commit = self.cfg.trim_changelog.then_some(at);
            }
        }
        self.metrics.snapshots.inc();
        tracing::info!(worker = self.worker.name(), partition = p, batch, offset = at, parts, keys = states.len(), bytes, took = ?started.elapsed(), "state snapshot written");
        if !exactly_once {
            // Every later claim's base is this snapshot or a newer one once no
            // claim came before the marker: the history below it is not needed.
            let marker_at = marked.first().copied().unwrap_or(at);
            match self.still_owner(p, 1, marker_at).await {
                Ok(None) if self.cfg.trim_changelog => self.trim(&[(p, at)]).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition = p, error = %format!("{e:#}"), "could not check the partition's owner; the changelog is not trimmed")
                }
            }
        }
        Ok(())
    }

    /// Deletes each changelog partition's records below the offset given
    /// (the start of its latest snapshot). A failure only leaves the history
    /// in place: it is logged and counted, and the next snapshot tries again.
    async fn trim(&self, below: &[(i32, i64)]) {
        if below.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, offset) in below {
            if let Err(e) = tpl.add_partition_offset(&self.state_topic, p, Offset::Offset(offset)) {
                tracing::warn!(partition = p, error = %e, "cannot trim the changelog");
                return;
            }
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let failed: Vec<String> = match self.admin.delete_records(&tpl, &opts).await {
            Ok(done) => done
                .elements()
                .iter()
                .filter_map(|e| e.error().err().map(|err| format!("partition {}: {err}", e.partition())))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        let ok = below.len().saturating_sub(failed.len());
        self.metrics.trims.with_label_values(&["ok"]).inc_by(ok as u64);
        if failed.is_empty() {
            tracing::debug!(topic = self.state_topic, ?below, "changelog trimmed below the latest snapshot");
        } else {
            self.metrics.trims.with_label_values(&["failed"]).inc_by(failed.len() as u64);
            tracing::warn!(topic = self.state_topic, errors = ?failed, "could not trim the changelog (DeleteRecords); its history stays until the next snapshot");
        }
    }
}

/// Runs `worker` until `shutdown` completes, then drains and leaves the group.
pub async fn run<W: Worker>(
    worker: W,
    cfg: RuntimeConfig,
    codec: Arc<Codec>,
    metrics: WorkerMetrics,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let worker = Arc::new(worker);
    let name = worker.name();
    let tasks: Tasks<W::State> = Arc::new(Mutex::new(HashMap::new()));
    let mut settings: Vec<(&str, &str)> = vec![
        ("group.id", name),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", cfg.assignor.strategy()),
        ("statistics.interval.ms", "5000"),
        ("fetch.wait.max.ms", keyflow_schemas::kafka::FETCH_WAIT_MS),
    ];
    if let Some(id) = &cfg.instance_id {
        settings.push(("group.instance.id", id));
    }
    let mut producer_settings = PRODUCER_DEFAULTS.to_vec();
    // `-X transactional.id=…` wins over the derived one.
    let txn_id = cfg
        .kafka
        .settings(&[])
        .into_iter()
        .find_map(|(k, v)| (k == "transactional.id").then_some(v))
        .unwrap_or_else(|| transactional_id(name, cfg.instance_id.as_deref()));
    if cfg.guarantee == Guarantee::ExactlyOnce {
        settings.push(("isolation.level", "read_committed"));
        producer_settings
            .extend([("transactional.id", txn_id.as_str()), ("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)]);
    }
    let producer: FutureProducer<Quiet> = client_config(&cfg.kafka, &producer_settings)?.create_with_context(Quiet)?;
    if cfg.guarantee == Guarantee::ExactlyOnce {
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(TXN_CALL_TIMEOUT)).await?.with_context(|| {
            format!(
                "--guarantee exactly-once: initializing transactions (transactional.id {txn_id}) failed; \
                 it needs a broker with Kafka transactions (Apache Kafka, or keyflow's broker); \
                 --guarantee effectively-once works on any Kafka-API broker"
            )
        })?;
        tracing::info!(worker = name, transactional_id = %txn_id, "transactions initialized");
    }
    let state_topic = cfg.names.get(&state_topic(name));
    let ctx = Ctx {
        worker: worker.clone(),
        cfg: cfg.clone(),
        tasks: tasks.clone(),
        metrics: metrics.clone(),
        ready,
        producer: producer.clone(),
        state_topic: state_topic.clone(),
    };
    let consumer: StreamConsumer<Ctx<W>> = client_config(&cfg.kafka, &settings)?.create_with_context(ctx)?;
    let inputs: Vec<String> = cfg.inputs.iter().map(|t| cfg.names.get(t)).collect();
    consumer.subscribe(&inputs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let admin: AdminClient<Quiet> = client_config(&cfg.kafka, &[])?.create_with_context(Quiet)?;
    let rt = Runtime {
        producer,
        admin,
        runner: KeyedRunner::new(cfg.max_in_flight),
        state_topic,
        transactional_id: txn_id,
        rejoin: AtomicBool::new(false),
        dlq_topic: cfg.names.get(&dlq_topic(name)),
        worker,
        codec,
        metrics,
        tasks,
        cfg,
    };
    tracing::info!(worker = name, ?inputs, "worker started");
    let (stop_tx, stop) = watch::channel(false);
    let work = consume(&rt, &consumer, stop);
    tokio::pin!(work);
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut work => r?,
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            work.await?;
        }
    }
    tracing::info!(worker = name, "draining and leaving the group");
    let last = rt.settle_others(&BTreeSet::new()).await?;
    commit_offsets(&consumer, &last, CommitMode::Sync);
    consumer.unsubscribe();
    let r: KafkaResult<()> = rt.producer.flush(Duration::from_secs(30));
    r?;
    Ok(())
}

/// Transactions that may fail in a row (each aborted, its batch decided
/// again) before the worker gives up on the error.
const MAX_ABORTS_IN_A_ROW: u32 = 5;

/// How long one transactional call (send offsets, commit, abort) may take.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `transaction.timeout.ms`: how long a transaction may stay open (a batch's
/// writes, a large snapshot included) and how long the broker keeps a
/// crashed instance's open transaction before aborting it: read_committed
/// readers of its partitions wait that long, unless a restart with the same
/// `--instance-id` aborts it at once.
const TRANSACTION_TIMEOUT_MS: &str = "60000";

/// The producer's `transactional.id`: stable per static member, so that a
/// restarted instance fences its predecessor and aborts its open transaction
/// at once; unique per process otherwise (the group generation then fences
/// zombies, KIP-447).
fn transactional_id(worker: &str, instance_id: Option<&str>) -> String {
    match instance_id {
        Some(id) => format!("keyflow-{worker}-{id}"),
        None => {
            let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            format!("keyflow-{worker}-{}-{:x}", std::process::id(), started.as_millis())
        }
    }
}

/// Retries a transactional call while librdkafka says its error is retriable
/// (a coordinator moving, a timeout), a few times with growing pauses.
fn retry_retriable(mut op: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && e.code() != RDKafkaErrorCode::UnsupportedFeature && attempt < 5 =>
            {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "transactional call failed; retrying");
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            r => return r,
        }
    }
}

/// The group's committed offset of one input partition, or its beginning
/// when there is none (`auto.offset.reset=earliest`).
fn committed_offset<C: ConsumerContext>(consumer: &impl Consumer<C>, topic: &str, p: i32) -> anyhow::Result<Offset> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(match committed.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Offset::Offset(o),
        _ => Offset::Beginning,
    })
}

/// A partition list of group offsets.
fn offsets_list(offsets: &[GroupOffset]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, p, o) in offsets {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
    }
    tpl
}

/// Commits group offsets (lag monitoring only: a failure is logged, not fatal).
fn commit_offsets<C: ConsumerContext>(consumer: &impl Consumer<C>, offsets: &[GroupOffset], mode: CommitMode) {
    if offsets.is_empty() {
        return;
    }
    let tpl = offsets_list(offsets);
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::debug!(error = %e, "offset commit failed (lag only)");
    }
}

/// The batch loop: gather, run each task's share, commit group offsets.
/// Returns when `stop` turns true (after the batch in progress, or at once
/// when that batch waits on an outage).
async fn consume<W: Worker>(
    rt: &Runtime<W>,
    consumer: &StreamConsumer<Ctx<W>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let metrics = &rt.metrics;
    let mut aborts_in_a_row = 0;
    loop {
        // Never wait on one recv() for long: each call polls the client, which
        // also serves rebalance events; a missed wake-up must not stall the group.
        let received = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            m = tokio::time::timeout(Duration::from_millis(500), consumer.recv()) => m,
        };
        let first = match received {
            Err(_idle) => {
                // Nothing new: finish publishing what is in flight and commit it.
                commit_offsets(consumer, &rt.settle_others(&BTreeSet::new()).await?, CommitMode::Async);
                continue;
            }
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                // Broker errors surface here (transport failures while a broker
                // restarts): librdkafka reconnects by itself, so wait and poll on.
                metrics.retries.with_label_values(&[metrics::RETRY_BROKER]).inc();
                tracing::warn!(error = %e, "consumer error; retrying");
                if backoff(Duration::from_millis(500), &mut stop).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let mut bytes = first.payload_len();
        let mut batch = vec![first];
        while batch.len() < rt.cfg.max_batch && bytes < MAX_BATCH_INPUT_BYTES {
            match tokio::time::timeout(Duration::from_millis(5), consumer.recv()).await {
                Ok(Ok(m)) => {
                    bytes += m.payload_len();
                    batch.push(m);
                }
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
        let mut by_task: BTreeMap<i32, Vec<&BorrowedMessage<'_>>> = BTreeMap::new();
        for m in &batch {
            by_task.entry(m.partition()).or_default().push(m);
        }
        let busy: BTreeSet<i32> = by_task.keys().copied().collect();
        let mut committable = vec![];
        if rt.cfg.guarantee == Guarantee::ExactlyOnce {
            // 1-3 in one transaction: the batch's outputs, changelog records
            // and input offsets commit together, or the batch is undone and
            // decided again.
            let expected: BTreeMap<i32, u64> =
                lock(&rt.tasks).iter().filter(|(p, _)| busy.contains(*p)).map(|(p, t)| (*p, t.next_batch)).collect();
            let failed = match rt.transact(consumer, by_task, &mut stop).await {
                Err(e) if e.is::<Stopping>() => {
                    tracing::info!("shutdown during an outage: the batch is left to the next owner");
                    return Ok(());
                }
                Err(e) => return Err(e),
                Ok(failed) => failed,
            };
            match failed {
                None => aborts_in_a_row = 0,
                Some((why, _)) if aborts_in_a_row >= MAX_ABORTS_IN_A_ROW => {
                    return Err(why.context(format!("{MAX_ABORTS_IN_A_ROW} transactions in a row failed")));
                }
                Some((why, began)) => {
                    aborts_in_a_row += 1;
                    rt.abort_transaction(consumer, &expected, &why, began)?;
                    let pause = Duration::from_millis(200) * aborts_in_a_row;
                    if backoff(pause, &mut stop).await.is_err() {
                        return Ok(());
                    }
                }
            }
        } else {
            match rt.run_tasks(by_task, &mut stop).await {
                Ok(offsets) => committable.extend(offsets),
                Err(e) if e.is::<Stopping>() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        committable.extend(rt.settle_others(&busy).await?);
        metrics.in_flight.set(0);
        metrics.batch_seconds.observe(batch_started.elapsed().as_secs_f64());
        {
            let tasks = lock(&rt.tasks);
            metrics.state_keys.set(tasks.values().map(|t| t.states.len() as i64).sum());
            metrics.pending.set(tasks.values().map(|t| t.pending).sum());
        }
        // 4. Group offsets of published batches, for lag monitoring only (the
        // checkpoint is the truth).
        commit_offsets(consumer, &committable, CommitMode::Async);
        if rt.rejoin.swap(false, Ordering::Relaxed) {
            tracing::warn!(worker = rt.worker.name(), "leaving the group and joining again");
            let inputs: Vec<String> = rt.cfg.inputs.iter().map(|t| rt.cfg.names.get(t)).collect();
            consumer.unsubscribe();
            consumer.subscribe(&inputs.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_too_large_for_one_record_is_recorded_in_parts_that_restore_to_the_same_outbox() {
        let outbox: Vec<OutboxRecord> = (0..6_000)
            .map(|i| OutboxRecord {
                topic: "payments".into(),
                key: format!("customer-{i}"),
                value: vec![(i % 251) as u8; 300],
                headers: vec![(headers::CAUSE.into(), headers::cause("orders", 0, i).into_bytes())],
            })
            .collect();
        let changed: BTreeMap<String, KeyDelta<i64>> = (0..3_000)
            .map(|i| {
                let delta = KeyDelta {
                    state: i,
                    last_offsets: [("orders/0".to_string(), i)].into(),
                    max_event_time: 0,
                    horizon: 0,
                    event_ids: vec![],
                    idempotency_keys: vec![],
                };
                (format!("customer-{i}"), delta)
            })
            .collect();
        let checkpoint = BTreeMap::from([("orders/0".to_string(), 6_000)]);
        let log = decision_records("payment-state", 0, 7, &checkpoint, &outbox, &changed, Stamp::default()).unwrap();
        assert!(log.len() > 2 && log.len() < 20, "split into a few records, not one per key: {}", log.len());
        for r in &log {
            assert!(r.value.len() <= MAX_COMMIT_BYTES + 4096, "a {}-byte changelog record", r.value.len());
        }
        let entries: Vec<Entry> = log.iter().map(|r| serde_json::from_slice(&r.value).unwrap()).collect();
        assert_eq!(entries.last().map(Entry::kind), Some("commit"), "the commit comes last");
        let restored = changelog::restore_entries::<i64>(entries).unwrap();
        assert_eq!(restored.unpublished, vec![(7, outbox)]);
        assert_eq!(restored.states.len(), 3_000);
        assert_eq!(restored.checkpoint, checkpoint);
    }
}
