//! The disk store against the in-memory map it replaces.

use super::*;
use crate::changelog::Rebuild;
use crate::task::Offsets;

fn ks(n: i64) -> KeyState<i64> {
    KeyState { state: n, last_offsets: Offsets::from([("orders/0".to_string(), n)]), ..Default::default() }
}

fn position(batch: u64, at: i64) -> Position {
    Position {
        cluster: "c".into(),
        topic: "t-state".into(),
        partition: 0,
        lineage: Some(3),
        base: None,
        snapshot: None,
        batch,
        checkpoint: BTreeMap::from([("orders/0".to_string(), at)]),
        at,
        from: at + 1,
        verified: at,
        since_snapshot: 0,
        snapshot_bytes: 0,
        pending: 0,
        keys: 0,
    }
}

#[test]
fn persisted_states_and_position_survive_a_reopen_and_the_cache_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sd = StateDir::open(dir.path(), 1 << 20).unwrap();
        let mut store: Store<i64> = sd.task(0, 100).unwrap();
        assert!(store.position().is_none(), "a new store has no position");
        for round in 0..10 {
            let keys: Vec<String> = (0..100).map(|i| format!("k{}", round * 100 + i)).collect();
            let mut states = store.checkout(keys.iter().map(String::as_str)).unwrap();
            for (i, k) in keys.iter().enumerate() {
                *states.get_mut(k).unwrap() = ks(i64::from(round) * 100 + i as i64);
            }
            store.checkin(states, &keys);
            store.persist(position(round as u64 + 1, 10 + i64::from(round))).unwrap();
            let Kind::Disk(d) = &store.kind else { unreachable!() };
            assert!(d.cache.len() <= 100, "cache holds at most its size: {}", d.cache.len());
        }
        assert_eq!(store.len(), 1_000);
    }
    let sd = StateDir::open(dir.path(), 1 << 20).unwrap();
    let mut store: Store<i64> = sd.task(0, 100).unwrap();
    assert_eq!(store.position().map(|p| (p.batch, p.at, p.keys)), Some((10, 19, 1_000)));
    let got = store.checkout(["k0", "k999", "nope"]).unwrap();
    assert_eq!((got["k0"].state, got["k999"].state, got["nope"].state), (0, 999, 0));
    assert_eq!(store.take_lookups(), (0, 3), "a reopened store reads from disk");
}

#[test]
fn changes_not_persisted_are_discarded_and_never_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::open(dir.path(), 1 << 20).unwrap();
    let mut store: Store<i64> = sd.task(1, 10).unwrap();
    let mut s = store.checkout(["a"]).unwrap();
    *s.get_mut("a").unwrap() = ks(1);
    store.checkin(s, &["a".to_string()]);
    store.persist(position(1, 5)).unwrap();
    let mut s = store.checkout(["a", "b"]).unwrap();
    *s.get_mut("a").unwrap() = ks(2);
    *s.get_mut("b").unwrap() = ks(2);
    store.checkin(s, &["a".to_string(), "b".to_string()]);
    // A snapshot taken inside the transaction sees the staged states.
    let seen: BTreeMap<String, String> =
        store.entries().map(|e| e.map(|(k, v)| (k, v.text().to_string())).unwrap()).collect();
    assert_eq!(seen.len(), 2);
    assert!(seen["a"].starts_with("{\"s\":2,"), "{seen:?}");
    assert_eq!(store.len(), 2);
    store.discard();
    let s = store.checkout(["a", "b"]).unwrap();
    assert_eq!((s["a"].state, s["b"].state), (1, 0), "back to the persisted states");
    assert_eq!(store.len(), 1);
}

#[test]
fn a_second_instance_is_refused_the_state_dir_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let _held = StateDir::open(dir.path(), 1 << 20).unwrap();
    let err = StateDir::open(dir.path(), 1 << 20).unwrap_err().to_string();
    assert!(err.contains("--state-dir") && err.contains("in use by another worker instance"), "{err}");
    assert!(err.contains(&format!("pid {}", std::process::id())), "names the holder: {err}");
}

#[test]
fn the_position_proves_only_its_own_record_and_belongs_to_one_changelog() {
    use crate::changelog::{Entry, Record};
    let pos = position(7, 40);
    let rec = |offset, lineage, entry| Record { offset, lineage, pointer: None, entry };
    assert!(pos.proves(Some(&rec(40, Some(3), Entry::Published { batch: 7 }))).is_ok());
    assert!(pos.proves(Some(&rec(40, Some(3), Entry::Published { batch: 8 }))).is_err(), "a later batch");
    assert!(pos.proves(Some(&rec(40, Some(9), Entry::Published { batch: 7 }))).is_err(), "another lineage");
    assert!(pos.proves(Some(&rec(40, None, Entry::Outbox { records: vec![] }))).is_err());
    assert!(pos.proves(None).unwrap_err().contains("ahead"));
    let claim = Position { at: 3, ..pos.clone() };
    assert!(claim.proves(Some(&rec(3, None, Entry::Claim { base: None }))).is_ok(), "its own claim");
    assert!(pos.belongs_to("c", "t-state", 0).is_ok());
    assert!(pos.belongs_to("other", "t-state", 0).unwrap_err().contains("cluster"));
    assert!(pos.belongs_to("c", "t-state", 1).is_err());
}

#[test]
fn a_rebuild_writes_through_to_disk_in_batches_and_counts_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::open(dir.path(), 1 << 20).unwrap();
    let mut store: Store<i64> = sd.task(2, 10).unwrap();
    store.persist(position(1, 1)).unwrap();
    Rebuild::clear(&mut store).unwrap();
    assert!(store.position().is_none(), "a store being rebuilt has no position");
    for i in 0..20_000 {
        store.put(format!("k{i}"), ks(i), None).unwrap();
    }
    let mut again = Rebuild::get(&mut store, "k5").unwrap();
    again.state = 55;
    store.put("k5".into(), again, None).unwrap();
    store.persist(position(2, 2)).unwrap();
    assert_eq!(store.len(), 20_000);
    assert_eq!(store.checkout(["k5"]).unwrap()["k5"].state, 55);
    assert_eq!(store.sizes().unwrap().len(), 20_000);
}

#[test]
fn a_disk_store_asks_to_be_written_after_its_interval_or_once_changes_fill_half_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::open(dir.path(), 1 << 20).unwrap();
    let mut store: Store<i64> = sd.task(1, 10).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    assert!(!store.persist_due(hour), "nothing changed, just opened");
    assert!(store.persist_due(std::time::Duration::ZERO), "its interval passed");
    for (i, k) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        assert!(!store.persist_due(hour), "{i} changed keys of a 10-key cache");
        let mut s = store.checkout([k]).unwrap();
        *s.get_mut(k).unwrap() = ks(1);
        store.checkin(s, &[k.to_string()]);
    }
    assert!(store.persist_due(hour), "5 changed keys fill half the cache");
    store.persist(position(1, 5)).unwrap();
    assert!(!store.persist_due(hour), "written");
    assert!(!Store::<i64>::memory().persist_due(std::time::Duration::ZERO), "the memory store writes nothing");
}
