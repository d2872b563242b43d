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
    /// The offset of the last record of that lineage a local store can name
    /// as its proof (its claim, a commit, a marker or a snapshot part).
    pub proof: Option<i64>,
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
            proof: None,
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
    /// A restore that continues a local store met another owner's claim or
    /// lineage it cannot follow from there: rebuild from the snapshot instead.
    #[error("the local store cannot be continued: {0}")]
    NotResumable(String),
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

/// Where a restore puts the key states it rebuilds: a map in memory, or a
/// task's local store (which writes them to disk as they come, so a restore
/// of millions of keys does not hold them all in memory).
pub trait Rebuild<S> {
    /// Sets a key's whole state; `json` is its text when the restore read it
    /// so: a snapshot part's, which names each key once since the last
    /// [`Rebuild::clear`] (only the snapshot a restore starts with is loaded).
    fn put(&mut self, key: String, state: KeyState<S>, json: Option<&Raw>) -> Result<(), RestoreError>;
    /// A key's state (the default one when it has none), to apply a change
    /// to and put back.
    fn get(&mut self, key: &str) -> Result<KeyState<S>, RestoreError>;
    /// Forgets every key (a read that starts again elsewhere).
    fn clear(&mut self) -> Result<(), RestoreError>;
}

impl<S: Default> Rebuild<S> for HashMap<String, KeyState<S>> {
    fn put(&mut self, key: String, state: KeyState<S>, _: Option<&Raw>) -> Result<(), RestoreError> {
        self.insert(key, state);
        Ok(())
    }

    fn get(&mut self, key: &str) -> Result<KeyState<S>, RestoreError> {
        Ok(self.remove(key).unwrap_or_default())
    }

    fn clear(&mut self) -> Result<(), RestoreError> {
        HashMap::clear(self);
        Ok(())
    }
}

/// Where a restore that continues a task's local store starts: the store
/// holds the state of `lineage` with every record before `from` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub from: i64,
    /// The store's last own record: it holds everything its writer wrote up
    /// to here.
    pub at: i64,
    /// No claim but the store's own is in the changelog up to this offset
    /// (its writer knows, from its own records filling every offset or from
    /// reading them); the records between it and `at` are checked for one.
    pub verified: i64,
    pub lineage: Option<i64>,
    pub last_batch: u64,
    pub checkpoint: BTreeMap<String, i64>,
    /// Starts whose walk equals the store's state: its lineage's base and
    /// the snapshots its owner wrote (see [`restore`] on claims).
    pub origins: Vec<Option<i64>>,
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
/// must move each key's offsets and the checkpoint forward, and no key may
/// hold an input its checkpoint has not passed: otherwise the restore fails
/// with [`RestoreError::Corrupt`] and never yields a state that went back.
pub fn restore<S: DeserializeOwned + Default + Clone>(
    source: &mut dyn Source,
    start: Option<i64>,
    end: i64,
) -> Result<Restored<S>, RestoreError> {
    let mut states = HashMap::new();
    let mut r = restore_into(source, start, end, &mut states)?;
    r.states = states;
    Ok(r)
}

/// [`restore`] into `states` (the result's own map stays empty).
pub fn restore_into<S: DeserializeOwned + Default + Clone>(
    source: &mut dyn Source,
    start: Option<i64>,
    end: i64,
    states: &mut dyn Rebuild<S>,
) -> Result<Restored<S>, RestoreError> {
    states.clear()?;
    let mut reads = 0;
    let mut w = Walker::new(start, vec![start], states);
    w.at_low = start.is_none().then(|| source.low());
    w.walk(source, start, end, &mut reads)?;
    Ok(w.finish())
}

