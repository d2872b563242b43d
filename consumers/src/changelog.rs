//! The state changelog: how a partition task records its decisions before
//! publishing them, and how a restore rebuilds state, checkpoint and the
//! unpublished outbox from it. Pure data and logic; the runtime does the I/O.
//!
//! # The protocol ("record the decision, then publish it")
//!
//! Per batch, a task appends to its changelog partition one
//! [`Entry::Commit`] carrying the batch number, the checkpoint (next input
//! offset of every input partition of the task), the outbox (the encoded
//! outputs) and the changed keys' states — or, when that would not fit in one
//! record, first the states in [`Entry::States`] parts and the outbox in
//! [`Entry::Outbox`] parts, then a commit without them ([`batch_entries`]).
//! It waits for the acks, produces the outbox, waits for those acks, then
//! appends [`Entry::Published`] for the batch — possibly after the next
//! batch's commit, since the runtime records batch N+1 while batch N's outbox
//! is being acknowledged; a marker names its batch, so order does not matter.
//! State and outbox entries count only once their commit follows them;
//! anything after the last commit is a batch that was never decided and is
//! dropped on restore. A commit without its `Published` marker is
//! re-published on restore — byte-identical records with the same
//! `event_id`s, which consumers drop as copies.
//!
//! # Snapshots
//!
//! Snapshots bound restore time. A snapshot is every key's state at a batch
//! boundary (after that batch was published), written as a run of
//! [`Entry::Snapshot`] parts (each below the record size cap). Every
//! changelog record carries the header [`SNAPSHOT_HEADER`]: the offset of the
//! first part of the latest *complete* snapshot (the record after the last
//! part is the first to point at it). A restore reads the partition's last
//! record, follows its pointer and reads from there: it never scans history
//! older than the latest snapshot. Snapshots met later in a read change
//! nothing (the commits before them already rebuilt the same state), except
//! that they prove every batch up to theirs was published.
//!
//! # Owners: claims and lineages
//!
//! Two members can write one changelog partition at once. A member dropped
//! from the group (its session timed out during a broker outage) goes on
//! until it notices, and its producer may deliver a commit it queued long
//! before, after the partition's new owner has restored and written batches
//! of its own. Replaying both histories in log order mixes them: a key's
//! state from one, the checkpoint from the other — a state older than its
//! checkpoint (the broker-faults failure: a key's outputs went 1..7, then
//! 6..16). So every owner fences the ones before it:
//!
//! 1. **Claim.** On assignment, before it reads, the new owner appends an
//!    [`Entry::Claim`] naming the snapshot it starts from (its *base*), and
//!    restores from the base up to its claim. The claim's offset is the
//!    owner's *lineage*; every record it writes afterwards carries it in the
//!    [`LINEAGE_HEADER`].
//! 2. **Fence.** A restore applies only the records of the latest claim it
//!    has read: a record of an older lineage is a previous owner's late
//!    write and is skipped ([`Restored::fenced`]).
//! 3. **Adopt.** At a claim, the state becomes what its owner restored. A
//!    read that began at the claim's base already holds it; any other read
//!    computes it again, from the base to the claim, with these same rules.
//!    So every restore that passes a claim agrees with its owner.
//! 4. **Redirect.** A record of a newer lineage than any claim read means
//!    its claim lies before where the read began: the read starts again at
//!    that record's snapshot pointer.
//! 5. **Point only at safe snapshots.** Before later records may point at a
//!    snapshot, its owner checks that no newer claim appeared since its own
//!    (its records fill those offsets, or it reads the ones between:
//!    [`newer_claim`]). If one did, it has lost the partition and stops
//!    writing it. So a snapshot pointer always leads to a snapshot completed
//!    before any newer claim, and a read from it meets every later claim.
//!
//! # What a restore checks
//!
//! Within the lineage it applies, every batch must move each changed key's
//! input offsets and the checkpoint forward, and at the end no key may hold
//! an input the checkpoint has not passed. A log that breaks this — one
//! written before claims existed, by two owners at once — fails the restore
//! with [`RestoreError::Corrupt`] and the task does not run: a key's state
//! never silently goes back. A log whose oldest records were deleted is
//! restored only from a snapshot at its start.
//!
//! `consumers/tests/changelog_model.rs` checks these rules against
//! thousands of random schedules of crashes, late writers and trimmed logs.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::task::{KeyDelta, KeyState};

