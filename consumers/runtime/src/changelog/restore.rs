//! Restores: replaying a changelog partition (from a snapshot, through
//! claims and lineages) into state, checkpoint and outbox, with the checks
//! of the protocol (see the parent module).

use super::*;

/// What a restore yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored<S> {
    /// State per key.
    pub states: HashMap<String, KeyState<S>>,
    /// Next input offset per input partition (`topic/partition` → offset).
    pub checkpoint: BTreeMap<String, i64>,
    /// The last committed batch number (0 when none).
    pub last_batch: u64,
    /// Outboxes of committed batches without a `Published` marker, oldest first.
    pub unpublished: Vec<(u64, Vec<OutboxRecord>)>,
    /// Entries after the last commit that were dropped (an undecided batch).
    pub dropped_tail: usize,
    /// Records skipped because an owner that had lost the partition wrote them
    /// after a newer owner's claim.
    pub fenced: usize,
    /// The lineage the result follows: the offset of the latest claim read.
    pub lineage: Option<i64>,
}

impl<S> Default for Restored<S> {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            checkpoint: BTreeMap::new(),
            last_batch: 0,
            unpublished: vec![],
            dropped_tail: 0,
            fenced: 0,
            lineage: None,
        }
    }
}

/// Why a changelog cannot be restored from.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The records break the protocol (reading again will not help): the
    /// task must not run on what they would give.
    #[error("changelog: {0}")]
    Corrupt(String),
    /// Reading failed (a broker down, a timeout): a retry may succeed.
    #[error("reading the changelog: {0:#}")]
    Read(anyhow::Error),
}

impl RestoreError {
    fn corrupt(why: impl Into<String>) -> Self {
        RestoreError::Corrupt(why.into())
    }
}

/// One changelog record as a restore reads it: the entry and the two
/// headers every record carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub offset: i64,
    /// [`LINEAGE_HEADER`]: the offset of its writer's [`Entry::Claim`]
    /// (`None` for records written before claims existed).
    pub lineage: Option<i64>,
    /// [`SNAPSHOT_HEADER`]: the snapshot a restore starts from.
    pub pointer: Option<i64>,
    pub entry: Entry,
}

/// Where a restore reads a changelog partition.
pub trait Source {
    /// The partition's first offset (above 0 once retention deleted records).
    fn low(&self) -> i64;
    /// Calls `each` with the records of `[from, to)` in offset order (`from`
    /// `None`: from the partition's first offset) until it returns false.
    fn read(&mut self, from: Option<i64>, to: i64, each: &mut dyn FnMut(Record) -> bool) -> Result<(), RestoreError>;
}

/// A changelog partition held in memory (tests, the model check).
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    /// Offset of the first record kept (records below it were trimmed).
    pub start: i64,
    pub records: Vec<Record>,
}

impl MemoryLog {
    /// The offset the next record gets.
    pub fn end(&self) -> i64 {
        self.start + self.records.len() as i64
    }

    /// Appends an entry with its headers; returns its offset.
    pub fn append(&mut self, entry: Entry, lineage: Option<i64>, pointer: Option<i64>) -> i64 {
        let offset = self.end();
        self.records.push(Record { offset, lineage, pointer, entry });
        offset
    }

    /// Drops the records below `offset`.
    pub fn trim(&mut self, offset: i64) {
        let n = (offset - self.start).clamp(0, self.records.len() as i64);
        self.records.drain(..n as usize);
        self.start += n;
    }

    /// Where a restore starts: the last record's snapshot pointer.
    pub fn pointer(&self) -> Option<i64> {
        self.records.last().and_then(|r| r.pointer).filter(|p| *p >= self.start)
    }

    /// The records of `[from, to)` still in the log.
    pub fn range(&self, from: i64, to: i64) -> &[Record] {
        let at = |o: i64| ((o - self.start).max(0) as usize).min(self.records.len());
        &self.records[at(from)..at(to)]
    }
}

impl Source for MemoryLog {
    fn low(&self) -> i64 {
        self.start
    }

