//! Restoring a task from its changelog partition: claiming newly assigned
//! partitions, reading the changelog (`ChangelogReader`, `ChangelogSource`
//! for `changelog::restore`), retrying transient failures, and refusing a
//! changelog that would take state back (`Unrestorable`).

use super::*;

/// What a restore re-published (what it read is counted as it reads).
pub(super) struct RestoreStats {
    pub(super) republished: u64,
}

/// Restores partition `p`, retrying failures (a broker down, a leader
/// moving) with capped backoff for up to [`RESTORE_PATIENCE`]; every try
/// reads up to the same claim.
pub(super) fn restore_with_retry<W: Worker>(
    worker: &W,
    cfg: &RuntimeConfig,
    site: &StoreSite,
    p: i32,
    metrics: &WorkerMetrics,
    how: Restore,
    mut store: Store<W::State>,
) -> anyhow::Result<(Task<W::State>, RestoreStats)> {
    with_retry(&format!("restoring partition {p}"), metrics, || {
        restore_task(worker, cfg, site, p, metrics, how, &mut store)
    })
}

/// Runs `attempt` until it succeeds, retrying failures with capped backoff
/// for up to [`RESTORE_PATIENCE`] (not a changelog that breaks the protocol,
/// nor a partition another member claimed: retrying cannot help those).
pub(super) fn with_retry<T>(
    what: &str,
    metrics: &WorkerMetrics,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match attempt() {
            Ok(r) => return Ok(r),
            Err(e) if started.elapsed() < RESTORE_PATIENCE && !e.is::<Unrestorable>() && !e.is::<Claimed>() => {
                metrics.retries.with_label_values(&[metrics::RETRY_RESTORE]).inc();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "{what} failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An owner's claim on a changelog partition (see [`changelog::Entry::Claim`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    /// The snapshot its restore starts from.
    pub(super) base: Option<i64>,
    /// Its offset: the owner's lineage.
    pub(super) offset: i64,
}

/// What a restore reads up to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Restore {
    /// A new owner's: up to its claim.
    Claimed(Claim),
    /// An exactly-once rollback's: up to the last stable offset, as the
    /// same owner (no new claim: a claim written by a member that may have
    /// lost the partition meanwhile would fence its new owner).
    Rollback { lineage: Option<i64>, base: Option<i64> },
}

/// Another member claimed the partition after this one: it lost it.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition} was claimed by another member at changelog offset {claim}")]
pub(super) struct Claimed {
    pub(super) partition: i32,
    pub(super) claim: i64,
}

/// Claims every newly assigned partition at once, right after the
/// assignment (before any restore, which may take long: a claim written
/// after the member lost the partition again would fence its new owner).
pub(super) fn claim_partitions(
    cfg: &RuntimeConfig,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> anyhow::Result<BTreeMap<i32, Claim>> {
    // Outside any transaction: a claim stands whatever its owner does next.
    let producer: FutureProducer<Quiet> = client_config(&cfg.kafka, PRODUCER_DEFAULTS)?.create_with_context(Quiet)?;
    let mut claims = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let base = ChangelogSource::open(cfg, topic, p, None)?.start_pointer()?;
        let record = Outgoing::changelog(topic, p, &Entry::Claim { base }, Stamp { snapshot: base, lineage: None })?;
        let delivery = futures::executor::block_on(enqueue(&producer, &record))?;
        claims.push((p, base, delivery));
    }
    let mut out = BTreeMap::new();
    for (p, base, delivery) in claims {
        let offset = delivered(Some(futures::executor::block_on(delivery)), format_args!("the claim on {topic}[{p}]"))?;
        out.insert(p, Claim { base, offset });
    }
    Ok(out)
}

/// Where task `p` resumes on each input: its checkpoint, or the group's
/// committed offset for an input it has never recorded a batch of.
pub(super) fn resume_offsets<S>(cfg: &RuntimeConfig, p: i32, task: &Task<S>) -> Vec<(String, Offset)> {
    cfg.inputs
        .iter()
        .map(|t| {
            let topic = cfg.names.get(t);
            let offset = task.checkpoint.get(&format!("{topic}/{p}")).map_or(Offset::Stored, |o| Offset::Offset(*o));
            (topic, offset)
        })
        .collect()
}

/// Reads changelog records `[from, to)` of one partition one at a time, so a
/// restore applies each record as it arrives and holds no more than one
/// record's entry (a snapshot of a million keys is not read into memory
/// whole). Counts what it read; a read error ends the iteration and is kept
/// in `error`.
pub(super) struct ChangelogReader<'a> {
    /// A consumer of its own: its position is this read's alone.
    pub(super) consumer: BaseConsumer<Quiet>,
    pub(super) topic: &'a str,
    pub(super) p: i32,
    pub(super) from: i64,
    pub(super) next: i64,
    pub(super) to: i64,
    pub(super) deadline: Instant,
    /// Records and bytes read.
    pub(super) records: u64,
    pub(super) bytes: u64,
    /// Bytes of the snapshot parts the read started with (when it starts at one).
    pub(super) snapshot_bytes: u64,
    pub(super) in_leading_snapshot: bool,
    /// The snapshot pointer of the last record read.
    pub(super) pointer: Option<i64>,
    pub(super) error: Option<anyhow::Error>,
    /// Restore progress metrics, counted record by record.
    pub(super) progress: Option<&'a WorkerMetrics>,
    /// When the read last advanced (a stalled read is logged).
    pub(super) advanced: Instant,
    /// The changelog is written in transactions: commit markers and aborted
    /// records hold offsets that are never delivered, so the read also ends
    /// once the consumer's position has passed the range.
    pub(super) transactional: bool,
}