/// An output record waiting to be (re)published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OutboxWire", into = "OutboxWire")]
pub struct OutboxRecord {
    pub topic: String,
    pub key: String,
    /// Confluent wire-format bytes.
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// An outbox record as the changelog's JSON holds it: value and header
/// values in base64 (`v`, `h`). Records written by earlier versions (value
/// in hex, header values as arrays of numbers) are still read.
#[derive(Clone, Serialize, Deserialize)]
struct OutboxWire {
    topic: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<B64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    h: Vec<(String, B64)>,
    #[serde(default, skip_serializing, deserialize_with = "legacy_hex")]
    value: Option<Vec<u8>>,
    #[serde(default, skip_serializing)]
    headers: Vec<(String, Vec<u8>)>,
}

impl From<OutboxWire> for OutboxRecord {
    fn from(w: OutboxWire) -> Self {
        let headers = if w.h.is_empty() { w.headers } else { w.h.into_iter().map(|(k, v)| (k, v.0)).collect() };
        OutboxRecord { topic: w.topic, key: w.key, value: w.v.map(|v| v.0).or(w.value).unwrap_or_default(), headers }
    }
}

impl From<OutboxRecord> for OutboxWire {
    fn from(r: OutboxRecord) -> Self {
        OutboxWire {
            topic: r.topic,
            key: r.key,
            v: Some(B64(r.value)),
            h: r.headers.into_iter().map(|(k, v)| (k, B64(v))).collect(),
            value: None,
            headers: vec![],
        }
    }
}

/// Bytes as a base64 string (a third larger than the bytes; hex doubles them).
#[derive(Clone)]
struct B64(Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map(B64).map_err(serde::de::Error::custom)
    }
}

