//! Where a partition task keeps its keys' states: in memory, or in a local
//! store on disk (fjall) behind a bounded cache of hot keys, so that memory
//! stays bounded whatever the number of keys and a restart reads only the
//! changelog past what the store already holds.
//!
//! The changelog stays the source of truth. The disk store records, with
//! every write and in the same atomic batch, the [`Position`] it reflects:
//! the changelog batch, the record that proves the log is the one it was
//! written from, and where a restore continues. The runtime writes a batch's
//! states only once its changelog records are acknowledged (committed, in
//! exactly-once), so the store is never ahead of a log it belongs to.
//!
//! One [`StateDir`] per worker instance holds the stores of all its tasks
//! (one keyspace per partition) and a lock file: two instances never share
//! one. The runtime knows no engine: it sees [`Store`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::changelog::{Entry, Raw, Rebuild, Record, RestoreError, Resume};
use crate::task::KeyState;

/// Where a worker keeps its tasks' key states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A local store on disk per partition task (`--state-dir`), with a
    /// bounded cache of hot keys: memory stays bounded, restarts read only
    /// the changelog tail.
    Disk,
    /// Every key in memory, rebuilt from the changelog at every start
    /// (tests, small deployments).
    Memory,
}

/// The state store settings of a worker.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// The instance's state directory (disk stores).
    pub dir: PathBuf,
    /// Keys kept decoded in memory per task (disk stores).
    pub cache_keys: usize,
    /// The engine's block cache, shared by the instance's tasks.
    pub block_cache_bytes: u64,
}

/// Why a store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--state-dir {}: {what}: {source}", dir.display())]
    Io { dir: PathBuf, what: &'static str, source: std::io::Error },
    #[error(
        "--state-dir {} is in use by another worker instance ({holder}); give every instance its own --state-dir",
        dir.display()
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("local state store in {}: {why}", dir.display())]
    Engine { why: String, dir: PathBuf },
    #[error("local state store: the state of key '{key}' does not decode: {source}")]
    Decode { key: String, source: serde_json::Error },
}

impl From<StoreError> for RestoreError {
    fn from(e: StoreError) -> Self {
        RestoreError::Read(e.into())
    }
}

/// What a task's disk store reflects of its changelog partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The Kafka cluster, changelog topic and partition it was written from.
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    /// The writer's claim (its lineage) and that claim's base snapshot.
    pub lineage: Option<i64>,
    pub base: Option<i64>,
    /// The latest snapshot its writer pointed at.
    pub snapshot: Option<i64>,
    /// The last batch whose states it holds, and the task's checkpoint then.
    pub batch: u64,
    pub checkpoint: BTreeMap<String, i64>,
    /// A record of the writer's own at this offset proves the changelog is
    /// the one the store was written from (see [`Position::proves`]).
    pub at: i64,
    /// Where a restore continues: every record below it is reflected (the
    /// records of a batch whose outputs were not yet acknowledged are read
    /// again: applying a batch twice changes nothing, and its outbox is
    /// re-published unless marked).
    pub from: i64,
    /// No other owner's claim is in the changelog up to this offset, as its
    /// writer knows (see [`Resume::verified`]).
    pub verified: i64,
    /// Changelog bytes since that snapshot, and the snapshot's size.
    pub since_snapshot: u64,
    pub snapshot_bytes: u64,
    /// The worker's pending work over the keys (see `Worker::pending`).
    #[serde(default)]
    pub pending: i64,
    /// Keys in the store (kept by the store).
    #[serde(default)]
    pub keys: u64,
}

impl Position {
    /// Whether the store belongs to this changelog partition of this cluster.
    pub fn belongs_to(&self, cluster: &str, topic: &str, partition: i32) -> Result<(), String> {
        if (self.cluster.as_str(), self.topic.as_str(), self.partition) == (cluster, topic, partition) {
            return Ok(());
        }
        Err(format!(
            "the store was written from {}[{}] of cluster {}, not {topic}[{partition}] of cluster {cluster}",
            self.topic, self.partition, self.cluster
        ))
    }

