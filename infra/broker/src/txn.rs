//! The transaction coordinator (KIP-98, KIP-447), as Kafka's
//! `TransactionCoordinator` behaves towards clients:
//!
//! - **InitProducerId** with a `transactional.id` gives it one producer id
//!   and bumps its epoch on every call; an open transaction of the previous
//!   epoch is aborted with a newer epoch, which fences the old producer on
//!   every partition it wrote to.
//! - **AddPartitionsToTxn / AddOffsetsToTxn** open the transaction and name
//!   what it touches; **TxnOffsetCommit** holds the group's offsets pending.
//! - **EndTxn** writes a commit or abort marker to every partition of the
//!   transaction and, on commit, makes the pending offsets the group's.
//! - Produced transactional batches are verified against the open
//!   transaction (Kafka's KIP-890 partition verification), so a fenced or
//!   finished producer cannot leave a transaction hanging in a partition.
//! - An open transaction is aborted after `transaction.timeout.ms`.
//!
//! State lives in a [`Table`] (`transactions.jsonl`), written before each
//! step is answered. The prepare step is written with the offsets to commit,
//! so a restart finishes a prepared transaction; an open one is aborted with
//! a bumped epoch (its producer must start again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::errors::Code;
use crate::offsets::Committed;
use crate::table::Table;
use crate::{now_ms, State};

