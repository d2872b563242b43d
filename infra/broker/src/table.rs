//! A small persistent key → value table: an append-only file of JSON lines,
//! one per change (`{<key fields>, "c": value}`, `"c": null` deletes), written
//! before the change is answered. Replayed on open (a torn last line is
//! skipped) and rewritten compactly, atomically, once it holds four times
//! more lines than live keys. Committed offsets and transaction state live
//! in tables.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Line<K, V> {
    #[serde(flatten)]
    k: K,
    c: Option<V>,
}

/// A table; callers hold it behind their own lock.
pub struct Table<K, V> {
    path: PathBuf,
    fsync: bool,
    file: File,
    lines: usize,
    map: BTreeMap<K, V>,
}

impl<K, V> Table<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned,
    V: Clone + Serialize + DeserializeOwned,
{
    /// Opens (creating) `dir/name` and replays it.
    pub fn open(dir: &Path, name: &str, fsync: bool) -> std::io::Result<Table<K, V>> {
        let path = dir.join(name);
        let mut map = BTreeMap::new();
        let mut lines = 0;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(l) = serde_json::from_str::<Line<K, V>>(&line) else {
                    tracing::warn!(file = %path.display(), "skipped a torn line");
                    continue;
                };
                lines += 1;
                match l.c {
                    Some(v) => map.insert(l.k, v),
                    None => map.remove(&l.k),
                };
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut t = Table { path, fsync, file, lines, map };
        t.compact_if_needed()?;
        Ok(t)
    }

    /// Writes changes (`None` deletes), then applies them.
    pub fn write(&mut self, changes: Vec<(K, Option<V>)>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for (k, c) in &changes {
            serde_json::to_writer(&mut buf, &Line { k, c: c.as_ref() })?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.lines += changes.len();
        for (k, c) in changes {
            match c {
                Some(v) => self.map.insert(k, v),
                None => self.map.remove(&k),
            };
        }
        self.compact_if_needed()
    }

    fn compact_if_needed(&mut self) -> std::io::Result<()> {
        if self.lines < 1000 || self.lines < 4 * self.map.len() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (k, v) in &self.map {
            serde_json::to_writer(&mut buf, &Line { k, c: Some(v) })?;
            buf.push(b'\n');
        }
        crate::log::write_atomically(&self.path, &buf)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.map.len();
        Ok(())
    }

    pub fn map(&self) -> &BTreeMap<K, V> {
        &self.map
    }
}