    /// Whether the store fits a changelog partition holding `[low, high)`
    /// whose new claim is at `end`: not ahead of it, and its own record
    /// (see [`Position::proves`]) not trimmed away.
    pub fn within(&self, low: i64, high: i64, end: i64) -> Result<(), String> {
        if self.from > end || self.at >= high {
            return Err(format!(
                "it is ahead of the changelog (it continues at offset {}, the changelog ends at {high})",
                self.from
            ));
        }
        if self.at < low {
            return Err(format!("the changelog now starts at offset {low}, past its record {}", self.at));
        }
        Ok(())
    }

    /// Whether `record`, read at offset [`Position::at`], is the writer's own
    /// record it names: its claim, or a commit, marker or snapshot of its
    /// lineage no later than the store's batch. Anything else means the
    /// changelog is not the one the store was written from (a topic deleted
    /// and created again, another cluster under the same name).
    pub fn proves(&self, record: Option<&Record>) -> Result<(), String> {
        let Some(r) = record else {
            return Err(format!("the changelog has no record at offset {} (the store is ahead of it)", self.at));
        };
        let batch = match &r.entry {
            Entry::Claim { .. } if Some(r.offset) == self.lineage => return Ok(()),
            Entry::Commit { batch, .. } | Entry::Published { batch } | Entry::Snapshot { batch, .. } => Some(*batch),
            _ => None,
        };
        match batch {
            Some(b) if r.offset == self.at && r.lineage == self.lineage && b <= self.batch => Ok(()),
            _ => Err(format!(
                "the changelog record at offset {} is a {} of lineage {:?}, not the store's own (lineage {:?}, batch {})",
                r.offset,
                r.entry.kind(),
                r.lineage,
                self.lineage,
                self.batch
            )),
        }
    }

    /// Where a restore continuing the store starts.
    pub fn resume(&self) -> Resume {
        let mut origins = vec![self.base];
        if self.snapshot != self.base {
            origins.push(self.snapshot);
        }
        Resume {
            from: self.from,
            at: self.at,
            verified: self.verified,
            lineage: self.lineage,
            last_batch: self.batch,
            checkpoint: self.checkpoint.clone(),
            origins,
        }
    }
}

/// A worker instance's state directory: the disk stores of its tasks, and
/// the lock that keeps other instances out.
pub struct StateDir {
    path: PathBuf,
    db: fjall::Database,
    meta: fjall::Keyspace,
    /// Held (locked) while the instance runs.
    _lock: std::fs::File,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir").field("path", &self.path).finish()
    }
}

/// The lock file in a state directory; it names its holder.
const LOCK_FILE: &str = "keyflow.lock";

/// The most journal the store keeps (and a start after a crash replays).
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

