//! The state changelog: how a partition task records its decisions before
//! publishing them, and how a restore rebuilds state, checkpoint and the
//! unpublished outbox from it. Pure data and logic; the runtime does the I/O.
//!
//! # The protocol ("record the decision, then publish it")
//!
//! Per batch, a task appends to its changelog partition, in order:
//!
//! 1. one [`Entry::State`] per key whose state changed (the full new value),
//! 2. one [`Entry::Commit`] carrying the batch number, the checkpoint (next
//!    input offset of every input partition of the task) and the outbox (the
//!    encoded outputs),
//!
//! waits for the acks, produces the outbox, waits for those acks, then
//! appends [`Entry::Published`] for the batch. State entries count only once
//! their commit follows them; anything after the last commit is a batch that
//! was never decided and is dropped on restore. A commit without its
//! `Published` marker is re-published on restore — byte-identical records
//! with the same `event_id`s, which consumers drop as copies.
//!
//! Snapshots bound restore time: [`Entry::Snapshot`] carries every key's
//! state at a commit boundary, so a restore can start at the latest snapshot
//! instead of the beginning of the changelog.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// An output record waiting to be (re)published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub topic: String,
    pub key: String,
    /// Confluent wire-format bytes (hex in the changelog's JSON).
    #[serde(with = "hex")]
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// One changelog record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A key's new state (JSON of the worker's state type), pending its commit.
    State { key: String, state: serde_json::Value },
    /// A decided batch; `states` carries its state changes when they fit in
    /// one record (otherwise they precede it as [`Entry::State`] records).
    Commit {
        batch: u64,
        checkpoint: BTreeMap<String, i64>,
        outbox: Vec<OutboxRecord>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        states: BTreeMap<String, serde_json::Value>,
    },
    /// The batch's outbox was produced and acknowledged.
    Published { batch: u64 },
    /// Every key's state as of `batch` (which was committed and published).
    Snapshot { batch: u64, checkpoint: BTreeMap<String, i64>, states: BTreeMap<String, serde_json::Value> },
}

/// Bytes as a hex string: half the size of a JSON array of numbers.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// What a restore yields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// State per key.
    pub states: HashMap<String, serde_json::Value>,
    /// Next input offset per input partition (`topic/partition` → offset).
    pub checkpoint: BTreeMap<String, i64>,
    /// The last committed batch number (0 when none).
    pub last_batch: u64,
    /// Outboxes of committed batches without a `Published` marker, oldest first.
    pub unpublished: Vec<(u64, Vec<OutboxRecord>)>,
    /// Entries after the last commit that were dropped (an undecided batch).
    pub dropped_tail: usize,
}

/// Rebuilds a task from its changelog entries (in changelog order).
pub fn restore(entries: impl IntoIterator<Item = Entry>) -> Restored {
    let mut r = Restored::default();
    let mut pending: Vec<(String, serde_json::Value)> = Vec::new();
    for e in entries {
        match e {
            Entry::State { key, state } => pending.push((key, state)),
            Entry::Commit { batch, checkpoint, outbox, states } => {
                r.states.extend(pending.drain(..));
                r.states.extend(states);
                r.checkpoint.extend(checkpoint);
                r.last_batch = batch;
                if !outbox.is_empty() {
                    r.unpublished.push((batch, outbox));
                }
            }
            Entry::Published { batch } => r.unpublished.retain(|(b, _)| *b != batch),
            Entry::Snapshot { batch, checkpoint, states } => {
                pending.clear();
                r.states = states.into_iter().collect();
                r.checkpoint = checkpoint;
                r.last_batch = batch;
                r.unpublished.retain(|(b, _)| *b > batch);
            }
        }
    }
    r.dropped_tail = pending.len();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn states_inside_the_commit_apply_with_it_and_bytes_round_trip_as_hex() {
        let c = Entry::Commit {
            batch: 1,
            checkpoint: BTreeMap::from([("orders/0".into(), 5)]),
            outbox: vec![out(0xab)],
            states: BTreeMap::from([("a".into(), json!(3))]),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"0000000001ab\""), "{text}");
        let back: Entry = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        let r = restore([state("a", 1), back]);
        assert_eq!(r.states["a"], json!(3), "the commit's own states come after pending ones");
    }

    fn state(key: &str, v: i64) -> Entry {
        Entry::State { key: key.into(), state: json!(v) }
    }

    #[test]
    fn committed_batches_restore_state_and_checkpoint() {
        let r = restore([state("a", 1), commit(1, 10, vec![]), state("a", 2), state("b", 7), commit(2, 20, vec![])]);
        assert_eq!(r.states["a"], json!(2));
        assert_eq!(r.states["b"], json!(7));
        assert_eq!(r.checkpoint["orders/0"], 20);
        assert_eq!(r.last_batch, 2);
        assert!(r.unpublished.is_empty());
    }

    #[test]
    fn state_written_after_the_last_commit_is_an_undecided_batch_and_is_dropped() {
        let r = restore([state("a", 1), commit(1, 10, vec![]), state("a", 99), state("c", 5)]);
        assert_eq!(r.states["a"], json!(1));
        assert!(!r.states.contains_key("c"));
        assert_eq!(r.checkpoint["orders/0"], 10, "resume where the decided work ends");
        assert_eq!(r.dropped_tail, 2);
    }

    #[test]
    fn a_commit_without_its_published_marker_is_republished_unchanged() {
        let r = restore([
            commit(1, 10, vec![out(1)]),
            Entry::Published { batch: 1 },
            commit(2, 20, vec![out(2), out(3)]),
            commit(3, 30, vec![out(4)]),
            Entry::Published { batch: 3 },
        ]);
        assert_eq!(r.unpublished, vec![(2, vec![out(2), out(3)])]);
    }

    #[test]
    fn a_snapshot_replaces_everything_before_it() {
        let r = restore([
            state("old", 1),
            commit(1, 10, vec![out(1)]),
            Entry::Published { batch: 1 },
            Entry::Snapshot {
                batch: 1,
                checkpoint: BTreeMap::from([("orders/0".into(), 10)]),
                states: BTreeMap::from([("a".into(), json!(5))]),
            },
            state("a", 6),
            commit(2, 12, vec![out(2)]),
        ]);
        assert_eq!(r.states.len(), 1);
        assert_eq!(r.states["a"], json!(6));
        assert_eq!(r.checkpoint["orders/0"], 12);
        assert_eq!(r.unpublished, vec![(2, vec![out(2)])]);
    }
}
