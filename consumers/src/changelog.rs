//! The state changelog: how a partition task records its decisions before
//! publishing them, and how a restore rebuilds state, checkpoint and the
//! unpublished outbox from it. Pure data and logic; the runtime does the I/O.
//!
//! # The protocol ("record the decision, then publish it")
//!
//! Per batch, a task appends to its changelog partition, in order:
//!
//! 1. one [`Entry::Commit`] carrying the batch number, the checkpoint (next
//!    input offset of every input partition of the task), the outbox (the
//!    encoded outputs) and the changed keys' states — or, when that would not
//!    fit in one record, first the states in [`Entry::States`] parts and the
//!    outbox in [`Entry::Outbox`] parts, then a commit without them,
//!
//! //! waits for the acks, produces the outbox, waits for those acks, then
//! appends [`Entry::Published`] for the batch — possibly after the next
//! batch's commit, since the runtime records batch N+1 while batch N's outbox
//! is being acknowledged; a marker names its batch, so order does not matter.
//! State and outbox entries count
//! only once their commit follows them; anything after the last commit is a
//! batch that was never decided and is dropped on restore. A commit without its
//! `Published` marker is re-published on restore — byte-identical records
//! with the same `event_id`s, which consumers drop as copies.
//!
//! # Snapshots
//!
//! Snapshots bound restore time. A snapshot is every key's state at a batch
//! boundary (after that batch was published), written as a run of
//! [`Entry::Snapshot`] parts (each below the record size cap). Every
//! changelog record carries the header [`SNAPSHOT_HEADER`]: the offset of the
//! first part of the latest *complete* snapshot (the last part is the first
//! record to point at it). A restore reads the partition's last record,
//! follows its pointer and reads from there: it never scans history older
//! than the latest snapshot. Snapshots met later in a read change nothing
//! (the commits before them already rebuilt the same state), except that
//! they prove every batch up to theirs was published.

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
            other => return Err(format!("unknown changelog entry kind '{other}'")),
        })
    }
}

/// Record header on every changelog record: the offset (decimal) of the first
/// part of the latest complete snapshot in its partition.
pub const SNAPSHOT_HEADER: &str = "keyflow.snapshot";

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
}

impl<S> Default for Restored<S> {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            checkpoint: BTreeMap::new(),
            last_batch: 0,
            unpublished: vec![],
            dropped_tail: 0,
        }
    }
}

/// A changelog read that cannot be restored from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("changelog: {0}")]
pub struct RestoreError(pub String);

/// Rebuilds a task from its changelog entries (in changelog order), read
/// either from the beginning of the partition or from a snapshot pointer, in
/// which case the entries must start with that complete snapshot.
pub fn restore<S: DeserializeOwned + Default + Clone>(
    entries: impl IntoIterator<Item = Entry>,
) -> Result<Restored<S>, RestoreError> {
    let mut r = Restored::default();
    let mut pending: Vec<(String, Raw)> = Vec::new();
    let mut pending_outbox: Vec<OutboxRecord> = Vec::new();
    // The snapshot the read starts with, while its parts are being loaded: (batch, next part, parts).
    let mut loading: Option<(u64, u32, u32)> = None;
    for (i, e) in entries.into_iter().enumerate() {
        if let Some((batch, next, parts)) = loading {
            if next == parts {
                loading = None;
            } else {
                match e {
                    Entry::Snapshot { batch: b, part, states, .. } if b == batch && part == next => {
                        load(&mut r.states, states)?;
                        loading = Some((batch, next + 1, parts));
                        continue;
                    }
                    other => {
                        return Err(RestoreError(format!(
                            "snapshot of batch {batch} is missing part {next} of {parts} (found {})",
                            other.kind()
                        )))
                    }
                }
            }
        }
        match e {
            Entry::State { key, state } => pending.push((key, state)),
            Entry::States { states } => pending.extend(states),
            Entry::Outbox { records } => pending_outbox.extend(records),
            Entry::Commit { batch, checkpoint, outbox, states } => {
                let outbox: Vec<OutboxRecord> = pending_outbox.drain(..).chain(outbox).collect();
                for (key, delta) in pending.drain(..).chain(states) {
                    let delta: KeyDelta<S> = delta
                        .parse()
                        .map_err(|e| RestoreError(format!("state of key '{key}' in batch {batch}: {e}")))?;
                    r.states.entry(key).or_default().apply_delta(delta);
                }
                r.checkpoint.extend(checkpoint);
                r.last_batch = batch;
                if !outbox.is_empty() {
                    r.unpublished.push((batch, outbox));
                }
            }
            Entry::Published { batch } => r.unpublished.retain(|(b, _)| *b != batch),
            Entry::Snapshot { batch, part: 0, parts, checkpoint, states } if i == 0 => {
                r.states.clear();
                load(&mut r.states, states)?;
                r.checkpoint = checkpoint;
                r.last_batch = batch;
                loading = Some((batch, 1, parts));
            }
            // A snapshot inside the read: the commits before it rebuilt the same
            // state (a crash may have cut it short), but it proves that every
            // batch up to its own was published.
            Entry::Snapshot { batch, .. } => r.unpublished.retain(|(b, _)| *b > batch),
        }
    }
    if let Some((batch, next, parts)) = loading {
        if next < parts {
            return Err(RestoreError(format!("snapshot of batch {batch} ends after part {next} of {parts}")));
        }
    }
    r.dropped_tail = pending.len() + pending_outbox.len();
    Ok(r)
}

