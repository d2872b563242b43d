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
//! `consumers/runtime/tests/changelog_model.rs` checks these rules against
//! thousands of random schedules of crashes, late writers and trimmed logs.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::task::{KeyDelta, KeyState, Offsets};

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

    /// JSON text read back as a value (checked to be JSON).
    pub fn from_json(text: String) -> serde_json::Result<Raw> {
        serde_json::value::RawValue::from_string(text).map(Raw)
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
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

/// How a run of keys' states is cut into records of about `max` bytes of
/// states each: runs of whole states, and a state too large for a record
/// of its own as a run of pieces, each alone in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The states `start..end`, whole (none: an empty snapshot).
    Whole { start: usize, end: usize },
    /// Piece `piece` of `pieces` of state `item`'s JSON text.
    Piece { item: usize, piece: usize, pieces: usize },
}

/// A piece of a key's state (see [`Cut`]), as a record's map of states
/// holds it in the key's place: `{"more": text}`, then `{"last": text}`;
/// the texts joined are the state's JSON. (A state's JSON is an object
/// whose first field is `s`, or `state` in earlier versions, so the two
/// never look alike.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Piece {
    More(String),
    Last(String),
}

impl Piece {
    /// The piece `v` holds, if it is one.
    pub fn of(v: &Raw) -> Option<serde_json::Result<Piece>> {
        let t = v.text();
        (t.starts_with("{\"more\":") || t.starts_with("{\"last\":")).then(|| v.parse())
    }
}

/// Text per piece: escaped as a JSON string, a piece takes at most twice that.
fn piece_bytes(max: usize) -> usize {
    (max / 2).max(1)
}

