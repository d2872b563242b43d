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
//!
//! Here: the task and ownership types, [`run`] and the consume loop. By concern:
//! - `config`: [`RuntimeConfig`], [`Guarantee`], [`Assignor`];
//! - `rebalance`: the consumer context (claim and restore on assignment, settle on revoke);
//! - `batch`: decide, record, publish and settle a batch (effectively-once);
//! - `transact`: the same in one Kafka transaction, abort and rollback (exactly-once);
//! - `snapshot`: snapshots, the ownership check, the changelog trim;
//! - `restore`: reading a changelog partition back into a task;
//! - `records`: decoding inputs, DLQ records, outgoing records and their acknowledgements.

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
use crate::store::{Position, StateDir, Store, StoreKind};
use crate::task::{process_batch, Input, KeyDelta, KeyState, Outcome, Worker};

mod batch;
mod config;
mod rebalance;
mod records;
mod restore;
mod snapshot;
mod transact;
pub use config::{Assignor, Guarantee, RuntimeConfig};
use rebalance::*;
use records::*;
use restore::*;
use transact::*;

/// A batch stops gathering inputs at this many payload bytes (whatever
/// `--max-batch` says), so that the changelog parts of a batch (its outbox and
/// state changes, see [`changelog::batch_entries`]) stay few.
const MAX_BATCH_INPUT_BYTES: usize = 1024 * 1024;

/// The default of [`RuntimeConfig::changelog_record_bytes`]: a batch's
/// commit record carries its state changes when it stays below this, and
/// snapshot parts hold half of it — well below the clients' 1 MiB
/// `message.max.bytes`. A key's state larger than a record is written in
/// pieces ([`changelog::Cut`]).
pub const CHANGELOG_RECORD_BYTES: usize = 512 * 1024;

/// Effectively-once, a task writes its changed keys to the local store at
/// most this often (and when they fill half the cache, the task goes idle,
/// snapshots or is released), not after every batch: a key changed by many
/// batches in that time is written once. A crash loses nothing: the
/// changelog holds those batches and a restart replays them (the tail).
const STORE_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Its keys' states (taken out while a batch runs).
    store: Store<S>,
    next_batch: u64,
    /// Next input offset per input partition, as of the last committed batch.
    checkpoint: BTreeMap<String, i64>,
    /// Offset of the first part of the latest complete snapshot.
    snapshot: Option<i64>,
    /// The offset of this owner's claim on the partition (see
    /// [`changelog::Entry::Claim`]); every record it writes carries it.
    lineage: Option<i64>,
    /// The snapshot that claim's restore started from.
    base: Option<i64>,
    /// This transaction's changelog records (exactly-once): once it commits,
    /// the local store names the last of them.
    staged: Vec<rdkafka::producer::DeliveryFuture>,
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
    /// Where the local store will stand once its changes since the last
    /// persist are written (effectively-once writes them at most every
    /// [`STORE_PERSIST_INTERVAL`]).
    deferred: Option<Position>,
}

/// An owner's own records in its changelog partition since `verified`, the
/// offset up to which it has checked that no other owner claimed the
/// partition. When they fill every offset up to a snapshot's last part, the
/// check costs nothing; otherwise the gap is read (see [`Runtime::still_owner`]).
#[derive(Default)]
struct Ownership {
    /// The highest offset of an own record known to be acknowledged.
    last: i64,
    verified: i64,
    /// Own records known to be acknowledged above `verified`.
    written: u64,
    /// Own records queued without waiting (published markers).
    queued: Vec<rdkafka::producer::DeliveryFuture>,
}

impl Ownership {
    fn new(claim: i64) -> Self {
        Ownership { last: claim, verified: claim, written: 0, queued: vec![] }
    }

    /// An own record was acknowledged at `offset`.
    fn saw(&mut self, offset: i64) {
        self.last = self.last.max(offset);
    }

    /// A record queued without waiting: counted once acknowledged.
    fn wrote_later(&mut self, delivery: rdkafka::producer::DeliveryFuture) {
        self.reap();
        self.queued.push(delivery);
    }