impl StateDir {
    /// Opens (creating) `path` and locks it for this instance; refuses a
    /// directory another running instance holds.
    pub fn open(path: &Path, block_cache_bytes: u64) -> Result<Arc<Self>, StoreError> {
        let io = |what: &'static str| move |source| StoreError::Io { dir: path.to_path_buf(), what, source };
        std::fs::create_dir_all(path).map_err(io("cannot create it"))?;
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE))
            .map_err(io("cannot open its lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "a process".to_string() } else { holder.to_string() };
                return Err(StoreError::Locked { dir: path.to_path_buf(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("cannot lock it")(e)),
        }
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        lock.set_len(0).map_err(io("cannot write its lock file"))?;
        lock.rewind().map_err(io("cannot write its lock file"))?;
        writeln!(lock, "pid {} on {}", std::process::id(), host.trim()).map_err(io("cannot write its lock file"))?;
        let engine = |e: fjall::Error| StoreError::Engine { why: e.to_string(), dir: path.to_path_buf() };
        // The journal is replayed at every start after a crash, up to its
        // whole size: fjall keeps up to 512 MiB by default (the `meta`
        // keyspace's memtable, written a little at every persist, never fills
        // and holds every journal file), and replaying that took seconds.
        // 64 MiB (fjall's minimum) forces the flushes earlier.
        let open = || {
            fjall::Database::builder(path.join("db"))
                .cache_size(block_cache_bytes)
                .max_journaling_size(JOURNAL_BYTES)
                .open()
        };
        let db = match open() {
            Ok(db) => db,
            Err(e) => {
                // A store that does not open (damaged files) is set aside and
                // every task is rebuilt from the changelog, its source of truth.
                let aside = path.join("db.damaged");
                tracing::warn!(dir = %path.display(), error = %e, aside = %aside.display(), "the local state store does not open; setting it aside and rebuilding every task from the changelog");
                let _ = std::fs::remove_dir_all(&aside);
                std::fs::rename(path.join("db"), &aside).map_err(io("cannot set a damaged store aside"))?;
                open().map_err(engine)?
            }
        };
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).map_err(engine)?;
        Ok(Arc::new(StateDir { path: path.to_path_buf(), db, meta, _lock: lock }))
    }

    /// The disk store of partition `p`'s task (empty, without a position, the first time).
    pub fn task<S>(self: &Arc<Self>, p: i32, cache_keys: usize) -> Result<Store<S>, StoreError> {
        let keys = self
            .db
            .keyspace(&format!("task-{p}"), || {
                // Memtables of 16 MiB: a worker may hold many tasks, and
                // larger ones flush (and compact) less often (8 MiB: disk ÷
                // memory throughput 0.77; 16 MiB: see BENCHMARKS.md).
                fjall::KeyspaceCreateOptions::default().max_memtable_size(16 * 1024 * 1024)
            })
            .map_err(|e| self.engine(e))?;
        let meta_key = format!("task-{p}");
        let position: Option<Position> = match self.meta.get(&meta_key).map_err(|e| self.engine(e))? {
            // A position that does not decode is no position: the store is rebuilt.
            Some(v) => serde_json::from_slice(&v).ok(),
            None => None,
        };
        let len = position.as_ref().map_or(0, |p| p.keys);
        Ok(Store {
            kind: Kind::Disk(Box::new(Disk {
                dir: self.clone(),
                keys,
                meta_key,
                position,
                len,
                cache: HashMap::new(),
                cache_keys: cache_keys.max(1),
                tick: 0,
                dirty: BTreeSet::new(),
                absent: BTreeSet::new(),
                rebuilt: HashMap::new(),
                cleared: false,
                unseen: BTreeSet::new(),
                hits: 0,
                misses: 0,
                persisted_at: std::time::Instant::now(),
            })),
        })
    }

    /// Bytes on disk (every task's store, the journal included).
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn engine(&self, e: fjall::Error) -> StoreError {
        StoreError::Engine { why: e.to_string(), dir: self.path.clone() }
    }
}

/// A partition task's key states.
pub struct Store<S> {
    kind: Kind<S>,
}

enum Kind<S> {
    Memory(HashMap<String, KeyState<S>>),
    Disk(Box<Disk<S>>),
}

/// A disk store: the keyspace, and the cache of hot keys in front of it.
struct Disk<S> {
    dir: Arc<StateDir>,
    keys: fjall::Keyspace,
    meta_key: String,
    position: Option<Position>,
    len: u64,
    cache: HashMap<String, Cached<S>>,
    cache_keys: usize,
    tick: u64,
    /// Cached keys changed since the last [`Store::persist`].
    dirty: BTreeSet<String>,
    /// Cached keys that are not on disk.
    absent: BTreeSet<String>,
    /// States set by a restore, encoded, not yet written.
    rebuilt: HashMap<String, Vec<u8>>,
    /// Emptied by a restore that has not finished: the keys of the snapshot
    /// it loads are new (see [`Rebuild::put`]).
    cleared: bool,
    /// Keys a restore read and found on no disk, until it puts them: new.
    unseen: BTreeSet<String>,
    hits: u64,
    misses: u64,
    /// When [`Store::persist`] last wrote.
    persisted_at: std::time::Instant,
}