/// The cuts of states whose sizes ([`state_len`]) are `sizes`, in order
/// (at least one, so an empty state is a snapshot too).
pub fn cuts(sizes: impl IntoIterator<Item = usize>, max: usize) -> Vec<Cut> {
    let (mut cuts, mut start, mut size, mut n) = (vec![], 0, 0, 0);
    for (i, len) in sizes.into_iter().enumerate() {
        n = i + 1;
        if len > max {
            if i > start {
                cuts.push(Cut::Whole { start, end: i });
            }
            let pieces = len.div_ceil(piece_bytes(max));
            cuts.extend((0..pieces).map(|piece| Cut::Piece { item: i, piece, pieces }));
            (start, size) = (i + 1, 0);
            continue;
        }
        if size > 0 && size + len > max {
            cuts.push(Cut::Whole { start, end: i });
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < n || cuts.is_empty() {
        cuts.push(Cut::Whole { start, end: n });
    }
    cuts
}

/// `text` in exactly `n` pieces of about equal length, cut between
/// characters (the last ones empty if the text is shorter than planned).
fn split_text(text: &str, n: usize) -> Vec<String> {
    let each = text.len().div_ceil(n.max(1)).max(1);
    let mut at = 0;
    (0..n)
        .map(|_| {
            let mut end = (at + each).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            let piece = text[at..end].to_string();
            at = end;
            piece
        })
        .collect()
}

/// The records' maps of states of `entries` (in order), cut as [`cuts`]
/// planned from their sizes.
pub struct Records<I> {
    entries: I,
    cuts: std::vec::IntoIter<Cut>,
    /// The key being written in pieces, with its pieces still to write.
    open: Option<(String, std::vec::IntoIter<String>)>,
}

impl<I, E> Records<I>
where
    I: Iterator<Item = Result<(String, Raw), E>>,
{
    /// `sizes`: each state's [`state_len`], in the order `entries` yields them.
    pub fn new(sizes: impl IntoIterator<Item = usize>, entries: I, max: usize) -> Self {
        Records { entries, cuts: cuts(sizes, max).into_iter(), open: None }
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.cuts.len()
    }

    /// Whether there is no record (never: an empty state is one).
    pub fn is_empty(&self) -> bool {
        self.cuts.len() == 0
    }
}

impl<I, E> Iterator for Records<I>
where
    I: Iterator<Item = Result<(String, Raw), E>>,
{
    type Item = Result<BTreeMap<String, Raw>, E>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut map = BTreeMap::new();
        match self.cuts.next()? {
            Cut::Whole { start, end } => {
                for e in self.entries.by_ref().take(end - start) {
                    match e {
                        Ok((k, v)) => map.insert(k, v),
                        Err(e) => return Some(Err(e)),
                    };
                }
            }
            Cut::Piece { piece, pieces, .. } => {
                if piece == 0 {
                    let (key, v) = match self.entries.next()? {
                        Ok(kv) => kv,
                        Err(e) => return Some(Err(e)),
                    };
                    self.open = Some((key, split_text(v.text(), pieces).into_iter()));
                }
                let (key, rest) = self.open.as_mut().expect("a piece follows the first of its key");
                let text = rest.next().unwrap_or_default();
                let p = if piece + 1 == pieces { Piece::Last(text) } else { Piece::More(text) };
                map.insert(key.clone(), Raw::of(&p).expect("a piece encodes"));
            }
        }
        Some(Ok(map))
    }
}

/// `items` cut into parts of about `max_part_bytes` each (an item larger
/// than that alone in its part); no part for no items.
pub fn split<T>(items: Vec<T>, size: impl Fn(&T) -> usize, max_part_bytes: usize) -> Vec<Vec<T>> {
    let mut parts: Vec<Vec<T>> = vec![];
    let mut bytes = 0;
    for item in items {
        let len = size(&item);
        match parts.last_mut() {
            Some(part) if bytes + len <= max_part_bytes => part.push(item),
            _ => {
                parts.push(vec![item]);
                bytes = 0;
            }
        }
        bytes += len;
    }
    parts
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
    if !states.is_empty() {
        let sizes: Vec<usize> = states.iter().map(|(k, v)| state_len(k, v.len())).collect();
        let entries = states.into_iter().map(Ok::<_, std::convert::Infallible>);
        for states in Records::new(sizes, entries, max_record_bytes) {
            log.push(Entry::States { states: states.unwrap_or_else(|never| match never {}) });
        }
    }
    for records in split(outbox.to_vec(), outbox_len, max_record_bytes) {
        log.push(Entry::Outbox { records });
    }
    log.push(commit(vec![], BTreeMap::new()));
    Ok(log)
}

/// A snapshot of every key's state as of `batch`, built one part at a time
/// (each about `max_part_bytes` of states, a larger key in pieces: see
/// [`Cut`]) so that memory holds a few parts, never a copy of the whole
/// state. It reads the states twice: their sizes first (to count the parts),
/// then the states, in the same order.
pub struct SnapshotParts<I> {
    batch: u64,
    checkpoint: BTreeMap<String, i64>,
    records: Records<I>,
    parts: u32,
    next: u32,
}

impl<I, E> SnapshotParts<I>
where
    I: Iterator<Item = Result<(String, Raw), E>>,
{
    /// `sizes`: each key's [`state_len`], in the order `entries` yields them.
    pub fn new(
        batch: u64,
        checkpoint: BTreeMap<String, i64>,
        sizes: Vec<usize>,
        entries: I,
        max_part_bytes: usize,
    ) -> Self {
        let records = Records::new(sizes, entries, max_part_bytes);
        let parts = records.len() as u32;
        SnapshotParts { batch, checkpoint, records, parts, next: 0 }
    }

    /// How many parts the snapshot has.
    pub fn parts(&self) -> u32 {
        self.parts
    }
}

/// A snapshot of the states in `states` (see [`SnapshotParts`]).
pub fn snapshot_of<S: Serialize>(
    batch: u64,
    checkpoint: BTreeMap<String, i64>,
    states: &HashMap<String, KeyState<S>>,
    max_part_bytes: usize,
) -> SnapshotParts<impl Iterator<Item = serde_json::Result<(String, Raw)>> + '_> {
    let sizes = states.iter().map(|(k, ks)| state_len(k, json_len(ks))).collect();
    let entries = states.iter().map(|(k, ks)| Raw::of(ks).map(|v| (k.clone(), v)));
    SnapshotParts::new(batch, checkpoint, sizes, entries, max_part_bytes)
}

impl<I, E> Iterator for SnapshotParts<I>
where
    I: Iterator<Item = Result<(String, Raw), E>>,
{
    type Item = Result<Entry, E>;

    fn next(&mut self) -> Option<Self::Item> {
        let states = match self.records.next()? {
            Ok(states) => states,
            Err(e) => return Some(Err(e)),
        };
        let (batch, part, parts, checkpoint) = (self.batch, self.next, self.parts, self.checkpoint.clone());
        self.next += 1;
        Some(Ok(Entry::Snapshot { batch, part, parts, checkpoint, states }))
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

mod restore;
pub use restore::*;

#[cfg(test)]
mod tests;