    fn read(&mut self, from: Option<i64>, to: i64, each: &mut dyn FnMut(Record) -> bool) -> Result<(), RestoreError> {
        let from = from.unwrap_or(self.start);
        if from < self.start {
            return Err(RestoreError::Read(anyhow::anyhow!("offset {from} is below the log start {}", self.start)));
        }
        for r in
            &self.records[(from - self.start) as usize..((to - self.start).max(0) as usize).min(self.records.len())]
        {
            if !each(r.clone()) {
                break;
            }
        }
        Ok(())
    }
}

/// The first claim in `records` newer than `lineage`: another owner took the
/// partition over, and what the owner of `lineage` writes from there on is
/// skipped by every restore. An owner checks this before it points later
/// records at a snapshot it wrote: a snapshot completed before any newer
/// claim is a valid start for every restore (a walk from it meets every
/// later claim), so no pointer in the log ever leads a restore past one.
pub fn newer_claim(records: &[Record], lineage: i64) -> Option<i64> {
    records.iter().find(|r| matches!(r.entry, Entry::Claim { .. }) && r.offset > lineage).map(|r| r.offset)
}

/// How many reads one restore may need (each claim whose owner started
/// elsewhere, each redirect, costs one) before the log counts as corrupt.
const MAX_READS: usize = 64;

/// Rebuilds a task from changelog `[start, end)`: `start` is the snapshot
/// the restore begins with (the pointer in the last record), or `None` for
/// the partition's first offset; `end` is the offset of the restoring
/// owner's own [`Entry::Claim`] (or the end of the log, for a read-only look).
///
/// The rules (see the module docs): records of a lineage older than the
/// latest claim read are skipped; at a claim, the state becomes what its
/// owner restored (read again from its base when this read began
/// elsewhere); a record of a newer lineage whose claim lies before `start`
/// restarts the read at that record's snapshot pointer. Every applied batch
/// must move each key's offsets and the checkpoint forward, and the result
/// must not hold a key newer than the checkpoint: otherwise the restore fails
/// with [`RestoreError::Corrupt`] and never yields a state that went back.
pub fn restore<S: DeserializeOwned + Default + Clone>(
    source: &mut dyn Source,
    start: Option<i64>,
    end: i64,
) -> Result<Restored<S>, RestoreError> {
    let mut reads = 0;
    let walked = walk::<S>(source, start, end, &mut reads)?;
    walked.check()?;
    let mut r = walked.r;
    r.dropped_tail = walked.pending.len() + walked.pending_outbox.len();
    r.lineage = walked.current;
    Ok(r)
}

/// Restores from entries alone, as one lineage-less read from the start of
/// the partition (tests, and logs written before claims existed).
pub fn restore_entries<S: DeserializeOwned + Default + Clone>(
    entries: impl IntoIterator<Item = Entry>,
) -> Result<Restored<S>, RestoreError> {
    let mut log = MemoryLog::default();
    for e in entries {
        log.append(e, None, None);
    }
    let end = log.end();
    restore(&mut log, None, end)
}

/// What one walk needs next.
enum Step {
    Go,
    /// Start again at this snapshot pointer.
    Redirect(Option<i64>),
    /// A claim whose owner began at `base`, not here: its state is the walk
    /// from `base` to `claim`.
    Claim {
        base: Option<i64>,
        claim: i64,
    },
}

/// One read of the changelog under the rules of [`restore`].
struct Walker<S> {
    r: Restored<S>,
    pending: Vec<(String, Raw)>,
    pending_outbox: Vec<OutboxRecord>,
    /// The lineage whose records apply: the latest claim read.
    current: Option<i64>,
    /// Starts whose walk this one equals (its start, where it was redirected
    /// from, the bases of claims whose state it adopted).
    origins: Vec<Option<i64>>,
    /// The snapshot this walk must begin with, until its first record.
    expect: Option<i64>,
    /// A walk from the partition's first offset, until its first record:
    /// that offset (a snapshot there is the start; above 0 there must be one).
    at_low: Option<i64>,
    /// The leading snapshot while its parts load: (batch, next part, parts, lineage).
    loading: Option<(u64, u32, u32, Option<i64>)>,
}