struct Cached<S> {
    state: KeyState<S>,
    used: u64,
}

impl<S> Default for Store<S> {
    fn default() -> Self {
        Store::memory()
    }
}

/// A restore writes its states in batches of this many keys.
const REBUILD_BATCH_KEYS: usize = 8192;

impl<S> Store<S> {
    /// An empty in-memory store.
    pub fn memory() -> Self {
        Store { kind: Kind::Memory(HashMap::new()) }
    }

    /// Whether it survives a restart (it has a [`Position`]).
    pub fn is_disk(&self) -> bool {
        matches!(self.kind, Kind::Disk(_))
    }

    /// Keys held.
    pub fn len(&self) -> u64 {
        match &self.kind {
            Kind::Memory(m) => m.len() as u64,
            Kind::Disk(d) => d.len + d.fresh().count() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the disk store reflects of the changelog (none: rebuild it).
    pub fn position(&self) -> Option<&Position> {
        match &self.kind {
            Kind::Memory(_) => None,
            Kind::Disk(d) => d.position.as_ref(),
        }
    }

    /// Forgets the disk store's position: its next start rebuilds it (a
    /// store that failed to read).
    pub fn forget_position(&mut self) {
        if let Kind::Disk(d) = &mut self.kind {
            d.position = None;
            if let Err(e) = d.dir.meta.remove(d.meta_key.as_str()) {
                tracing::warn!(error = %e, "could not mark the local store for a rebuild");
            }
        }
    }

    /// Cache lookups since the last call: (hits, misses).
    pub fn take_lookups(&mut self) -> (u64, u64) {
        match &mut self.kind {
            Kind::Memory(_) => (0, 0),
            Kind::Disk(d) => (std::mem::take(&mut d.hits), std::mem::take(&mut d.misses)),
        }
    }
}

impl<S: Serialize + DeserializeOwned + Default> Store<S> {
    /// Takes the states of `keys` out of the store for a batch (the default
    /// state for a key it does not hold); [`Store::checkin`] puts them back.
    pub fn checkout<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<HashMap<String, KeyState<S>>, StoreError> {
        let mut out = HashMap::new();
        match &mut self.kind {
            Kind::Memory(m) => {
                for k in keys {
                    if !out.contains_key(k) {
                        out.insert(k.to_string(), m.remove(k).unwrap_or_default());
                    }
                }
            }
            Kind::Disk(d) => {
                for k in keys {
                    if out.contains_key(k) {
                        continue;
                    }
                    let state = match d.cache.remove(k) {
                        Some(c) => {
                            d.hits += 1;
                            c.state
                        }
                        None => {
                            d.misses += 1;
                            match d.read(k)? {
                                Some(s) => s,
                                None => {
                                    d.absent.insert(k.to_string());
                                    KeyState::default()
                                }
                            }
                        }
                    };
                    out.insert(k.to_string(), state);
                }
            }
        }
        Ok(out)
    }

    /// Puts a batch's states back; `changed` ones are written by the next
    /// [`Store::persist`] (or dropped by [`Store::discard`]).
    pub fn checkin<'k>(&mut self, states: HashMap<String, KeyState<S>>, changed: impl IntoIterator<Item = &'k String>) {
        match &mut self.kind {
            Kind::Memory(m) => m.extend(states),
            Kind::Disk(d) => {
                d.dirty.extend(changed.into_iter().cloned());
                for (k, state) in states {
                    d.tick += 1;
                    d.cache.insert(k, Cached { state, used: d.tick });
                }
                d.evict();
            }
        }
    }

    /// Whether the changes since the last [`Store::persist`] should be
    /// written now: `interval` after it, or once the changed keys fill half
    /// the cache (they stay cached until written). Never for the memory store.
    pub fn persist_due(&self, interval: std::time::Duration) -> bool {
        match &self.kind {
            Kind::Memory(_) => false,
            Kind::Disk(d) => d.persisted_at.elapsed() >= interval || d.dirty.len() >= d.cache_keys / 2,
        }
    }

    /// Writes the changed states and `position` in one atomic batch (disk
    /// stores; the memory store has nothing to write).
    pub fn persist(&mut self, position: Position) -> Result<(), StoreError> {
        let Kind::Disk(d) = &mut self.kind else { return Ok(()) };
        let mut batch = d.dir.db.batch();
        for k in &d.dirty {
            let Some(c) = d.cache.get(k) else { continue };
            let value = serde_json::to_vec(&c.state).map_err(|source| StoreError::Decode { key: k.clone(), source })?;
            batch.insert(&d.keys, k.as_str(), value);
        }
        let added = d.fresh().count() as u64;
        let added_rebuilt = d.rebuilt.len() as u64;
        for (k, v) in d.rebuilt.drain() {
            batch.insert(&d.keys, k, v);
        }
        let position = Position { keys: d.len + added + added_rebuilt, ..position };
        d.cleared = false;
        d.unseen.clear();
        let meta = serde_json::to_vec(&position).expect("a position encodes");
        batch.insert(&d.dir.meta, d.meta_key.as_str(), meta);
        batch.commit().map_err(|e| d.dir.engine(e))?;
        d.len = position.keys;
        for k in std::mem::take(&mut d.dirty) {
            d.absent.remove(&k);
        }
        d.position = Some(position);
        d.persisted_at = std::time::Instant::now();
        d.evict();
        Ok(())
    }

    /// Forgets the changes not yet persisted (an aborted transaction): the
    /// cache drops those keys, which are read from disk again.
    pub fn discard(&mut self) {
        if let Kind::Disk(d) = &mut self.kind {
            for k in std::mem::take(&mut d.dirty) {
                d.cache.remove(&k);
                d.absent.remove(&k);
            }
            d.rebuilt.clear();
            d.unseen.clear();
        }
    }

    /// Each key's size in a snapshot part, in the order of [`Store::entries`].
    pub fn sizes(&self) -> Result<Vec<usize>, StoreError> {
        let mut sizes = Vec::with_capacity(self.len() as usize);
        for e in self.entries() {
            let (key, json) = e?;
            sizes.push(crate::changelog::state_len(&key, json.len()));
        }
        Ok(sizes)
    }

    /// Every key with its state's JSON, in a stable order (disk states as
    /// stored, changes not yet persisted in their place).
    pub fn entries(&self) -> Box<dyn Iterator<Item = Result<(String, Raw), StoreError>> + '_> {
        fn encode<S: Serialize>(k: &str, s: &KeyState<S>) -> Result<(String, Raw), StoreError> {
            Raw::of(s)
                .map(|raw| (k.to_string(), raw))
                .map_err(|source| StoreError::Decode { key: k.to_string(), source })
        }
        match &self.kind {
            Kind::Memory(m) => Box::new(m.iter().map(|(k, s)| encode(k, s))),
            Kind::Disk(d) => {
                let stored = d.keys.iter().map(move |item| {
                    let (k, v) = item.into_inner().map_err(|e| d.dir.engine(e))?;
                    let key = String::from_utf8_lossy(&k).into_owned();
                    if let Some(c) = d.dirty.contains(&key).then(|| d.cache.get(&key)).flatten() {
                        return encode(&key, &c.state);
                    }
                    let text = String::from_utf8(v.to_vec()).unwrap_or_default();
                    let raw = Raw::from_json(text).map_err(|source| StoreError::Decode { key: key.clone(), source })?;
                    Ok((key, raw))
                });
                let fresh = d.fresh().filter_map(|k| d.cache.get(k).map(|c| encode(k, &c.state)));
                Box::new(stored.chain(fresh))
            }
        }
    }
}