/// Kafka's `transaction.max.timeout.ms` default.
pub const MAX_TIMEOUT_MS: i32 = 900_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl Phase {
    /// Kafka's name for the state (DescribeTransactions, logs).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::Ongoing => "Ongoing",
            Phase::PrepareCommit => "PrepareCommit",
            Phase::PrepareAbort => "PrepareAbort",
            Phase::CompleteCommit => "CompleteCommit",
            Phase::CompleteAbort => "CompleteAbort",
        }
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Txn {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub phase: Phase,
    /// Partitions the open transaction wrote to (or may write to).
    pub partitions: BTreeSet<(String, i32)>,
    /// Groups whose offsets it commits.
    pub groups: BTreeSet<String>,
    /// The pending offsets, by group: (topic, partition, offset).
    pub offsets: BTreeMap<String, Vec<(String, i32, Committed)>>,
    /// When it opened (ms since the epoch), for its timeout.
    pub started_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Key {
    id: String,
}

/// Every transactional id's state.
pub struct Transactions {
    table: Mutex<Table<Key, Txn>>,
    /// One lock per transactional id: a step (and a verified produce) runs
    /// whole under it.
    live: Mutex<HashMap<String, Arc<Mutex<Txn>>>>,
}

fn storage(e: std::io::Error) -> Code {
    tracing::error!(error = %e, "cannot write transaction state");
    Code::KafkaStorageError
}

impl Transactions {
    pub fn open(dir: &std::path::Path, fsync: bool) -> std::io::Result<Transactions> {
        let table: Table<Key, Txn> = Table::open(dir, "transactions.jsonl", fsync)?;
        let live = table.map().iter().map(|(k, t)| (k.id.clone(), Arc::new(Mutex::new(t.clone())))).collect();
        Ok(Transactions { table: Mutex::new(table), live: Mutex::new(live) })
    }

    fn get(&self, id: &str) -> Option<Arc<Mutex<Txn>>> {
        self.live.lock().unwrap().get(id).cloned()
    }

    fn ids(&self) -> Vec<String> {
        self.live.lock().unwrap().keys().cloned().collect()
    }

    fn save(&self, id: &str, t: &Txn) -> Result<(), Code> {
        self.table.lock().unwrap().write(vec![(Key { id: id.into() }, Some(t.clone()))]).map_err(storage)
    }

    /// The highest producer id any transactional id holds.
    pub fn max_producer_id(&self) -> i64 {
        self.table.lock().unwrap().map().values().map(|t| t.producer_id).max().unwrap_or(-1)
    }

    /// Whether a transaction holds offsets of this group's partition pending.
    pub fn pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        let all: Vec<_> = self.live.lock().unwrap().values().cloned().collect();
        all.iter().any(|t| {
            let t = lock(t);
            t.offsets.get(group).is_some_and(|o| o.iter().any(|(tp, p, _)| tp == topic && *p == partition))
        })
    }

    /// A regular commit of these partitions was made after any transactional
    /// one pending for them: the latest commit wins, as in Kafka, so the
    /// pending ones no longer apply at the transaction's commit.
    pub fn supersede(&self, group: &str, partitions: &[(String, i32)]) {
        let all: Vec<_> = self.live.lock().unwrap().values().cloned().collect();
        for t in all {
            let mut t = lock(&t);
            if let Some(pending) = t.offsets.get_mut(group) {
                pending.retain(|(tp, p, _)| !partitions.iter().any(|(t2, p2)| t2 == tp && p2 == p));
            }
        }
    }

    /// (transactional id, producer id, phase) of each, for ListTransactions
    /// and the metrics.
    pub fn list(&self) -> Vec<(String, i64, Phase)> {
        let all: Vec<_> = self.live.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut v: Vec<_> = all
            .into_iter()
            .map(|(id, t)| {
                let t = lock(&t);
                (id, t.producer_id, t.phase)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn lock(t: &Mutex<Txn>) -> MutexGuard<'_, Txn> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a request's producer id and epoch against the transactional id's.
fn check_producer(t: &Txn, producer_id: i64, epoch: i16) -> Result<(), Code> {
    if producer_id != t.producer_id {
        return Err(Code::InvalidProducerIdMapping);
    }
    if epoch != t.epoch {
        return Err(Code::ProducerFenced);
    }
    Ok(())
}

/// Writes the markers of `t`'s transaction (with `marker_epoch`) and, on
/// commit, its offsets; the prepare step is stored first so a restart can
/// finish it.
fn complete(st: &State, id: &str, t: &mut Txn, commit: bool, marker_epoch: i16) -> Result<(), Code> {
    t.phase = if commit { Phase::PrepareCommit } else { Phase::PrepareAbort };
    st.txns.save(id, t)?;
    for (topic, partition) in &t.partitions {
        // A partition deleted meanwhile needs no marker.
        if let Some(p) = st.topics.partition(topic, *partition) {
            p.append_marker(t.producer_id, marker_epoch, commit).map_err(storage)?;
        }
    }
    if commit {
        for (group, offsets) in &t.offsets {
            let commits: Vec<_> = offsets.iter().map(|(tp, p, c)| (tp.clone(), *p, Some(c.clone()))).collect();
            st.offsets.commit(group, &commits).map_err(storage)?;
        }
    }
    t.partitions.clear();
    t.groups.clear();
    t.offsets.clear();
    t.phase = if commit { Phase::CompleteCommit } else { Phase::CompleteAbort };
    st.txns.save(id, t)
}

/// Aborts an open transaction with a bumped epoch, fencing its producer.
fn fence_and_abort(st: &State, id: &str, t: &mut Txn, why: &str) -> Result<(), Code> {
    t.epoch += 1;
    let epoch = t.epoch;
    tracing::info!(transactional_id = id, producer_id = t.producer_id, epoch, why, "aborting an open transaction");
    complete(st, id, t, false, epoch)
}

/// Finishes a transaction whose prepare step was stored.
fn finish_prepared(st: &State, id: &str, t: &mut Txn) -> Result<(), Code> {
    let epoch = t.epoch;
    match t.phase {
        Phase::PrepareCommit => complete(st, id, t, true, epoch),
        Phase::PrepareAbort => complete(st, id, t, false, epoch),
        _ => Ok(()),
    }
}

/// InitProducerId with a transactional id: (producer id, epoch).
pub fn init_producer(st: &State, id: &str, timeout_ms: i32, producer_id: i64, epoch: i16) -> Result<(i64, i16), Code> {
    if timeout_ms <= 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(Code::InvalidTransactionTimeout);
    }
    let entry = {
        let mut live = st.txns.live.lock().unwrap();
        match live.get(id) {
            Some(e) => e.clone(),
            None => {
                let pid = st.producer_ids.next().map_err(storage)?;
                let t = Txn {
                    producer_id: pid,
                    epoch: 0,
                    timeout_ms,
                    phase: Phase::Empty,
                    partitions: BTreeSet::new(),
                    groups: BTreeSet::new(),
                    offsets: BTreeMap::new(),
                    started_ms: 0,
                };
                st.txns.save(id, &t)?;
                live.insert(id.into(), Arc::new(Mutex::new(t)));
                return Ok((pid, 0));
            }
        }
    };
    let mut t = lock(&entry);
    // KIP-360: a producer naming its id and epoch asks for a bump of exactly those.
    if producer_id >= 0 {
        check_producer(&t, producer_id, epoch)?;
    }
    if t.phase == Phase::Ongoing {
        fence_and_abort(st, id, &mut t, "a new producer with the same transactional.id")?;
    } else {
        finish_prepared(st, id, &mut t)?;
    }
    if t.epoch >= i16::MAX - 2 {
        t.producer_id = st.producer_ids.next().map_err(storage)?;
        t.epoch = 0;
    } else {
        t.epoch += 1;
    }
    t.timeout_ms = timeout_ms;
    st.txns.save(id, &t)?;
    Ok((t.producer_id, t.epoch))
}

/// Opens the transaction if needed and adds to it what `add` adds.
fn add(st: &State, id: &str, producer_id: i64, epoch: i16, add: impl FnOnce(&mut Txn)) -> Result<(), Code> {
    let entry = st.txns.get(id).ok_or(Code::InvalidProducerIdMapping)?;
    let mut t = lock(&entry);
    check_producer(&t, producer_id, epoch)?;
    match t.phase {
        Phase::PrepareCommit | Phase::PrepareAbort => return Err(Code::ConcurrentTransactions),
        Phase::Ongoing => {}
        Phase::Empty | Phase::CompleteCommit | Phase::CompleteAbort => {
            t.phase = Phase::Ongoing;
            t.started_ms = now_ms();
        }
    }
    add(&mut t);
    st.txns.save(id, &t)
}

/// AddPartitionsToTxn: every partition must exist.
pub fn add_partitions(
    st: &State,
    id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
) -> Result<(), Code> {
    if partitions.iter().any(|(t, p)| st.topics.partition(t, *p).is_none()) {
        return Err(Code::UnknownTopicOrPartition);
    }
    add(st, id, producer_id, epoch, |t| t.partitions.extend(partitions.iter().cloned()))
}

/// AddOffsetsToTxn.
pub fn add_offsets(st: &State, id: &str, producer_id: i64, epoch: i16, group: &str) -> Result<(), Code> {
    add(st, id, producer_id, epoch, |t| {
        t.groups.insert(group.into());
    })
}

/// TxnOffsetCommit: holds the offsets pending until the transaction ends.
pub fn commit_offsets(
    st: &State,
    id: &str,
    producer_id: i64,
    epoch: i16,
    group: &str,
    offsets: Vec<(String, i32, Committed)>,
) -> Result<(), Code> {
    let entry = st.txns.get(id).ok_or(Code::InvalidProducerIdMapping)?;
    let mut t = lock(&entry);
    check_producer(&t, producer_id, epoch)?;
    if t.phase != Phase::Ongoing || !t.groups.contains(group) {
        return Err(Code::InvalidTxnState);
    }
    let pending = t.offsets.entry(group.into()).or_default();
    for (topic, partition, c) in offsets {
        pending.retain(|(tp, p, _)| !(*tp == topic && *p == partition));
        pending.push((topic, partition, c));
    }
    Ok(())
}

/// EndTxn.
pub fn end(st: &State, id: &str, producer_id: i64, epoch: i16, commit: bool) -> Result<(), Code> {
    let entry = st.txns.get(id).ok_or(Code::InvalidProducerIdMapping)?;
    let mut t = lock(&entry);
    check_producer(&t, producer_id, epoch)?;
    match (t.phase, commit) {
        (Phase::Ongoing, _) | (Phase::PrepareCommit, true) | (Phase::PrepareAbort, false) => {
            complete(st, id, &mut t, commit, epoch)
        }
        // A retry of an end already done.
        (Phase::CompleteCommit, true) | (Phase::CompleteAbort, false) => Ok(()),
        _ => Err(Code::InvalidTxnState),
    }
}

/// Appends a transactional produce under its transaction's lock, after
/// checking that the producer is current and the partition is in its open
/// transaction (so no marker can land between the check and the append).
pub fn verified_append<R>(
    st: &State,
    id: Option<&str>,
    producer_id: i64,
    epoch: i16,
    partition: (&str, i32),
    append: impl FnOnce() -> Result<R, Code>,
) -> Result<R, Code> {
    let entry = id.and_then(|id| st.txns.get(id)).ok_or(Code::InvalidProducerIdMapping)?;
    let t = lock(&entry);
    if producer_id != t.producer_id {
        return Err(Code::InvalidProducerIdMapping);
    }
    if epoch < t.epoch {
        return Err(Code::InvalidProducerEpoch);
    }
    if epoch != t.epoch || t.phase != Phase::Ongoing || !t.partitions.contains(&(partition.0.into(), partition.1)) {
        return Err(Code::InvalidTxnState);
    }
    append()
}

/// Aborts open transactions past their timeout.
pub fn expire(st: &State) {
    let now = now_ms();
    for id in st.txns.ids() {
        let Some(entry) = st.txns.get(&id) else { continue };
        let mut t = lock(&entry);
        if t.phase == Phase::Ongoing && now - t.started_ms > t.timeout_ms as i64 {
            if let Err(e) = fence_and_abort(st, &id, &mut t, "transaction.timeout.ms passed") {
                tracing::error!(transactional_id = id, error = ?e, "cannot abort a timed-out transaction");
            }
        }
    }
}

/// After a restart: prepared transactions are finished, open ones aborted.
pub fn recover(st: &State) -> Result<(), Code> {
    for id in st.txns.ids() {
        let Some(entry) = st.txns.get(&id) else { continue };
        let mut t = lock(&entry);
        if t.phase == Phase::Ongoing {
            fence_and_abort(st, &id, &mut t, "the broker restarted")?;
        } else {
            finish_prepared(st, &id, &mut t)?;
        }
    }
    Ok(())
}
