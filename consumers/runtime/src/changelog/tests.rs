//! The changelog's tests: entries and their wire format, batch and snapshot
//! parts, and restores of logs with claims, late writers and trimmed starts.

use super::*;

/// A full state as snapshot parts of about `max_part_bytes` each.
fn snapshot_parts(
    batch: u64,
    checkpoint: &BTreeMap<String, i64>,
    states: Vec<(String, Raw)>,
    max_part_bytes: usize,
) -> Vec<Entry> {
    let sizes = states.iter().map(|(k, v)| state_len(k, v.len())).collect();
    let entries = states.into_iter().map(Ok::<_, serde_json::Error>);
    SnapshotParts::new(batch, checkpoint.clone(), sizes, entries, max_part_bytes).map(Result::unwrap).collect()
}

/// Part size for one small key a part.
const ONE_KEY: usize = 50;

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
    Entry::Commit { batch, checkpoint: BTreeMap::from([("orders/0".into(), offset)]), outbox, states: BTreeMap::new() }
}

/// A commit of batch `batch` (checkpoint `next` on orders/2) that sets
/// key c1 to `count` as of input offset `at`, if given.
fn commit_c1(batch: u64, next: i64, c1: Option<(i64, i64)>) -> Entry {
    let states = c1.map(|(count, at)| BTreeMap::from([("c1".to_string(), delta_at(count, at))])).unwrap_or_default();
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
    let parts = snapshot(1, 10, &[("a", 5), ("b", 7), ("c", 9)], ONE_KEY);
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
    let mut parts = snapshot(1, 10, &[("a", 1), ("b", 2)], ONE_KEY);
    parts.truncate(1);
    let entries = [state("a", 1), state("b", 2), commit(1, 10, vec![out(1)])].into_iter().chain(parts).chain([commit(
        2,
        11,
        vec![],
    )]);
    let r = restore_entries::<i64>(entries).unwrap();
    assert_eq!(r.states.len(), 2, "the partial snapshot did not drop key b");
    assert!(r.unpublished.is_empty(), "a snapshot proves batch 1 was published");
}

#[test]
fn a_restore_that_starts_at_an_incomplete_snapshot_fails_loudly() {
    let mut parts = snapshot(1, 10, &[("a", 1), ("b", 2)], ONE_KEY);
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

/// A key's state with `ids` remembered ids: about 40 bytes an id.
fn large(v: i64, ids: usize) -> KeyState<i64> {
    let mut ks = KeyState { state: v, ..KeyState::default() };
    for i in 0..ids {
        ks.event_ids.insert(&format!("event-{i}"), i as i64);
    }
    ks.event_ids.take_fresh();
    ks
}

#[test]
fn a_key_larger_than_a_snapshot_part_is_written_in_pieces_and_restored_whole() {
    let states = HashMap::from([
        ("a".to_string(), large(1, 3)),
        ("big".to_string(), large(2, 2_000)),
        ("z".to_string(), large(3, 1)),
    ]);
    let checkpoint = BTreeMap::from([("orders/0".to_string(), 0)]);
    let parts: Vec<Entry> = snapshot_of(1, checkpoint, &states, 4096).map(Result::unwrap).collect();
    assert!(parts.len() > 10, "{} parts", parts.len());
    for p in &parts {
        let len = serde_json::to_vec(p).unwrap().len();
        assert!(len <= 4096 + 200, "a part of {len} bytes");
    }
    let r = from_snapshot(parts).unwrap();
    assert!(r.states == states, "the restored states differ");
}

#[test]
fn a_change_larger_than_a_record_is_written_in_pieces_and_applied_whole() {
    let mut live = large(7, 0);
    for i in 0..3_000 {
        live.event_ids.insert(&format!("event-{i}"), i);
    }
    let changed = BTreeMap::from([
        ("big".to_string(), live.take_delta(i64::MAX)),
        ("small".to_string(), large(1, 0).take_delta(0)),
    ]);
    let checkpoint = BTreeMap::from([("orders/0".to_string(), 1)]);
    let log = batch_entries(1, &checkpoint, &[out(1)], &changed, 8192).unwrap();
    assert!(log.len() > 10, "{} records", log.len());
    for e in &log {
        let len = serde_json::to_vec(e).unwrap().len();
        assert!(len <= 8192 + 200, "a record of {len} bytes");
    }
    let r = restore_entries::<i64>(log).unwrap();
    assert!(r.states["big"] == live, "key 'big' differs");
    assert_eq!(r.states["small"].state, 1);
}

#[test]
fn pieces_that_stop_before_their_last_fail_the_restore() {
    let mut big = large(7, 0);
    for i in 0..500 {
        big.event_ids.insert(&format!("event-{i}"), i);
    }
    let changed = BTreeMap::from([("big".to_string(), big.take_delta(i64::MAX))]);
    let checkpoint = BTreeMap::from([("orders/0".to_string(), 1)]);
    let mut log = batch_entries(1, &checkpoint, &[], &changed, 2048).unwrap();
    let commit = log.pop().unwrap();
    log.pop(); // the last piece
    log.push(commit);
    let err = restore_entries::<i64>(log).unwrap_err();
    assert!(err.to_string().contains("pieces of key 'big' stop before their last"), "{err}");
}