impl<S> Disk<S> {
    /// Changed keys not yet on disk: new since the last [`Store::persist`].
    fn fresh(&self) -> impl Iterator<Item = &String> {
        self.absent.iter().filter(|k| self.dirty.contains(*k))
    }
}

impl<S: DeserializeOwned> Disk<S> {
    fn read(&self, key: &str) -> Result<Option<KeyState<S>>, StoreError> {
        let bytes = match self.rebuilt.get(key) {
            Some(v) => v.clone(),
            None => match self.keys.get(key).map_err(|e| self.dir.engine(e))? {
                Some(v) => v.to_vec(),
                None => return Ok(None),
            },
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| StoreError::Decode { key: key.to_string(), source })
    }

    /// Drops the least recently used clean keys once the cache is full (down
    /// to nine tenths of its size, so eviction runs once per many batches).
    fn evict(&mut self) {
        if self.cache.len() <= self.cache_keys {
            return;
        }
        let keep = self.cache_keys * 9 / 10;
        let mut clean: Vec<(u64, &String)> =
            self.cache.iter().filter(|(k, _)| !self.dirty.contains(*k)).map(|(k, c)| (c.used, k)).collect();
        let drop_n = self.cache.len().saturating_sub(keep).min(clean.len());
        if drop_n == 0 {
            return;
        }
        clean.select_nth_unstable(drop_n - 1);
        let gone: Vec<String> = clean[..drop_n].iter().map(|(_, k)| (*k).clone()).collect();
        for k in gone {
            self.cache.remove(&k);
            self.absent.remove(&k);
        }
    }
}