/// Adds a snapshot part's full key states.
fn load<S: DeserializeOwned>(
    into: &mut HashMap<String, KeyState<S>>,
    states: BTreeMap<String, Raw>,
) -> Result<(), RestoreError> {
    for (key, v) in states {
        let ks = v.parse().map_err(|e| RestoreError(format!("snapshot state of key '{key}': {e}")))?;
        into.insert(key, ks);
    }
    Ok(())
}

impl Entry {
    /// The entry's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::State { .. } => "state",
            Entry::States { .. } => "states",
            Entry::Outbox { .. } => "outbox",
            Entry::Commit { .. } => "commit",
            Entry::Published { .. } => "published",
            Entry::Snapshot { .. } => "snapshot",
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
        let r = restore::<i64>([state("a", 1), back]).unwrap();
        assert_eq!(r.states["a"].state, 3, "the commit's own states come after pending ones");
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
        let r = restore::<i64>([
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
        let r =
            restore::<i64>([state("a", 1), commit(1, 10, vec![]), state("a", 2), state("b", 7), commit(2, 20, vec![])])
                .unwrap();
        assert_eq!(r.states["a"].state, 2);
        assert_eq!(r.states["b"].state, 7);
        assert_eq!(r.checkpoint["orders/0"], 20);
        assert_eq!(r.last_batch, 2);
        assert!(r.unpublished.is_empty());
    }

    #[test]
    fn state_written_after_the_last_commit_is_an_undecided_batch_and_is_dropped() {
        let r = restore::<i64>([state("a", 1), commit(1, 10, vec![]), state("a", 99), state("c", 5)]).unwrap();
        assert_eq!(r.states["a"].state, 1);
        assert!(!r.states.contains_key("c"));
        assert_eq!(r.checkpoint["orders/0"], 10, "resume where the decided work ends");
        assert_eq!(r.dropped_tail, 2);
    }

    #[test]
    fn a_commit_without_its_published_marker_is_republished_unchanged() {
        let r = restore::<i64>([
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
        let r = restore::<i64>([
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
        let r = restore::<i64>(parts.into_iter().chain(tail)).unwrap();
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
        let r = restore::<i64>(parts).unwrap();
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
        let r = restore::<i64>(entries).unwrap();
        assert_eq!(r.states.len(), 2, "the partial snapshot did not drop key b");
        assert!(r.unpublished.is_empty(), "a snapshot proves batch 1 was published");
    }

    #[test]
    fn a_restore_that_starts_at_an_incomplete_snapshot_fails_loudly() {
        let mut parts = snapshot(1, 10, &[("a", 1), ("b", 2)], 1);
        parts.truncate(1);
        let err = restore::<i64>(parts.into_iter().chain([commit(2, 11, vec![])])).unwrap_err();
        assert!(err.0.contains("missing part 1 of 2"), "{err}");
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
        assert_eq!(restore::<i64>(parts).unwrap().states.len(), 1000);
    }
}
