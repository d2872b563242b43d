//! Committed group offsets, persisted as an append-only file of JSON lines
//! (`offsets.jsonl`): one line per committed partition, written before the
//! commit is answered. Replayed on start (a torn last line is skipped) and
//! rewritten compactly, atomically, once it holds four times more lines than
//! live offsets.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    g: String,
    t: String,
    p: i32,
    /// `None`: the group's offsets for this partition were deleted.
    c: Option<Committed>,
}

type Key = (String, String, i32);

struct Inner {
    file: File,
    lines: usize,
    map: BTreeMap<Key, Committed>,
}

/// The offsets of every group.
pub struct Offsets {
    path: PathBuf,
    fsync: bool,
    inner: Mutex<Inner>,
}

impl Offsets {
    pub fn open(dir: &Path, fsync: bool) -> std::io::Result<Offsets> {
        let path = dir.join("offsets.jsonl");
        let mut map = BTreeMap::new();
        let mut lines = 0;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(l) = serde_json::from_str::<Line>(&line) else {
                    tracing::warn!(file = %path.display(), "skipped a torn line of committed offsets");
                    continue;
                };
                lines += 1;
                match l.c {
                    Some(c) => map.insert((l.g, l.t, l.p), c),
                    None => map.remove(&(l.g, l.t, l.p)),
                };
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let offsets = Offsets { path, fsync, inner: Mutex::new(Inner { file, lines, map }) };
        offsets.compact_if_needed(&mut offsets.inner.lock().unwrap())?;
        Ok(offsets)
    }

    /// Stores commits of one group (or deletes them, `None`).
    pub fn commit(&self, group: &str, commits: &[(String, i32, Option<Committed>)]) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        let mut buf = Vec::new();
        for (t, p, c) in commits {
            let line = Line { g: group.into(), t: t.clone(), p: *p, c: c.clone() };
            serde_json::to_writer(&mut buf, &line)?;
            buf.push(b'\n');
        }
        inner.file.write_all(&buf)?;
        if self.fsync {
            inner.file.sync_data()?;
        }
        inner.lines += commits.len();
        for (t, p, c) in commits {
            let key = (group.to_string(), t.clone(), *p);
            match c {
                Some(c) => inner.map.insert(key, c.clone()),
                None => inner.map.remove(&key),
            };
        }
        self.compact_if_needed(&mut inner)
    }

    fn compact_if_needed(&self, inner: &mut Inner) -> std::io::Result<()> {
        if inner.lines < 1000 || inner.lines < 4 * inner.map.len() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for ((g, t, p), c) in &inner.map {
            let line = Line { g: g.clone(), t: t.clone(), p: *p, c: Some(c.clone()) };
            serde_json::to_writer(&mut buf, &line)?;
            buf.push(b'\n');
        }
        crate::log::write_atomically(&self.path, &buf)?;
        inner.file = OpenOptions::new().append(true).open(&self.path)?;
        inner.lines = inner.map.len();
        Ok(())
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.inner.lock().unwrap().map.get(&(group.into(), topic.into(), partition)).cloned()
    }

    /// Every committed offset of a group: (topic, partition, offset).
    pub fn of_group(&self, group: &str) -> Vec<(String, i32, Committed)> {
        let inner = self.inner.lock().unwrap();
        inner
            .map
            .range((group.to_string(), String::new(), i32::MIN)..)
            .take_while(|((g, _, _), _)| g == group)
            .map(|((_, t, p), c)| (t.clone(), *p, c.clone()))
            .collect()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        let mut gs: Vec<String> = inner.map.keys().map(|(g, _, _)| g.clone()).collect();
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
        let keys: Vec<Key> = self.inner.lock().unwrap().map.keys().filter(|(_, t, _)| t == topic).cloned().collect();
        for (g, t, p) in keys {
            self.commit(&g, &[(t, p, None)])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