impl<S: Serialize + DeserializeOwned + Default> Rebuild<S> for Store<S> {
    fn put(&mut self, key: String, state: KeyState<S>, json: Option<&Raw>) -> Result<(), RestoreError> {
        let d = match &mut self.kind {
            Kind::Memory(m) => return m.put(key, state, json),
            Kind::Disk(d) => d,
        };
        let bytes = match json {
            Some(raw) => raw.text().as_bytes().to_vec(),
            None => serde_json::to_vec(&state).map_err(|source| StoreError::Decode { key: key.clone(), source })?,
        };
        // A key counts once (a lookup on disk only when it may be there).
        let new = (json.is_some() && d.cleared) || d.unseen.remove(&key);
        if !new && !d.rebuilt.contains_key(&key) && d.keys.contains_key(&key).map_err(|e| d.dir.engine(e))? {
            // Replaced on disk: counted once already.
            d.len = d.len.saturating_sub(1);
        }
        d.rebuilt.insert(key, bytes);
        if d.rebuilt.len() >= REBUILD_BATCH_KEYS {
            let mut batch = d.dir.db.batch();
            d.len += d.rebuilt.len() as u64;
            for (k, v) in d.rebuilt.drain() {
                batch.insert(&d.keys, k, v);
            }
            batch.commit().map_err(|e| d.dir.engine(e))?;
        }
        Ok(())
    }

    fn get(&mut self, key: &str) -> Result<KeyState<S>, RestoreError> {
        match &mut self.kind {
            Kind::Memory(m) => Rebuild::get(m, key),
            Kind::Disk(d) => match d.read(key)? {
                Some(state) => Ok(state),
                None => {
                    d.unseen.insert(key.to_string());
                    Ok(KeyState::default())
                }
            },
        }
    }

    /// Empties the store and forgets its position, first (a crash while it
    /// is rebuilt leaves a store without one: rebuilt again).
    fn clear(&mut self) -> Result<(), RestoreError> {
        let d = match &mut self.kind {
            Kind::Memory(m) => return Rebuild::clear(m),
            Kind::Disk(d) => d,
        };
        d.dir.meta.remove(d.meta_key.as_str()).map_err(|e| d.dir.engine(e))?;
        d.position = None;
        d.keys.clear().map_err(|e| d.dir.engine(e))?;
        d.len = 0;
        d.cache.clear();
        d.dirty.clear();
        d.absent.clear();
        d.rebuilt.clear();
        d.cleared = true;
        d.unseen.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