impl<'a> ChangelogReader<'a> {
    /// Counts every record read into the restore progress metrics.
    fn counting(mut self, metrics: &'a WorkerMetrics) -> Self {
        self.progress = Some(metrics);
        self
    }

    pub(super) fn open(
        consumer: BaseConsumer<Quiet>,
        topic: &'a str,
        p: i32,
        (from, to): (i64, i64),
        from_snapshot: bool,
        transactional: bool,
    ) -> anyhow::Result<Self> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
        consumer.assign(&tpl)?;
        Ok(ChangelogReader {
            consumer,
            topic,
            p,
            from,
            next: from,
            to,
            deadline: Instant::now() + Duration::from_secs(600),
            records: 0,
            bytes: 0,
            snapshot_bytes: 0,
            in_leading_snapshot: from_snapshot,
            pointer: None,
            error: None,
            progress: None,
            advanced: Instant::now(),
            transactional,
        })
    }

    /// The consumer's position in the partition (past every record and
    /// transaction marker it has passed).
    fn read_position(&self) -> Option<i64> {
        keyflow_schemas::kafka::position(&self.consumer, self.topic, self.p)
    }

    /// The read's error, if it ended on one.
    pub(super) fn finish(self) -> anyhow::Result<Self> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

/// A changelog record header holding an offset.
pub(super) fn offset_header(m: &BorrowedMessage<'_>, name: &str) -> Option<i64> {
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

impl Iterator for ChangelogReader<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let (topic, p) = (self.topic, self.p);
        while self.next < self.to && self.error.is_none() {
            if Instant::now() > self.deadline {
                let (from, to) = (self.from, self.to);
                self.error = Some(anyhow::anyhow!("reading {topic}[{p}] {from}..{to} did not finish in 600 s"));
                break;
            }
            match self.consumer.poll(Duration::from_millis(500)) {
                // Only the range asked for: a record from beyond it (a fetch of an
                // earlier assignment, or one appended since the watermarks were
                // read) must not end the read before the range is complete.
                Some(Ok(m)) if (self.next..self.to).contains(&m.offset()) => {
                    self.next = m.offset() + 1;
                    self.advanced = Instant::now();
                    self.pointer = offset_header(&m, SNAPSHOT_HEADER);
                    let Some(v) = m.payload() else { continue };
                    match serde_json::from_slice::<Entry>(v) {
                        Ok(entry) => {
                            self.records += 1;
                            self.bytes += v.len() as u64;
                            if let Some(m) = self.progress {
                                m.restore_records.inc();
                                m.restore_bytes.inc_by(v.len() as u64);
                            }
                            self.in_leading_snapshot &= matches!(entry, Entry::Snapshot { .. });
                            if self.in_leading_snapshot {
                                self.snapshot_bytes += v.len() as u64;
                            }
                            let lineage = offset_header(&m, LINEAGE_HEADER);
                            return Some(Record { offset: m.offset(), lineage, pointer: self.pointer, entry });
                        }
                        Err(e) => self.error = Some(anyhow::anyhow!("{topic}[{p}] offset {}: {e}", m.offset())),
                    }
                }
                Some(Ok(_)) | None => {
                    if self.transactional && self.read_position().is_some_and(|o| o >= self.to) {
                        break;
                    }
                    if self.advanced.elapsed() > Duration::from_secs(15) {
                        let position = self.read_position();
                        tracing::warn!(
                            topic,
                            partition = p,
                            next = self.next,
                            to = self.to,
                            ?position,
                            "changelog read makes no progress"
                        );
                        self.advanced = Instant::now();
                    }
                }
                Some(Err(e)) => self.error = Some(e.into()),
            }
        }
        None
    }
}