/// Continues a task's local store (holding `states`) from `resume.from` up
/// to `end`, under the rules of [`restore`]. A claim whose owner began
/// elsewhere, a lineage newer than any claim read, another owner's claim
/// below the store's last record that its writer never checked (it went on
/// writing after losing the partition: a restore skips what it wrote from
/// there on, the store holds it), or a log whose records from `resume.from`
/// on were deleted cannot be followed from the store:
/// [`RestoreError::NotResumable`], and the caller rebuilds from the snapshot.
pub fn resume<S: DeserializeOwned + Default + Clone>(
    source: &mut dyn Source,
    resume: Resume,
    end: i64,
    states: &mut dyn Rebuild<S>,
) -> Result<Restored<S>, RestoreError> {
    let unchecked = resume.verified + 1;
    let needed = unchecked.min(resume.from);
    if source.low() > needed {
        return Err(RestoreError::NotResumable(format!(
            "the changelog now starts at offset {}, past the store's {needed}",
            source.low(),
        )));
    }
    if let (Some(lineage), true) = (resume.lineage, unchecked <= resume.at) {
        let mut claim = None;
        source.read(Some(unchecked), resume.at + 1, &mut |r| {
            if matches!(r.entry, Entry::Claim { .. }) && r.offset > lineage {
                claim = Some(r.offset);
            }
            claim.is_none()
        })?;
        if let Some(claim) = claim {
            return Err(RestoreError::NotResumable(format!(
                "another owner claimed the partition at offset {claim}, and the store's writer (lineage {lineage}) \
                 went on writing after it"
            )));
        }
    }
    let mut reads = 0;
    let mut w = Walker::new(None, resume.origins, states);
    w.resuming = true;
    w.current = resume.lineage;
    w.r.last_batch = resume.last_batch;
    w.r.checkpoint = resume.checkpoint;
    w.walk(source, Some(resume.from), end, &mut reads)?;
    Ok(w.finish())
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
struct Walker<'s, S> {
    r: Restored<S>,
    /// Where the keys' states go.
    states: &'s mut dyn Rebuild<S>,
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
    /// The pieces of a large key's state in the leading snapshot.
    pieces: Joiner,
    /// Continuing a local store: what it cannot follow is [`RestoreError::NotResumable`].
    resuming: bool,
}

impl<'s, S: DeserializeOwned + Default + Clone> Walker<'s, S> {
    fn new(start: Option<i64>, origins: Vec<Option<i64>>, states: &'s mut dyn Rebuild<S>) -> Self {
        Walker {
            r: Restored::default(),
            states,
            pending: vec![],
            pending_outbox: vec![],
            current: None,
            origins,
            expect: start,
            at_low: None,
            loading: None,
            pieces: Joiner::default(),
            resuming: false,
        }
    }

    fn finish(self) -> Restored<S> {
        let mut r = self.r;
        r.dropped_tail = self.pending.len() + self.pending_outbox.len();
        r.lineage = self.current;
        r
    }

    /// Reads `[from, end)`, following redirects and other owners' claims.
    fn walk(
        &mut self,
        source: &mut dyn Source,
        mut from: Option<i64>,
        end: i64,
        reads: &mut usize,
    ) -> Result<(), RestoreError> {
        loop {
            *reads += 1;
            if *reads > MAX_READS {
                return Err(RestoreError::corrupt(format!("more than {MAX_READS} reads to follow its owners' claims")));
            }
            let mut next = Ok(Step::Go);
            source.read(from, end, &mut |rec| {
                next = self.step(rec);
                matches!(next, Ok(Step::Go))
            })?;
            let step = next?;
            if self.resuming && !matches!(step, Step::Go) {
                return Err(RestoreError::NotResumable(match step {
                    Step::Claim { claim, .. } => format!("another owner claimed the partition at offset {claim}"),
                    _ => format!("records of a lineage newer than {:?} whose claim it has not read", self.current),
                }));
            }
            match step {
                Step::Go => {
                    if let Some(o) = self.expect {
                        return Err(RestoreError::corrupt(format!(
                            "no snapshot at offset {o}, where the restore starts"
                        )));
                    }
                    if let Some((batch, next, parts, _)) = self.loading {
                        if next < parts {
                            return Err(RestoreError::corrupt(format!(
                                "snapshot of batch {batch} ends after part {next} of {parts}"
                            )));
                        }
                    }
                    return Ok(());
                }
                Step::Redirect(to) => {
                    if self.origins.contains(&to) {
                        return Err(RestoreError::corrupt(format!(
                            "records of lineage {:?} whose claim is not in the log",
                            self.current
                        )));
                    }
                    let mut origins = std::mem::take(&mut self.origins);
                    origins.push(to);
                    self.reset(to, origins)?;
                    self.at_low = to.is_none().then(|| source.low());
                    from = to;
                }
                Step::Claim { base, claim } => {
                    // The owner's walk, in memory (only logs written by
                    // owners at odds with each other need one).
                    let mut theirs = HashMap::new();
                    let mut owner = Walker::new(base, vec![base], &mut theirs);
                    owner.at_low = base.is_none().then(|| source.low());
                    owner.walk(source, base, claim, reads)?;
                    let origins = std::mem::take(&mut owner.origins);
                    let r = owner.finish();
                    self.adopt(r, origins, theirs, claim)?;
                    from = Some(claim + 1);
                }
            }
        }
    }

