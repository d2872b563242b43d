//! Committed group offsets, in a [`Table`] (`offsets.jsonl`): one line per
//! committed partition, written before the commit is answered.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::table::Table;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// (group, topic, partition), ordered so a group's offsets are one range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Key {
    g: String,
    t: String,
    p: i32,
}

fn key(group: &str, topic: &str, partition: i32) -> Key {
    Key { g: group.into(), t: topic.into(), p: partition }
}

/// The offsets of every group.
pub struct Offsets {
    table: Mutex<Table<Key, Committed>>,
}

impl Offsets {
    pub fn open(dir: &std::path::Path, fsync: bool) -> std::io::Result<Offsets> {
        Ok(Offsets { table: Mutex::new(Table::open(dir, "offsets.jsonl", fsync)?) })
    }

    /// Stores commits of one group (or deletes them, `None`).
    pub fn commit(&self, group: &str, commits: &[(String, i32, Option<Committed>)]) -> std::io::Result<()> {
        let changes = commits.iter().map(|(t, p, c)| (key(group, t, *p), c.clone())).collect();
        self.table.lock().unwrap().write(changes)
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.table.lock().unwrap().map().get(&key(group, topic, partition)).cloned()
    }

    /// Every committed offset of a group: (topic, partition, offset).
    pub fn of_group(&self, group: &str) -> Vec<(String, i32, Committed)> {
        let table = self.table.lock().unwrap();
        table
            .map()
            .range(key(group, "", i32::MIN)..)
            .take_while(|(k, _)| k.g == group)
            .map(|(k, c)| (k.t.clone(), k.p, c.clone()))
            .collect()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        let table = self.table.lock().unwrap();
        let mut gs: Vec<String> = table.map().keys().map(|k| k.g.clone()).collect();
        gs.dedup();
        gs
    }

    /// Forgets a group's offsets.
    pub fn delete_group(&self, group: &str) -> std::io::Result<()> {
        let gone: Vec<(String, i32, Option<Committed>)> =
            self.of_group(group).into_iter().map(|(t, p, _)| (t, p, None)).collect();
        self.commit(group, &gone)
    }

    /// Forgets every group's offsets of a deleted topic.
    pub fn delete_topic(&self, topic: &str) -> std::io::Result<()> {
        let mut table = self.table.lock().unwrap();
        let gone = table.map().keys().filter(|k| k.t == topic).map(|k| (k.clone(), None)).collect();
        table.write(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn c(offset: i64) -> Option<Committed> {
        Some(Committed { offset, leader_epoch: 0, metadata: Some("m".into()) })
    }

    #[test]
    fn commits_survive_a_reopen_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let o = Offsets::open(dir.path(), false).unwrap();
        o.commit("g", &[("t".into(), 0, c(5)), ("t".into(), 1, c(7))]).unwrap();
        o.commit("g", &[("t".into(), 0, c(9))]).unwrap();
        drop(o);
        let mut f = OpenOptions::new().append(true).open(dir.path().join("offsets.jsonl")).unwrap();
        f.write_all(b"{\"g\":\"g\",\"t\":\"t\",\"p\":1,\"c\":{\"off").unwrap();
        let o = Offsets::open(dir.path(), false).unwrap();
        assert_eq!(o.get("g", "t", 0).unwrap().offset, 9);
        assert_eq!(o.get("g", "t", 1).unwrap().offset, 7);
        assert_eq!(o.of_group("g").len(), 2);
        assert!(o.of_group("h").is_empty());
    }

    #[test]
    fn compaction_keeps_only_the_latest_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let o = Offsets::open(dir.path(), false).unwrap();
        for i in 0..2000 {
            o.commit("g", &[("t".into(), 0, c(i))]).unwrap();
        }
        o.delete_group("g").unwrap();
        o.commit("h", &[("t".into(), 0, c(1))]).unwrap();
        drop(o);
        let lines = std::fs::read_to_string(dir.path().join("offsets.jsonl")).unwrap().lines().count();
        assert!(lines < 1000, "{lines} lines");
        let o = Offsets::open(dir.path(), false).unwrap();
        assert_eq!((o.get("g", "t", 0), o.get("h", "t", 0).map(|c| c.offset)), (None, Some(1)));
    }
}