/// A changelog partition as a restore reads it: every read has a consumer
/// of its own (a reused one could report the previous read's position), and
/// what they read is counted.
pub(super) struct ChangelogSource<'a> {
    pub(super) cfg: &'a RuntimeConfig,
    pub(super) topic: &'a str,
    pub(super) p: i32,
    /// Restore progress metrics (none for a look at the tail).
    pub(super) metrics: Option<&'a WorkerMetrics>,
    /// Reads stop at the last stable offset and skip commit markers.
    pub(super) txn: bool,
    /// The consumer that asked for the watermarks has read nothing yet: the
    /// first read takes it.
    pub(super) unread: Option<BaseConsumer<Quiet>>,
    pub(super) low: i64,
    pub(super) high: i64,
    /// Records and bytes read by the restore proper; bytes of the snapshot it started with.
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) snapshot_bytes: u64,
}

impl<'a> ChangelogSource<'a> {
    pub(super) fn open(
        cfg: &'a RuntimeConfig,
        topic: &'a str,
        p: i32,
        metrics: Option<&'a WorkerMetrics>,
    ) -> anyhow::Result<Self> {
        // read_committed (the reader's default): `high` is the last stable offset.
        let asked = Self::client(cfg)?;
        let (low, high) = asked.fetch_watermarks(topic, p, Duration::from_secs(30))?;
        let txn = cfg.guarantee == Guarantee::ExactlyOnce;
        Ok(ChangelogSource {
            cfg,
            topic,
            p,
            metrics,
            txn,
            unread: Some(asked),
            low,
            high,
            records: 0,
            bytes: 0,
            snapshot_bytes: 0,
        })
    }

    pub(super) fn client(cfg: &RuntimeConfig) -> anyhow::Result<BaseConsumer<Quiet>> {
        Ok(keyflow_schemas::kafka::reader_config(&cfg.kafka, "keyflow-restore")?.create_with_context(Quiet)?)
    }

    fn reader(&mut self, (from, to): (i64, i64), from_snapshot: bool) -> anyhow::Result<ChangelogReader<'a>> {
        let consumer = match self.unread.take() {
            Some(c) => c,
            None => Self::client(self.cfg)?,
        };
        ChangelogReader::open(consumer, self.topic, self.p, (from, to), from_snapshot, self.txn)
    }

    /// Where the restore starts: the snapshot pointer of the last record (in
    /// a transactional changelog the last offsets may be commit markers or
    /// aborted records, so more are read, then more, before settling for the
    /// beginning); `None` when there is no snapshot or it lies below the log
    /// start.
    fn start_pointer(&mut self) -> anyhow::Result<Option<i64>> {
        let tails: &[i64] = if self.txn { &TXN_POINTER_TAILS } else { &[1] };
        let (low, high) = (self.low, self.high);
        for tail in tails {
            if high <= low {
                break;
            }
            let from = (high - tail).max(low);
            let mut last = self.reader((from, high), false)?;
            last.by_ref().for_each(drop);
            if let Some(pointer) = last.finish()?.pointer {
                return Ok(Some(pointer).filter(|o| (low..high).contains(o)));
            }
            if from == low {
                break;
            }
        }
        Ok(None)
    }
}

/// Records a restore's fetcher may read ahead of the records applied (a
/// snapshot part is up to 256 KiB).
const READ_AHEAD_RECORDS: usize = 16;