    /// Starts over at `start` (a redirect).
    fn reset(&mut self, start: Option<i64>, origins: Vec<Option<i64>>) -> Result<(), RestoreError> {
        self.states.clear()?;
        self.r = Restored::default();
        self.pending.clear();
        self.pending_outbox.clear();
        self.current = None;
        self.origins = origins;
        self.expect = start;
        self.at_low = None;
        self.loading = None;
        self.pieces = Joiner::default();
        Ok(())
    }

    /// Takes over the state a claim's owner restored; its lineage applies from here on.
    fn adopt(
        &mut self,
        owner: Restored<S>,
        origins: Vec<Option<i64>>,
        states: HashMap<String, KeyState<S>>,
        claim: i64,
    ) -> Result<(), RestoreError> {
        let fenced = self.r.fenced + owner.fenced;
        self.states.clear()?;
        for (key, ks) in states {
            self.states.put(key, ks, None)?;
        }
        self.r = owner;
        self.r.fenced = fenced;
        self.pending.clear();
        self.pending_outbox.clear();
        self.origins.extend(origins);
        self.current = Some(claim);
        self.r.proof = Some(claim);
        self.loading = None;
        self.pieces = Joiner::default();
        Ok(())
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
            self.r.checkpoint = checkpoint;
            self.r.last_batch = batch;
            self.load(states, (0, parts))?;
            self.r.proof = Some(offset);
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
            self.r.proof = Some(offset);
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
                        self.load(states, (part, parts))?;
                        self.r.proof = Some(offset);
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
        if matches!(entry, Entry::Commit { .. } | Entry::Published { .. } | Entry::Snapshot { .. }) {
            self.r.proof = Some(offset);
        }
        match entry {
            Entry::State { key, state } => self.pending.push((key, state)),
            Entry::States { states } => self.pending.extend(states),
            Entry::Outbox { records } => self.pending_outbox.extend(records),
            Entry::Commit { batch, checkpoint, outbox, states } => {
                let outbox: Vec<OutboxRecord> = self.pending_outbox.drain(..).chain(outbox).collect();
                let mut applied = Vec::with_capacity(self.pending.len() + states.len());
                let mut pieces = Joiner::default();
                for (key, delta) in std::mem::take(&mut self.pending).into_iter().chain(states) {
                    let Some((key, delta)) = pieces.push(key, delta)? else { continue };
                    let delta: KeyDelta<S> = delta
                        .parse()
                        .map_err(|e| RestoreError::corrupt(format!("state of key '{key}' in batch {batch}: {e}")))?;
                    let mut ks = self.states.get(&key)?;
                    if let Some((input, was, now)) = ks.last_offsets.behind(&delta.last_offsets) {
                        return Err(RestoreError::corrupt(format!(
                            "batch {batch} at offset {offset} takes key '{key}' back from {input} offset {was} to {now}"
                        )));
                    }
                    ks.apply_delta(delta);
                    let offsets = ks.last_offsets.clone();
                    self.states.put(key.clone(), ks, None)?;
                    applied.push((key, offsets));
                }
                pieces.finish()?;
                let r = &mut self.r;
                for (input, next) in checkpoint {
                    let was = r.checkpoint.insert(input.clone(), next);
                    if let Some(was) = was.filter(|was| *was > next) {
                        return Err(RestoreError::corrupt(format!(
                            "batch {batch} at offset {offset} moves the checkpoint of {input} back from {was} to {next}"
                        )));
                    }
                }
                for (key, offsets) in &applied {
                    check(key, offsets, &r.checkpoint)?;
                }
                r.last_batch = batch;
                if !outbox.is_empty() {
                    r.unpublished.push((batch, outbox));
                }
            }
            Entry::Published { batch } => self.r.unpublished.retain(|(b, _)| *b != batch),
            // A snapshot inside the read: the commits before it rebuilt the same
            // state (a crash may have cut it short), but it proves that every
            // batch up to its own was published.
            Entry::Snapshot { batch, .. } => self.r.unpublished.retain(|(b, _)| *b > batch),
            Entry::Claim { .. } => unreachable!("handled above"),
        }
        Ok(Step::Go)
    }