    /// The offset up to which no other owner's claim is in the changelog:
    /// the last own record when own records fill every offset since the
    /// last check (always, for a sole owner writing without transactions),
    /// else the last check.
    fn unclaimed(&mut self) -> i64 {
        self.reap();
        if self.written as i64 == self.last - self.verified {
            self.last
        } else {
            self.verified
        }
    }

    /// Counts the queued records already answered.
    fn reap(&mut self) {
        let mut pending = Vec::with_capacity(self.queued.len());
        for mut d in std::mem::take(&mut self.queued) {
            match futures::FutureExt::now_or_never(&mut d) {
                Some(Ok(Ok(delivery))) => {
                    self.written += 1;
                    self.saw(delivery.offset);
                }
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

impl<S: serde::Serialize + serde::de::DeserializeOwned + Default> Task<S> {
    fn stamp(&self) -> Stamp {
        Stamp { snapshot: self.snapshot, lineage: self.lineage }
    }

    /// Where its local store stands once every own record up to `at` is
    /// reflected in it; a restore continues at `from`.
    fn position(&mut self, site: &StoreSite, p: i32, at: i64, from: i64) -> Position {
        let verified = self.ownership.unclaimed();
        Position {
            cluster: site.cluster.clone(),
            topic: site.topic.clone(),
            partition: p,
            lineage: self.lineage,
            base: self.base,
            snapshot: self.snapshot,
            batch: self.next_batch - 1,
            checkpoint: self.checkpoint.clone(),
            at,
            from,
            verified,
            since_snapshot: self.since_snapshot,
            snapshot_bytes: self.snapshot_bytes,
            pending: self.pending,
            keys: 0,
        }
    }

    /// Records in its local store that everything this owner wrote is
    /// reflected (a released partition with nothing left to publish): a
    /// restart then reads no changelog record before its new claim.
    fn persist_released(&mut self, site: &StoreSite, p: i32) {
        if !self.store.is_disk() || self.unacked.is_some() || self.lineage.is_none() {
            return;
        }
        self.ownership.reap();
        let last = self.ownership.last;
        let position = self.position(site, p, last, last + 1);
        self.deferred = None;
        if let Err(e) = self.store.persist(position) {
            tracing::warn!(partition = p, error = %e, "could not record the local store's position; the next start replays more of the changelog");
        }
    }

    /// A task without history: it starts at the group's committed offsets.
    fn empty() -> Self {
        Task {
            store: Store::memory(),
            next_batch: 1,
            checkpoint: BTreeMap::new(),
            snapshot: None,
            lineage: None,
            base: None,
            staged: vec![],
            ownership: Ownership::default(),
            deferred: None,
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

/// Where tasks keep their states: the instance's state directory (disk
/// stores) and what a store records its changelog partition by.
struct StoreSite {
    dir: Option<Arc<StateDir>>,
    cache_keys: usize,
    cluster: String,
    topic: String,
}

impl StoreSite {
    /// Partition `p`'s store: its disk store (with its share of the
    /// instance's cache, `tasks` being assigned), or an empty memory store.
    fn open<S>(&self, p: i32, tasks: usize) -> anyhow::Result<Store<S>> {
        match &self.dir {
            Some(dir) => Ok(dir.task(p, self.cache_keys / tasks.max(1))?),
            None => Ok(Store::memory()),
        }
    }
}

/// One task's share of a batch, decided and encoded but not yet written.
struct Decided<S> {
    p: i32,
    batch: u64,
    inputs: usize,
    /// The task's store, taken out of it while the batch runs, and the
    /// states of the batch's keys, taken out of the store.
    store: Store<S>,
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
    site: Arc<StoreSite>,
    /// When the worker started, and whether it has processed an input since.
    started: Instant,
    first_done: AtomicBool,
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
    let started = Instant::now();
    let worker = Arc::new(worker);
    let name = worker.name();
    let state_topic = cfg.names.get(&state_topic(name));
    let site = Arc::new(open_stores(&cfg, &state_topic)?);
    let tasks: Tasks<W::State> = Arc::new(Mutex::new(HashMap::new()));
    let mut settings: Vec<(&str, &str)> = vec![
        ("group.id", name),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", cfg.assignor.strategy()),
        ("statistics.interval.ms", "5000"),
        ("fetch.wait.max.ms", keyflow_schemas::kafka::FETCH_WAIT_MS),
        // A prefetch of 16 MiB a partition keeps batches full (librdkafka's
        // 64 MiB default was a quarter of the worker's memory with 1M keys).
        ("queued.max.messages.kbytes", "16384"),
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
    let ctx = Ctx {
        worker: worker.clone(),
        cfg: cfg.clone(),
        tasks: tasks.clone(),
        metrics: metrics.clone(),
        ready,
        producer: producer.clone(),
        state_topic: state_topic.clone(),
        site: site.clone(),
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
        site,
        started,
        first_done: AtomicBool::new(false),
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
    for (p, task) in lock(&rt.tasks).iter_mut() {
        task.persist_released(&rt.site, *p);
    }
    Ok(())
}

/// The instance's state directory, locked (disk stores of a worker that
/// records its decisions), and the cluster its stores belong to.
fn open_stores(cfg: &RuntimeConfig, topic: &str) -> anyhow::Result<StoreSite> {
    let disk = cfg.store.kind == StoreKind::Disk && cfg.guarantee.records();
    let dir = match disk {
        true => Some(StateDir::open(&cfg.store.dir, cfg.store.block_cache_bytes)?),
        false => None,
    };
    let cluster = match disk {
        true => ChangelogSource::client(cfg)?.client().fetch_cluster_id(Duration::from_secs(30)).unwrap_or_default(),
        false => String::new(),
    };
    if let Some(d) = &dir {
        tracing::info!(dir = %d.path().display(), cache_keys = cfg.store.cache_keys, cluster, "local state store opened");
    }
    Ok(StoreSite { dir, cache_keys: cfg.store.cache_keys, cluster, topic: topic.to_string() })
}

/// The task gauges (partitions assigned, keys held, pending work, the
/// store's bytes on disk) and the cache lookups since the last call.
fn publish_task_gauges<S>(metrics: &WorkerMetrics, site: &StoreSite, tasks: &mut HashMap<i32, Task<S>>) {
    let mut keys = 0;
    for t in tasks.values_mut() {
        keys += t.store.len() as i64;
        let (hits, misses) = t.store.take_lookups();
        metrics.store_cache.with_label_values(&[metrics::CACHE_HIT]).inc_by(hits);
        metrics.store_cache.with_label_values(&[metrics::CACHE_MISS]).inc_by(misses);
    }
    metrics.assigned.set(tasks.len() as i64);
    metrics.state_keys.set(keys);
    metrics.pending.set(tasks.values().map(|t| t.pending).sum());
    if let Some(dir) = &site.dir {
        metrics.store_bytes.set(dir.disk_bytes() as i64);
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
                // Nothing new: finish publishing what is in flight and commit
                // it; write the local stores' deferred changes.
                commit_offsets(consumer, &rt.settle_others(&BTreeSet::new()).await?, CommitMode::Async);
                rt.persist_deferred()?;
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
        publish_task_gauges(metrics, &rt.site, &mut lock(&rt.tasks));
        if !rt.first_done.swap(true, Ordering::Relaxed) {
            metrics.first_record_seconds.set(rt.started.elapsed().as_secs_f64());
            tracing::info!(worker = rt.worker.name(), after = ?rt.started.elapsed(), "first input processed");
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
        let max = CHANGELOG_RECORD_BYTES;
        let entries = changelog::batch_entries(7, &checkpoint, &outbox, &changed, max).unwrap();
        let log = decision_records("payment-state", 0, &entries, Stamp::default()).unwrap();
        assert!(log.len() > 2 && log.len() < 20, "split into a few records, not one per key: {}", log.len());
        for r in &log {
            assert!(r.value.len() <= max + 4096, "a {}-byte changelog record", r.value.len());
        }
        let entries: Vec<Entry> = log.iter().map(|r| serde_json::from_slice(&r.value).unwrap()).collect();
        assert_eq!(entries.last().map(Entry::kind), Some("commit"), "the commit comes last");
        let restored = changelog::restore_entries::<i64>(entries).unwrap();
        assert_eq!(restored.unpublished, vec![(7, outbox)]);
        assert_eq!(restored.states.len(), 3_000);
        assert_eq!(restored.checkpoint, checkpoint);
    }
}