/// The hex value of records written by earlier versions.
fn legacy_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
    if text.len() % 2 != 0 {
        return Err(serde::de::Error::custom("odd-length hex"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(serde::de::Error::custom))
        .collect::<Result<Vec<u8>, _>>()
        .map(Some)
}

/// A JSON value kept as its text, not parsed into a tree: the states in the
/// changelog. A snapshot of a million keys then costs about its bytes in
/// memory while it is written or read, not many times that.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Raw(Box<serde_json::value::RawValue>);

impl PartialEq for Raw {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Raw {}

impl Raw {
    /// `v` as compact JSON.
    pub fn of<T: Serialize>(v: &T) -> serde_json::Result<Raw> {
        serde_json::value::to_raw_value(v).map(Raw)
    }

    /// The value read back as a `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.0.get())
    }

    /// Length of the JSON text.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the JSON text is empty (never, for a valid value).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

/// One changelog record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "EntryWire")]
pub enum Entry {
    /// A key's change (a [`KeyDelta`] of the worker's state type), pending
    /// its commit (written by earlier versions; now [`Entry::States`]).
    State { key: String, state: Raw },
    /// Several keys' changes ([`KeyDelta`]s), pending the next commit.
    States { states: BTreeMap<String, Raw> },
    /// Part of the next commit's outbox (in order), pending that commit.
    Outbox { records: Vec<OutboxRecord> },
    /// A decided batch; `states` carries its keys' changes ([`KeyDelta`]s) when
    /// they fit in one record (otherwise they precede it as [`Entry::States`] records).
    Commit {
        batch: u64,
        checkpoint: BTreeMap<String, i64>,
        outbox: Vec<OutboxRecord>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        states: BTreeMap<String, Raw>,
    },
    /// The batch's outbox was produced and acknowledged.
    Published { batch: u64 },
    /// Part `part` of `parts` of every key's full state ([`KeyState`]) as of
    /// `batch` (which was committed and published); the checkpoint is repeated
    /// in every part.
    Snapshot { batch: u64, part: u32, parts: u32, checkpoint: BTreeMap<String, i64>, states: BTreeMap<String, Raw> },
    /// A new owner takes the partition over: records of older lineages that
    /// follow are a previous owner's that had not yet noticed, and are
    /// skipped. `base` is the snapshot its restore started from.
    Claim { base: Option<i64> },
}

/// How an [`Entry`] is read: a plain struct, because serde cannot read a
/// [`Raw`] value through an internally tagged enum (it buffers the fields).
#[derive(Deserialize)]
struct EntryWire {
    kind: String,
    key: Option<String>,
    state: Option<Raw>,
    states: Option<BTreeMap<String, Raw>>,
    records: Option<Vec<OutboxRecord>>,
    batch: Option<u64>,
    checkpoint: Option<BTreeMap<String, i64>>,
    outbox: Option<Vec<OutboxRecord>>,
    part: Option<u32>,
    parts: Option<u32>,
    base: Option<i64>,
}

impl TryFrom<EntryWire> for Entry {
    type Error = String;

    fn try_from(w: EntryWire) -> Result<Self, String> {
        let kind = w.kind.clone();
        let need = |what: &str| format!("a {kind} entry without `{what}`");
        let batch = || w.batch.ok_or_else(|| need("batch"));
        Ok(match w.kind.as_str() {
            "state" => {
                Entry::State { key: w.key.ok_or_else(|| need("key"))?, state: w.state.ok_or_else(|| need("state"))? }
            }
            "states" => Entry::States { states: w.states.ok_or_else(|| need("states"))? },
            "outbox" => Entry::Outbox { records: w.records.ok_or_else(|| need("records"))? },
            "commit" => Entry::Commit {
                batch: batch()?,
                checkpoint: w.checkpoint.ok_or_else(|| need("checkpoint"))?,
                outbox: w.outbox.unwrap_or_default(),
                states: w.states.unwrap_or_default(),
            },
            "published" => Entry::Published { batch: batch()? },
            "snapshot" => Entry::Snapshot {
                batch: batch()?,
                part: w.part.ok_or_else(|| need("part"))?,
                parts: w.parts.ok_or_else(|| need("parts"))?,
                checkpoint: w.checkpoint.ok_or_else(|| need("checkpoint"))?,
                states: w.states.unwrap_or_default(),
            },
            "claim" => Entry::Claim { base: w.base },
            other => return Err(format!("unknown changelog entry kind '{other}'")),
        })
    }
}

/// Record header on every changelog record: the offset (decimal) of the first
/// part of the latest complete snapshot in its partition.
pub const SNAPSHOT_HEADER: &str = "keyflow.snapshot";

/// Record header on every changelog record written since claims exist: the
/// offset (decimal) of its writer's [`Entry::Claim`], its lineage.
pub const LINEAGE_HEADER: &str = "keyflow.lineage";

/// Where a run of items is cut into parts of about `max_part_bytes` each,
/// given each item's size in order: the index of every part's first item
/// (at least one part, so an empty state is a snapshot too).
pub fn part_bounds(sizes: impl IntoIterator<Item = usize>, max_part_bytes: usize) -> Vec<usize> {
    let mut bounds = vec![0];
    let mut size = 0;
    for (i, len) in sizes.into_iter().enumerate() {
        if size > 0 && size + len > max_part_bytes {
            bounds.push(i);
            size = 0;
        }
        size += len;
    }
    bounds
}

/// `items` cut into parts of about `max_part_bytes` each (see [`part_bounds`]);
/// no part for no items.
pub fn split<T>(items: Vec<T>, size: impl Fn(&T) -> usize, max_part_bytes: usize) -> Vec<Vec<T>> {
    if items.is_empty() {
        return vec![];
    }
    let bounds = part_bounds(items.iter().map(size), max_part_bytes);
    let mut rest = items.into_iter();
    bounds
        .iter()
        .enumerate()
        .map(|(i, start)| {
            let end = bounds.get(i + 1).copied().unwrap_or(usize::MAX);
            rest.by_ref().take(end.saturating_sub(*start)).collect()
        })
        .collect()
}

/// Bytes a key takes in a part's JSON map of states (`"key":value,`).
pub fn state_len(key: &str, state_json_len: usize) -> usize {
    key.len() + state_json_len + 4
}

/// Bytes an outbox record takes in a changelog record's JSON, from above
/// (base64 value and header values, names, punctuation).
pub fn outbox_len(o: &OutboxRecord) -> usize {
    let b64 = |n: usize| n.div_ceil(3) * 4;
    b64(o.value.len())
        + o.topic.len()
        + o.key.len()
        + o.headers.iter().map(|(k, v)| k.len() + b64(v.len()) + 8).sum::<usize>()
        + 32
}

/// Length of a value's compact JSON, measured without allocating the text.
pub fn json_len<T: Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

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

/// The changelog entries of one decided batch: its commit, carrying the
/// changed keys' states and the outbox when its JSON stays within
/// `max_record_bytes`; otherwise the states and the outbox in parts of about
/// that size (a few records, not one per key), then a bare commit — so no
/// record outgrows the clients' `message.max.bytes`, however large the batch.
pub fn batch_entries<S: Serialize>(
    batch: u64,
    checkpoint: &BTreeMap<String, i64>,
    outbox: &[OutboxRecord],
    changed: &BTreeMap<String, KeyDelta<S>>,
    max_record_bytes: usize,
) -> serde_json::Result<Vec<Entry>> {
    let mut states = BTreeMap::new();
    for (key, ks) in changed {
        states.insert(key.clone(), Raw::of(ks)?);
    }
    let commit =
        |outbox: Vec<OutboxRecord>, states| Entry::Commit { batch, checkpoint: checkpoint.clone(), outbox, states };
    let whole = commit(outbox.to_vec(), states);
    if json_len(&whole) <= max_record_bytes {
        return Ok(vec![whole]);
    }
    let Entry::Commit { states, .. } = whole else { unreachable!("built above") };
    let mut log = Vec::new();
    for part in split(states.into_iter().collect(), |(k, v)| state_len(k, v.len()), max_record_bytes) {
        log.push(Entry::States { states: part.into_iter().collect() });
    }
    for records in split(outbox.to_vec(), outbox_len, max_record_bytes) {
        log.push(Entry::Outbox { records });
    }
    log.push(commit(vec![], BTreeMap::new()));
    Ok(log)
}

/// A snapshot of every key's state as of `batch`, built one part at a time
/// (each about `max_part_bytes` of states) so that memory holds a few parts,
/// never a copy of the whole state.
pub struct SnapshotParts<'a, S> {
    batch: u64,
    checkpoint: BTreeMap<String, i64>,
    keys: std::collections::hash_map::Iter<'a, String, KeyState<S>>,
    bounds: Vec<usize>,
    next: usize,
    total: usize,
}

impl<'a, S: Serialize> SnapshotParts<'a, S> {
    pub fn new(
        batch: u64,
        checkpoint: BTreeMap<String, i64>,
        states: &'a HashMap<String, KeyState<S>>,
        max_part_bytes: usize,
    ) -> Self {
        let bounds = part_bounds(states.iter().map(|(k, ks)| state_len(k, json_len(ks))), max_part_bytes);
        SnapshotParts { batch, checkpoint, keys: states.iter(), bounds, next: 0, total: states.len() }
    }

    /// How many parts the snapshot has.
    pub fn parts(&self) -> u32 {
        self.bounds.len() as u32
    }
}

impl<S: Serialize> Iterator for SnapshotParts<'_, S> {
    type Item = serde_json::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        let start = *self.bounds.get(i)?;
        let end = self.bounds.get(i + 1).copied().unwrap_or(self.total);
        self.next += 1;
        let mut part = BTreeMap::new();
        for (k, ks) in self.keys.by_ref().take(end - start) {
            match Raw::of(ks) {
                Ok(v) => part.insert(k.clone(), v),
                Err(e) => return Some(Err(e)),
            };
        }
        let (batch, parts, checkpoint) = (self.batch, self.parts(), self.checkpoint.clone());
        Some(Ok(Entry::Snapshot { batch, part: i as u32, parts, checkpoint, states: part }))
    }
}