    /// Adds part `part` of `parts` of the leading snapshot: its full key
    /// states (checked against its checkpoint).
    fn load(&mut self, states: BTreeMap<String, Raw>, (part, parts): (u32, u32)) -> Result<(), RestoreError> {
        for (key, v) in states {
            let Some((key, v)) = self.pieces.push(key, v)? else { continue };
            let ks: KeyState<S> =
                v.parse().map_err(|e| RestoreError::corrupt(format!("snapshot state of key '{key}': {e}")))?;
            check(&key, &ks.last_offsets, &self.r.checkpoint)?;
            self.states.put(key, ks, Some(&v))?;
        }
        if part + 1 == parts {
            self.pieces.finish()?;
        }
        Ok(())
    }
}

/// No key may hold an input the checkpoint has not passed: a state newer
/// than its checkpoint would apply that input twice. (Checked as each key is
/// set: checkpoints only move forward, so the key stays valid.)
fn check(key: &str, offsets: &Offsets, checkpoint: &BTreeMap<String, i64>) -> Result<(), RestoreError> {
    for (input, offset) in offsets.iter() {
        match checkpoint.get(input) {
            Some(next) if offset < *next => {}
            next => {
                return Err(RestoreError::corrupt(format!(
                    "key '{key}' applied {input} offset {offset} but the checkpoint is {next:?}"
                )))
            }
        }
    }
    Ok(())
}

/// Joins the pieces of a key's state written across records ([`Piece`]).
#[derive(Debug, Default)]
struct Joiner {
    open: Option<(String, String)>,
}

impl Joiner {
    /// A key's state read in log order: a whole one is given back at once; a
    /// piece is kept until the last of its key gives back the joined state.
    fn push(&mut self, key: String, v: Raw) -> Result<Option<(String, Raw)>, RestoreError> {
        let piece = match Piece::of(&v) {
            None => {
                self.finish()?;
                return Ok(Some((key, v)));
            }
            Some(p) => p.map_err(|e| RestoreError::corrupt(format!("a piece of key '{key}': {e}")))?,
        };
        let (open, text) = self.open.get_or_insert_with(|| (key.clone(), String::new()));
        if *open != key {
            return Err(RestoreError::corrupt(format!("a piece of key '{key}' among the pieces of key '{open}'")));
        }
        match piece {
            Piece::More(t) => {
                text.push_str(&t);
                Ok(None)
            }
            Piece::Last(t) => {
                text.push_str(&t);
                let (key, text) = self.open.take().expect("opened above");
                let joined = Raw::from_json(text)
                    .map_err(|e| RestoreError::corrupt(format!("the joined pieces of key '{key}': {e}")))?;
                Ok(Some((key, joined)))
            }
        }
    }

    /// Fails if a key's pieces stopped before their last.
    fn finish(&mut self) -> Result<(), RestoreError> {
        match self.open.take() {
            Some((key, _)) => Err(RestoreError::corrupt(format!("the pieces of key '{key}' stop before their last"))),
            None => Ok(()),
        }
    }
}