fn walk<S: DeserializeOwned + Default + Clone>(
    source: &mut dyn Source,
    start: Option<i64>,
    end: i64,
    reads: &mut usize,
) -> Result<Walker<S>, RestoreError> {
    let mut w = Walker::new(start, vec![start]);
    w.at_low = start.is_none().then(|| source.low());
    let mut from = start;
    loop {
        *reads += 1;
        if *reads > MAX_READS {
            return Err(RestoreError::corrupt(format!("more than {MAX_READS} reads to follow its owners' claims")));
        }
        let mut next = Ok(Step::Go);
        source.read(from, end, &mut |rec| {
            next = w.step(rec);
            matches!(next, Ok(Step::Go))
        })?;
        match next? {
            Step::Go => {
                if let Some(o) = w.expect {
                    return Err(RestoreError::corrupt(format!("no snapshot at offset {o}, where the restore starts")));
                }
                if let Some((batch, next, parts, _)) = w.loading {
                    if next < parts {
                        return Err(RestoreError::corrupt(format!(
                            "snapshot of batch {batch} ends after part {next} of {parts}"
                        )));
                    }
                }
                return Ok(w);
            }
            Step::Redirect(to) => {
                if w.origins.contains(&to) {
                    return Err(RestoreError::corrupt(format!(
                        "records of lineage {:?} whose claim is not in the log",
                        w.current
                    )));
                }
                let mut origins = std::mem::take(&mut w.origins);
                origins.push(to);
                w = Walker::new(to, origins);
                w.at_low = to.is_none().then(|| source.low());
                from = to;
            }
            Step::Claim { base, claim } => {
                let owner = walk::<S>(source, base, claim, reads)?;
                w.adopt(owner, claim);
                from = Some(claim + 1);
            }
        }
    }
}

impl<S: DeserializeOwned + Default + Clone> Walker<S> {
    fn new(start: Option<i64>, origins: Vec<Option<i64>>) -> Self {
        Walker {
            r: Restored::default(),
            pending: vec![],
            pending_outbox: vec![],
            current: None,
            origins,
            expect: start,
            at_low: None,
            loading: None,
        }
    }

    /// Takes over the state a claim's owner restored; its lineage applies from here on.
    fn adopt(&mut self, owner: Walker<S>, claim: i64) {
        let fenced = self.r.fenced + owner.r.fenced;
        self.r = owner.r;
        self.r.fenced = fenced;
        self.pending.clear();
        self.pending_outbox.clear();
        self.origins.extend(owner.origins);
        self.current = Some(claim);
        self.loading = None;
    }