impl Entry {
    /// The record key the entry is written with (not read: every changelog
    /// record names its partition).
    pub fn record_key(&self) -> &'static str {
        self.names().1
    }

    /// The entry's kind, for messages.
    pub fn kind(&self) -> &'static str {
        self.names().0
    }

    /// The entry's kind and its record key.
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            Entry::State { .. } => ("state", "__state"),
            Entry::States { .. } => ("states", "__states"),
            Entry::Outbox { .. } => ("outbox", "__outbox"),
            Entry::Commit { .. } => ("commit", "__commit"),
            Entry::Published { .. } => ("published", "__published"),
            Entry::Snapshot { .. } => ("snapshot", "__snapshot"),
            Entry::Claim { .. } => ("claim", "__claim"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a full state into snapshot parts of about `max_part_bytes` each
    /// (one part when there are no keys).
    fn snapshot_parts(
        batch: u64,
        checkpoint: &BTreeMap<String, i64>,
        states: Vec<(String, Raw)>,
        max_part_bytes: usize,
    ) -> Vec<Entry> {
        let mut chunks = split(states, |(k, v)| state_len(k, v.len()), max_part_bytes);
        if chunks.is_empty() {
            chunks.push(vec![]);
        }
        let parts = chunks.len() as u32;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, part)| Entry::Snapshot {
                batch,
                part: i as u32,
                parts,
                checkpoint: checkpoint.clone(),
                states: part.into_iter().collect(),
            })
            .collect()
    }

    /// Restores `entries` as a read that starts at a snapshot at offset 0.
    fn from_snapshot(entries: impl IntoIterator<Item = Entry>) -> Result<Restored<i64>, RestoreError> {
        let mut log = MemoryLog::default();
        for e in entries {
            log.append(e, None, None);
        }
        let end = log.end();
        restore(&mut log, Some(0), end)
    }

    fn out(v: u8) -> OutboxRecord {
        OutboxRecord { topic: "payments".into(), key: "c".into(), value: vec![0, 0, 0, 0, 1, v], headers: vec![] }
    }

    fn commit(batch: u64, offset: i64, outbox: Vec<OutboxRecord>) -> Entry {
        Entry::Commit {
            batch,
            checkpoint: BTreeMap::from([("orders/0".into(), offset)]),
            outbox,
            states: BTreeMap::new(),
        }
    }

    /// A commit of batch `batch` (checkpoint `next` on orders/2) that sets
    /// key c1 to `count` as of input offset `at`, if given.
    fn commit_c1(batch: u64, next: i64, c1: Option<(i64, i64)>) -> Entry {
        let states =
            c1.map(|(count, at)| BTreeMap::from([("c1".to_string(), delta_at(count, at))])).unwrap_or_default();
        Entry::Commit { batch, checkpoint: BTreeMap::from([("orders/2".into(), next)]), outbox: vec![], states }
    }

    /// The changelog of partition 2 in the failed broker-faults run (outputs
    /// of one key went 1..7, then 6..16): member A recorded batch 1, was
    /// dropped from the group during a broker outage while its batch-2
    /// commit was still being retried by its producer; member B restored
    /// batch 1, recorded batches 2-4; then A's batch-2 commit landed.
    #[test]
    fn without_claims_a_late_commit_of_a_previous_owner_fails_the_restore_instead_of_taking_a_key_back() {
        let err = restore_entries::<i64>([
            commit_c1(1, 100, Some((1, 33))),
            commit_c1(2, 200, Some((5, 188))),
            commit_c1(3, 300, None),
            commit_c1(4, 400, Some((7, 392))),
            commit_c1(2, 200, Some((5, 188))),
        ])
        .unwrap_err();
        assert!(matches!(err, RestoreError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("takes key 'c1' back from orders/2 offset 392 to 188"), "{err}");
    }

    #[test]
    fn a_late_commit_of_a_previous_owner_after_a_new_owners_claim_is_skipped() {
        let mut log = MemoryLog::default();
        let a = log.append(Entry::Claim { base: None }, None, None);
        log.append(commit_c1(1, 100, Some((1, 33))), Some(a), None);
        let b = log.append(Entry::Claim { base: None }, None, None);
        log.append(commit_c1(2, 200, Some((5, 188))), Some(b), None);
        log.append(commit_c1(3, 300, None), Some(b), None);
        log.append(commit_c1(4, 400, Some((7, 392))), Some(b), None);
        log.append(commit_c1(2, 200, Some((5, 188))), Some(a), None);
        let end = log.end();
        let r = restore::<i64>(&mut log, None, end).unwrap();
        assert_eq!((r.states["c1"].state, r.checkpoint["orders/2"], r.last_batch), (7, 400, 4));
        assert_eq!(r.fenced, 1, "A's late commit is skipped");
    }

    #[test]
    fn a_claim_whose_owner_started_at_another_snapshot_is_read_again_from_there() {
        // B claims from snapshot s1; a reader that starts at A's later
        // snapshot s2 (which B never saw) must still end with B's state.
        let mut log = MemoryLog::default();
        let a = log.append(Entry::Claim { base: None }, None, None);
        log.append(commit_c1(1, 100, Some((1, 33))), Some(a), None);
        let s1 = log.append(snapshot(1, 100, &[("c1", 1)], 1024).remove(0), Some(a), None);
        let b = log.append(Entry::Claim { base: Some(s1) }, None, Some(s1));
        log.append(commit_c1(2, 200, Some((5, 188))), Some(a), Some(s1));
        let s2 = log.append(snapshot(2, 200, &[("c1", 5)], 1024).remove(0), Some(a), Some(s1));
        log.append(commit_c1(2, 150, Some((3, 120))), Some(b), Some(s1));
        let end = log.end();
        let from_s1 = restore::<i64>(&mut log, Some(s1), end).unwrap();
        assert_eq!((from_s1.states["c1"].state, from_s1.checkpoint["orders/2"]), (3, 150));
        // From A's snapshot (written after B's claim): B's record redirects the read.
        let from_s2 = restore::<i64>(&mut log, Some(s2), end).unwrap();
        assert_eq!(from_s2, from_s1);
    }

    #[test]
    fn a_key_newer_than_the_checkpoint_fails_the_restore() {
        let c = Entry::Commit {
            batch: 1,
            checkpoint: BTreeMap::from([("orders/2".into(), 100)]),
            outbox: vec![],
            states: BTreeMap::from([("c1".to_string(), delta_at(1, 100))]),
        };
        let err = restore_entries::<i64>([c]).unwrap_err();
        assert!(err.to_string().contains("applied orders/2 offset 100 but the checkpoint is Some(100)"), "{err}");
    }

    #[test]
    fn a_claim_that_cuts_short_the_snapshot_a_read_starts_with_fails_the_restore() {
        let mut parts = snapshot(1, 100, &[("a", 1), ("b", 2)], 1).into_iter();
        let mut log = MemoryLog::default();
        log.append(parts.next().unwrap(), None, None);
        log.append(Entry::Claim { base: None }, None, None);
        log.append(parts.next().unwrap(), None, None);
        let end = log.end();
        let err = restore::<i64>(&mut log, None, end).unwrap_err();
        assert!(err.to_string().contains("cut short by the claim at offset 1"), "{err}");
    }

    #[test]
    fn a_log_whose_start_was_deleted_restores_only_from_a_snapshot_there() {
        let mut log = MemoryLog::default();
        log.append(commit_c1(1, 100, Some((1, 33))), None, None);
        let s = log.append(snapshot(1, 100, &[("c1", 1)], 1024).remove(0), None, None);
        log.append(commit_c1(2, 200, Some((2, 150))), None, Some(s));
        log.trim(s);
        let end = log.end();
        let r = restore::<i64>(&mut log, None, end).unwrap();
        assert_eq!(r.states["c1"].state, 2);
        log.trim(s + 1);
        let err = restore::<i64>(&mut log, None, end).unwrap_err();
        assert!(err.to_string().contains("the history below it was deleted"), "{err}");
    }

    #[test]
    fn outbox_records_written_by_earlier_versions_still_restore() {
        let old = r#"{"topic":"payments","key":"c","value":"0000000001ab","headers":[["traceparent",[48,48]]]}"#;
        let r: OutboxRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.value, vec![0, 0, 0, 0, 1, 0xab]);
        assert_eq!(r.headers, vec![("traceparent".to_string(), b"00".to_vec())]);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"topic":"payments","key":"c","v":"AAAAAAGr","h":[["traceparent","MDA="]]}"#);
        assert_eq!(serde_json::from_str::<OutboxRecord>(&text).unwrap(), r);
    }

    #[test]
    fn states_inside_the_commit_apply_with_it_and_bytes_round_trip_as_base64() {
        let c = Entry::Commit {
            batch: 1,
            checkpoint: BTreeMap::from([("orders/0".into(), 5)]),
            outbox: vec![out(0xab)],
            states: BTreeMap::from([("a".into(), delta(3))]),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"AAAAAAGr\""), "{text}");
        let back: Entry = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        let r = restore_entries::<i64>([state("a", 1), back]).unwrap();
        assert_eq!(r.states["a"].state, 3, "the commit's own states come after pending ones");
    }

    /// A key's change that sets its state to `v` as of orders/2 offset `at`.
    fn delta_at(v: i64, at: i64) -> Raw {
        Raw::of(&KeyDelta {
            state: v,
            last_offsets: [("orders/2".to_string(), at)].into(),
            max_event_time: 0,
            horizon: 0,
            event_ids: vec![],
            idempotency_keys: vec![],
        })
        .unwrap()
    }

    /// A key's change that sets its state to `v`.
    fn delta(v: i64) -> Raw {
        Raw::of(&KeyDelta {
            state: v,
            last_offsets: Default::default(),
            max_event_time: 0,
            horizon: 0,
            event_ids: vec![],
            idempotency_keys: vec![],
        })
        .unwrap()
    }

    /// A key's full state `v`, as a snapshot holds it.
    fn full(v: i64) -> Raw {
        Raw::of(&KeyState { state: v, ..KeyState::default() }).unwrap()
    }

    fn state(key: &str, v: i64) -> Entry {
        Entry::State { key: key.into(), state: delta(v) }
    }

    #[test]
    fn outbox_parts_join_their_commit_in_order_and_an_uncommitted_part_is_dropped() {
        let r = restore_entries::<i64>([
            Entry::Outbox { records: vec![out(1), out(2)] },
            Entry::Outbox { records: vec![out(3)] },
            commit(1, 10, vec![out(4)]),
            Entry::Outbox { records: vec![out(5)] },
        ])
        .unwrap();
        assert_eq!(r.unpublished, vec![(1, vec![out(1), out(2), out(3), out(4)])]);
        assert_eq!(r.dropped_tail, 1, "the part after the last commit belongs to an undecided batch");
    }

    #[test]
    fn committed_batches_restore_state_and_checkpoint() {
        let r = restore_entries::<i64>([
            state("a", 1),
            commit(1, 10, vec![]),
            state("a", 2),
            state("b", 7),
            commit(2, 20, vec![]),
        ])
        .unwrap();
        assert_eq!(r.states["a"].state, 2);
        assert_eq!(r.states["b"].state, 7);
        assert_eq!(r.checkpoint["orders/0"], 20);
        assert_eq!(r.last_batch, 2);
        assert!(r.unpublished.is_empty());
    }

    #[test]
    fn state_written_after_the_last_commit_is_an_undecided_batch_and_is_dropped() {
        let r = restore_entries::<i64>([state("a", 1), commit(1, 10, vec![]), state("a", 99), state("c", 5)]).unwrap();
        assert_eq!(r.states["a"].state, 1);
        assert!(!r.states.contains_key("c"));
        assert_eq!(r.checkpoint["orders/0"], 10, "resume where the decided work ends");
        assert_eq!(r.dropped_tail, 2);
    }

    #[test]
    fn a_commit_without_its_published_marker_is_republished_unchanged() {
        let r = restore_entries::<i64>([
            commit(1, 10, vec![out(1)]),
            Entry::Published { batch: 1 },
            commit(2, 20, vec![out(2), out(3)]),
            commit(3, 30, vec![out(4)]),
            Entry::Published { batch: 3 },
        ])
        .unwrap();
        assert_eq!(r.unpublished, vec![(2, vec![out(2), out(3)])]);
    }

    #[test]
    fn a_marker_after_the_next_commit_marks_only_its_own_batch() {
        // Batch 2 is recorded while batch 1 is still being acknowledged.
        let r = restore_entries::<i64>([
            commit(1, 10, vec![out(1)]),
            commit(2, 20, vec![out(2)]),
            Entry::Published { batch: 1 },
            commit(3, 30, vec![out(3)]),
        ])
        .unwrap();
        assert_eq!(r.unpublished, vec![(2, vec![out(2)]), (3, vec![out(3)])], "oldest first, in publish order");
    }

    fn snapshot(batch: u64, offset: i64, states: &[(&str, i64)], max_part_bytes: usize) -> Vec<Entry> {
        snapshot_parts(
            batch,
            &BTreeMap::from([("orders/0".into(), offset)]),
            states.iter().map(|(k, v)| (k.to_string(), full(*v))).collect(),
            max_part_bytes,
        )
    }

    #[test]
    fn a_restore_that_starts_at_a_snapshot_loads_all_its_parts_then_the_commits_after_it() {
        let parts = snapshot(1, 10, &[("a", 5), ("b", 7), ("c", 9)], 1);
        assert_eq!(parts.len(), 3, "one key per part at this size");
        let tail = [state("a", 6), commit(2, 12, vec![out(2)])];
        let r = from_snapshot(parts.into_iter().chain(tail)).unwrap();
        assert_eq!(r.states.len(), 3);
        assert_eq!(r.states["a"].state, 6);
        assert_eq!(r.states["c"].state, 9);
        assert_eq!(r.checkpoint["orders/0"], 12);
        assert_eq!(r.unpublished, vec![(2, vec![out(2)])]);
    }

    #[test]
    fn an_empty_state_is_still_a_one_part_snapshot() {
        let parts = snapshot(4, 10, &[], 1024);
        assert_eq!(parts.len(), 1);
        let r = from_snapshot(parts).unwrap();
        assert_eq!((r.last_batch, r.checkpoint["orders/0"]), (4, 10));
    }

    #[test]
    fn a_snapshot_cut_short_by_a_crash_inside_a_full_read_changes_nothing() {
        let mut parts = snapshot(1, 10, &[("a", 1), ("b", 2)], 1);
        parts.truncate(1);
        let entries = [state("a", 1), state("b", 2), commit(1, 10, vec![out(1)])]
            .into_iter()
            .chain(parts)
            .chain([commit(2, 11, vec![])]);
        let r = restore_entries::<i64>(entries).unwrap();
        assert_eq!(r.states.len(), 2, "the partial snapshot did not drop key b");
        assert!(r.unpublished.is_empty(), "a snapshot proves batch 1 was published");
    }

    #[test]
    fn a_restore_that_starts_at_an_incomplete_snapshot_fails_loudly() {
        let mut parts = snapshot(1, 10, &[("a", 1), ("b", 2)], 1);
        parts.truncate(1);
        let err = from_snapshot(parts.into_iter().chain([commit(2, 11, vec![])])).unwrap_err();
        assert!(err.to_string().contains("missing part 1 of 2"), "{err}");
    }

    #[test]
    fn snapshot_parts_stay_near_the_size_limit() {
        let states: Vec<(String, i64)> = (0..1000).map(|i| (format!("key-{i:04}"), i)).collect();
        let refs: Vec<(&str, i64)> = states.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let parts = snapshot(1, 0, &refs, 1000);
        for p in &parts {
            let len = serde_json::to_vec(p).unwrap().len();
            assert!(len < 1000 + 200, "part of {len} bytes");
        }
        let Entry::Snapshot { parts: n, .. } = parts[0] else { unreachable!() };
        assert_eq!(n as usize, parts.len());
        assert_eq!(from_snapshot(parts).unwrap().states.len(), 1000);
    }
}