impl changelog::Source for ChangelogSource<'_> {
    fn low(&self) -> i64 {
        self.low
    }

    fn read(&mut self, from: Option<i64>, to: i64, each: &mut dyn FnMut(Record) -> bool) -> Result<(), RestoreError> {
        let first = self.records == 0;
        let start = from.unwrap_or(self.low);
        let mut reader = self.reader((start, to), from.is_some()).map_err(RestoreError::Read)?;
        if let Some(m) = self.metrics {
            reader = reader.counting(m);
        }
        // Fetching and parsing records on a thread of their own, while this
        // one applies them: a restore takes the longer of the two, not their sum.
        let reader = std::thread::scope(|scope| {
            let (records, received) = std::sync::mpsc::sync_channel(READ_AHEAD_RECORDS);
            let fetcher = scope.spawn(move || {
                for record in reader.by_ref() {
                    if records.send(record).is_err() {
                        break; // the restore stopped reading
                    }
                }
                reader
            });
            for record in &received {
                if !each(record) {
                    break;
                }
            }
            drop(received);
            fetcher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let reader = reader.finish().map_err(RestoreError::Read)?;
        self.records += reader.records;
        self.bytes += reader.bytes;
        if first {
            self.snapshot_bytes = reader.snapshot_bytes;
        }
        Ok(())
    }
}

/// Rebuilds partition `p`'s task from its changelog: from its latest
/// snapshot up to its claim (a new owner) or the end (a rollback), under the
/// rules of [`changelog::restore`], and re-publishes what was decided but
/// not published. A changelog that breaks the protocol stops the task with
/// the reason: it never runs on a state older than its checkpoint.
///
/// A disk store that belongs to this changelog continues from where it
/// stands (reading only the records past it: none after a clean stop);
/// one that is missing, partly written, ahead of the changelog, behind its
/// trimmed start or written from another changelog is rebuilt from the
/// latest snapshot.
pub(super) fn restore_task<W: Worker>(
    worker: &W,
    cfg: &RuntimeConfig,
    site: &StoreSite,
    p: i32,
    metrics: &WorkerMetrics,
    how: Restore,
    store: &mut Store<W::State>,
) -> anyhow::Result<(Task<W::State>, RestoreStats)> {
    let name = worker.name();
    let started = Instant::now();
    let topic = site.topic.as_str();
    let mut source = ChangelogSource::open(cfg, topic, p, Some(metrics))?;
    let (base, end, lineage, claim_base) = match how {
        Restore::Claimed(c) => (c.base, c.offset, Some(c.offset), c.base),
        Restore::Rollback { lineage, base } => (source.start_pointer()?, source.high, lineage, base),
    };
    let position = store.position().cloned();
    let disk = store.is_disk();
    let mut states = Pending { store, worker, sum: 0 };
    let resumed = match resumable(cfg, &source, site, p, position.as_ref(), end) {
        Ok(resume) => {
            states.sum = position.as_ref().map_or(0, |pos| pos.pending);
            match changelog::resume::<W::State>(&mut source, resume, end, &mut states) {
                Ok(r) => Some(r),
                Err(RestoreError::Read(e)) => return Err(e.context(format!("restoring {topic}[{p}]"))),
                Err(why) => {
                    tracing::warn!(worker = name, partition = p, reason = %why, "the local store cannot be continued; rebuilding it from the latest snapshot");
                    None
                }
            }
        }
        Err(why) => {
            if disk {
                tracing::info!(worker = name, partition = p, reason = %why, "rebuilding the local store from the latest snapshot");
            }
            None
        }
    };
    let from_store = resumed.is_some();
    let restored = match resumed {
        Some(r) => r,
        None => {
            states.sum = 0;
            match changelog::restore_into::<W::State>(&mut source, base, end, &mut states) {
                Ok(r) => r,
                Err(RestoreError::Read(e)) => return Err(e.context(format!("restoring {topic}[{p}]"))),
                Err(corrupt) => return Err(Unrestorable(format!("{topic}[{p}]: {corrupt}")).into()),
            }
        }
    };
    let pending = states.sum;
    if disk {
        let result = if from_store { metrics::STORE_RESUMED } else { metrics::STORE_REBUILT };
        metrics.store_starts.with_label_values(&[result]).inc();
    }
    if let (Restore::Rollback { .. }, Some(claim)) = (how, restored.lineage.filter(|l| Some(*l) != lineage)) {
        return Err(Claimed { partition: p, claim }.into());
    }
    let producer: FutureProducer<Quiet> = client_config(&cfg.kafka, PRODUCER_DEFAULTS)?.create_with_context(Quiet)?;
    let stamp = Stamp { snapshot: base, lineage };
    let republished = restored.unpublished.iter().map(|(_, o)| o.len() as u64).sum();
    // Own records from the claim on. No other claim is below `end`: the
    // restore read every claim up to it (a claim: its own; a rollback: its
    // lineage is still the latest, checked above).
    let mut ownership = Ownership::new(lineage.unwrap_or(end - 1));
    if let Some(proof) = restored.proof {
        ownership.saw(proof);
    }
    ownership.verified = ownership.verified.max(end - 1);
    if !restored.unpublished.is_empty() {
        let outputs = futures::executor::block_on(async {
            let mut outputs = vec![];
            for (batch, outbox) in &restored.unpublished {
                for o in outbox {
                    outputs.push(enqueue(&producer, &Outgoing::outbox(o)).await?);
                }
                ownership.queued.push(enqueue(&producer, &Outgoing::published(topic, p, *batch, stamp)?).await?);
                tracing::warn!(
                    worker = name,
                    partition = p,
                    batch,
                    records = outbox.len(),
                    "re-published an unpublished outbox"
                );
            }
            anyhow::Ok(outputs)
        })?;
        producer.flush(Duration::from_secs(60))?;
        for d in outputs {
            delivered(futures::FutureExt::now_or_never(d), format_args!("a re-published output of {topic}[{p}]"))?;
        }
    }
    if restored.fenced > 0 {
        tracing::warn!(
            worker = name,
            partition = p,
            records = restored.fenced,
            "skipped changelog records a previous owner wrote after losing the partition"
        );
    }
    let (since_snapshot, snapshot_bytes) = match (&position, from_store) {
        (Some(pos), true) => (pos.since_snapshot + source.bytes, pos.snapshot_bytes),
        _ => (source.bytes - source.snapshot_bytes, source.snapshot_bytes),
    };
    let mut task = Task {
        store: std::mem::take(states.store),
        next_batch: restored.last_batch + 1,
        checkpoint: restored.checkpoint,
        snapshot: base,
        lineage,
        base: claim_base,
        staged: vec![],
        ownership,
        since_snapshot,
        snapshot_bytes,
        trim_after_commit: None,
        pending,
        unacked: None,
        deferred: None,
    };
    tracing::info!(
        worker = name, partition = p, keys = task.store.len(), records = source.records, bytes = source.bytes,
        from_snapshot = ?base, from_store, lineage = ?lineage, took = ?started.elapsed(),
        dropped_tail = restored.dropped_tail, "task restored"
    );
    if task.store.is_disk() {
        // What was restored is on disk; a restart continues past the claim
        // (a rollback: past the end it read).
        let at = match how {
            Restore::Claimed(c) => Some(c.offset),
            Restore::Rollback { .. } => restored.proof.or(position.map(|pos| pos.at)),
        };
        if let Some(at) = at {
            let position = task.position(site, p, at, end.max(at + 1));
            task.store.persist(position).with_context(|| format!("writing {topic}[{p}]'s local store"))?;
        }
    }
    Ok((task, RestoreStats { republished }))
}

/// Whether a disk store can continue from where it stands: it has a
/// position, belongs to this cluster's changelog partition, is not ahead of
/// the changelog, and the record it names is there and its own.
fn resumable(
    cfg: &RuntimeConfig,
    source: &ChangelogSource<'_>,
    site: &StoreSite,
    p: i32,
    position: Option<&Position>,
    end: i64,
) -> Result<changelog::Resume, String> {
    let Some(pos) = position else { return Err("it has no position (new, or cut short while rebuilt)".into()) };
    pos.belongs_to(&site.cluster, &site.topic, p)?;
    pos.within(source.low, source.high, end)?;
    let record = (|| -> anyhow::Result<Option<Record>> {
        let consumer = ChangelogSource::client(cfg)?;
        let mut reader = ChangelogReader::open(consumer, &site.topic, p, (pos.at, pos.at + 1), false, source.txn)?;
        let first = reader.next();
        reader.finish()?;
        Ok(first)
    })()
    .map_err(|e| format!("reading its record at offset {}: {e:#}", pos.at))?;
    pos.proves(record.as_ref())?;
    Ok(pos.resume())
}

/// The store as a restore fills it, keeping the sum of the worker's
/// pending work over the keys up to date as their states change.
struct Pending<'a, W: Worker> {
    store: &'a mut Store<W::State>,
    worker: &'a W,
    sum: i64,
}

impl<W: Worker> changelog::Rebuild<W::State> for Pending<'_, W> {
    fn put(
        &mut self,
        key: String,
        state: KeyState<W::State>,
        json: Option<&changelog::Raw>,
    ) -> Result<(), RestoreError> {
        self.sum += self.worker.pending(&state.state) as i64;
        self.store.put(key, state, json)
    }

    fn get(&mut self, key: &str) -> Result<KeyState<W::State>, RestoreError> {
        let state = self.store.get(key)?;
        self.sum -= self.worker.pending(&state.state) as i64;
        Ok(state)
    }

    fn clear(&mut self) -> Result<(), RestoreError> {
        self.sum = 0;
        self.store.clear()
    }
}

/// A changelog that breaks the protocol: retrying the restore will not help.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore {0}; the task will not run on a state that would go back")]
pub(super) struct Unrestorable(String);