    fn step(&mut self, rec: Record) -> Result<Step, RestoreError> {
        let Record { offset, lineage, pointer, entry } = rec;
        if let Some(low) = self.at_low.take() {
            // A log whose oldest records were deleted is usable only from a snapshot.
            match entry {
                Entry::Snapshot { part: 0, .. } => self.expect = Some(offset),
                other if low > 0 => {
                    return Err(RestoreError::corrupt(format!(
                        "the log starts at offset {low} with a {} record, not a snapshot: the history below it \
                         was deleted",
                        other.kind()
                    )))
                }
                _ => {}
            }
            return self.step(Record { offset, lineage, pointer, entry });
        }
        if let Some(o) = self.expect.take() {
            let Entry::Snapshot { batch, part: 0, parts, checkpoint, states } = entry else {
                return Err(RestoreError::corrupt(format!(
                    "no snapshot at offset {o}, where the restore starts (found {})",
                    entry.kind()
                )));
            };
            if offset != o {
                return Err(RestoreError::corrupt(format!("the restore starts at {o} but read {offset} first")));
            }
            load(&mut self.r.states, states)?;
            self.r.checkpoint = checkpoint;
            self.r.last_batch = batch;
            self.current = lineage;
            self.loading = Some((batch, 1, parts, lineage));
            return Ok(Step::Go);
        }
        if let Entry::Claim { base } = entry {
            // A new owner: what it restored is the state from here on.
            let cut = self.loading.take().is_some_and(|(_, next, parts, _)| next < parts);
            if !self.origins.contains(&base) {
                return Ok(Step::Claim { base, claim: offset });
            }
            if cut {
                // Only a log trimmed inside a snapshot starts like this.
                return Err(RestoreError::corrupt(format!(
                    "the snapshot this restore starts with is cut short by the claim at offset {offset}"
                )));
            }
            self.pending.clear();
            self.pending_outbox.clear();
            self.current = Some(offset);
            return Ok(Step::Go);
        }
        match lineage.cmp(&self.current) {
            std::cmp::Ordering::Less => {
                // Written by an owner after a newer one claimed the partition.
                self.r.fenced += 1;
                return Ok(Step::Go);
            }
            std::cmp::Ordering::Greater => return Ok(Step::Redirect(pointer)),
            std::cmp::Ordering::Equal => {}
        }
        if let Some((batch, next, parts, _)) = self.loading {
            if next == parts {
                self.loading = None;
            } else {
                match entry {
                    Entry::Snapshot { batch: b, part, states, .. } if b == batch && part == next => {
                        load(&mut self.r.states, states)?;
                        self.loading = Some((batch, next + 1, parts, lineage));
                        return Ok(Step::Go);
                    }
                    other => {
                        return Err(RestoreError::corrupt(format!(
                            "snapshot of batch {batch} is missing part {next} of {parts} (found {} at {offset})",
                            other.kind()
                        )))
                    }
                }
            }
        }
        let r = &mut self.r;
        match entry {
            Entry::State { key, state } => self.pending.push((key, state)),
            Entry::States { states } => self.pending.extend(states),
            Entry::Outbox { records } => self.pending_outbox.extend(records),
            Entry::Commit { batch, checkpoint, outbox, states } => {
                let outbox: Vec<OutboxRecord> = self.pending_outbox.drain(..).chain(outbox).collect();
                for (key, delta) in self.pending.drain(..).chain(states) {
                    let delta: KeyDelta<S> = delta
                        .parse()
                        .map_err(|e| RestoreError::corrupt(format!("state of key '{key}' in batch {batch}: {e}")))?;
                    let ks = r.states.entry(key.clone()).or_default();
                    if let Some((input, was, now)) = ks.last_offsets.behind(&delta.last_offsets) {
                        return Err(RestoreError::corrupt(format!(
                            "batch {batch} at offset {offset} takes key '{key}' back from {input} offset {was} to {now}"
                        )));
                    }
                    ks.apply_delta(delta);
                }
                for (input, next) in checkpoint {
                    let was = r.checkpoint.insert(input.clone(), next);
                    if let Some(was) = was.filter(|was| *was > next) {
                        return Err(RestoreError::corrupt(format!(
                            "batch {batch} at offset {offset} moves the checkpoint of {input} back from {was} to {next}"
                        )));
                    }
                }
                r.last_batch = batch;
                if !outbox.is_empty() {
                    r.unpublished.push((batch, outbox));
                }
            }
            Entry::Published { batch } => r.unpublished.retain(|(b, _)| *b != batch),
            // A snapshot inside the read: the commits before it rebuilt the same
            // state (a crash may have cut it short), but it proves that every
            // batch up to its own was published.
            Entry::Snapshot { batch, .. } => r.unpublished.retain(|(b, _)| *b > batch),
            Entry::Claim { .. } => unreachable!("handled above"),
        }
        Ok(Step::Go)
    }

    /// No key may hold an input the checkpoint has not passed: a state newer
    /// than its checkpoint would apply that input twice.
    fn check(&self) -> Result<(), RestoreError> {
        for (key, ks) in &self.r.states {
            for (input, offset) in ks.last_offsets.iter() {
                match self.r.checkpoint.get(input) {
                    Some(next) if offset < *next => {}
                    next => {
                        return Err(RestoreError::corrupt(format!(
                            "key '{key}' applied {input} offset {offset} but the checkpoint is {next:?}"
                        )))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Adds a snapshot part's full key states.
fn load<S: DeserializeOwned>(
    into: &mut HashMap<String, KeyState<S>>,
    states: BTreeMap<String, Raw>,
) -> Result<(), RestoreError> {
    for (key, v) in states {
        let ks = v.parse().map_err(|e| RestoreError::corrupt(format!("snapshot state of key '{key}': {e}")))?;
        into.insert(key, ks);
    }
    Ok(())
}
