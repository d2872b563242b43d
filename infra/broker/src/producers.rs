//! Producer state of one partition, rebuilt from the log's batch headers:
//! - the sequence checks Kafka makes before appending a batch (apache/kafka
//!   `ProducerAppendInfo`), and the last five batches of each producer, so a
//!   retried batch is answered with its original offset instead of being
//!   written twice;
//! - transactions: where each open one starts (the first one bounds the last
//!   stable offset) and the aborted ones a read_committed fetch must name.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::batch::{self, Header};
use crate::errors::Code;

/// Batches remembered per producer for duplicate detection (Kafka: 5, the
/// most a producer may have in flight with idempotence).
const RETAINED: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retained {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    epoch: i16,
    batches: VecDeque<Retained>,
    last_timestamp: i64,
}

/// An aborted transaction of one producer: its records lie between these
/// offsets (the last is its abort marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What DescribeProducers shows of one producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    /// Where its open transaction starts, or -1.
    pub txn_start_offset: i64,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Append it.
    Append,
    /// A retry of a batch already in the log at this base offset.
    Duplicate(i64),
    /// Refuse it with this error.
    Refuse(Code),
}

/// Producer state of one partition.
#[derive(Debug, Default, Clone)]
pub struct Producers {
    by_id: HashMap<i64, Entry>,
    /// Open transactions: producer id → offset of their first record here.
    open_txns: BTreeMap<i64, i64>,
    /// Aborted transactions, in the order of their markers.
    aborted: Vec<Aborted>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl Producers {
    /// Checks a batch's producer id, epoch and sequence.
    pub fn check(&self, h: &Header) -> Check {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Check::Append;
        }
        let Some(e) = self.by_id.get(&h.producer_id) else {
            // Unknown producer (new, or its state expired): any sequence.
            return Check::Append;
        };
        if h.producer_epoch < e.epoch {
            return Check::Refuse(Code::InvalidProducerEpoch);
        }
        if h.producer_epoch > e.epoch {
            // A bumped epoch starts its sequences again at 0.
            return if h.base_sequence == 0 { Check::Append } else { Check::Refuse(Code::OutOfOrderSequenceNumber) };
        }
        if let Some(r) = e.batches.iter().find(|r| r.first_seq == h.base_sequence && r.last_seq == h.last_sequence()) {
            return Check::Duplicate(r.base_offset);
        }
        match e.batches.back() {
            Some(last) if h.base_sequence != next_seq(last.last_seq) => Check::Refuse(Code::OutOfOrderSequenceNumber),
            _ => Check::Append,
        }
    }

    /// Records an appended batch (also used to rebuild the state from the
    /// log); `raw` is the batch, read for a transaction marker's type.
    pub fn record(&mut self, h: &Header, base_offset: i64, raw: &[u8]) {
        if h.producer_id < 0 {
            return;
        }
        if h.is_control() {
            // A marker ends the producer's transaction here; a newer epoch in
            // it (the coordinator fencing a producer) fences older batches.
            let e = self.by_id.entry(h.producer_id).or_default();
            if h.producer_epoch > e.epoch {
                e.epoch = h.producer_epoch;
                e.batches.clear();
            }
            if let Some(commit) = batch::control_commits(raw) {
                let first = self.open_txns.remove(&h.producer_id);
                if let (false, Some(first_offset)) = (commit, first) {
                    self.aborted.push(Aborted { producer_id: h.producer_id, first_offset, last_offset: base_offset });
                }
            }
            return;
        }
        if h.is_transactional() {
            self.open_txns.entry(h.producer_id).or_insert(base_offset);
        }
        if h.base_sequence < 0 {
            return;
        }
        let e = self.by_id.entry(h.producer_id).or_default();
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        if e.batches.len() == RETAINED {
            e.batches.pop_front();
        }
        e.batches.push_back(Retained { first_seq: h.base_sequence, last_seq: h.last_sequence(), base_offset });
        e.last_timestamp = h.max_timestamp;
    }

    /// The first offset of the oldest open transaction: the last stable
    /// offset, when there is one.
    pub fn first_unstable(&self) -> Option<i64> {
        self.open_txns.values().copied().min()
    }

    /// The aborted transactions with records between `from` and `to`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<Aborted> {
        let i = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[i..].iter().filter(|a| a.first_offset <= to).copied().collect()
    }

    /// Forgets aborted transactions wholly below the log start.
    pub fn forget_below(&mut self, log_start: i64) {
        let i = self.aborted.partition_point(|a| a.last_offset < log_start);
        self.aborted.drain(..i);
    }

    /// Every producer that wrote here, for DescribeProducers.
    pub fn describe(&self) -> Vec<ProducerInfo> {
        let mut v: Vec<ProducerInfo> = self
            .by_id
            .iter()
            .map(|(&producer_id, e)| ProducerInfo {
                producer_id,
                epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |r| r.last_seq),
                last_timestamp: e.last_timestamp,
                txn_start_offset: self.open_txns.get(&producer_id).copied().unwrap_or(-1),
            })
            .collect();
        v.sort_by_key(|p| p.producer_id);
        v
    }

    /// The base offset of each producer's last batch: compaction keeps
    /// that batch (empty if need be), so the producer's epoch and last
    /// sequence are rebuilt from the log after a restart (Kafka's cleaner
    /// does the same).
    pub fn last_batch_offsets(&self) -> HashSet<i64> {
        self.by_id.values().filter_map(|e| e.batches.back().map(|r| r.base_offset)).collect()
    }

    /// The highest producer id seen.
    pub fn max_id(&self) -> i64 {
        self.by_id.keys().copied().max().unwrap_or(-1)
    }

    /// The latest epoch of a producer, if it wrote here.
    pub fn epoch(&self, producer_id: i64) -> Option<i16> {
        self.by_id.get(&producer_id).map(|e| e.epoch)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::batch;

    fn header(pid: i64, epoch: i16, seq: i32, n: i32) -> Header {
        Header::parse(&batch(n, pid, epoch, seq, 0)).unwrap()
    }

    fn record(p: &mut Producers, h: &Header, base: i64) {
        p.record(h, base, &[]);
    }

    #[test]
    fn a_retried_batch_is_answered_with_its_original_offset() {
        let mut p = Producers::default();
        let h = header(1, 0, 0, 3);
        assert_eq!(p.check(&h), Check::Append);
        record(&mut p, &h, 100);
        assert_eq!(p.check(&h), Check::Duplicate(100));
        assert_eq!(p.check(&header(1, 0, 3, 2)), Check::Append);
    }

    #[test]
    fn a_gap_in_sequences_is_out_of_order() {
        let mut p = Producers::default();
        record(&mut p, &header(1, 0, 0, 3), 0);
        assert_eq!(p.check(&header(1, 0, 4, 1)), Check::Refuse(Code::OutOfOrderSequenceNumber));
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_must_start_at_zero() {
        let mut p = Producers::default();
        record(&mut p, &header(1, 2, 0, 1), 0);
        assert_eq!(p.check(&header(1, 1, 1, 1)), Check::Refuse(Code::InvalidProducerEpoch));
        assert_eq!(p.check(&header(1, 3, 5, 1)), Check::Refuse(Code::OutOfOrderSequenceNumber));
        assert_eq!(p.check(&header(1, 3, 0, 1)), Check::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut p = Producers::default();
        for i in 0..6 {
            record(&mut p, &header(1, 0, i, 1), i as i64);
        }
        assert_eq!(p.check(&header(1, 0, 5, 1)), Check::Duplicate(5));
        // The first batch fell out of the window: a retry of it is out of order.
        assert_eq!(p.check(&header(1, 0, 0, 1)), Check::Refuse(Code::OutOfOrderSequenceNumber));
    }

    #[test]
    fn an_unknown_producer_may_start_at_any_sequence() {
        assert_eq!(Producers::default().check(&header(9, 0, 17, 1)), Check::Append);
    }

    fn marker(p: &mut Producers, pid: i64, epoch: i16, commit: bool, offset: i64) {
        let b = batch::control_batch(pid, epoch, commit, 0, 0);
        p.record(&Header::parse(&b).unwrap(), offset, &b);
    }

    #[test]
    fn open_transactions_bound_the_stable_offset_and_aborted_ones_are_indexed() {
        let mut p = Producers::default();
        let t = |pid, seq, n| Header::parse(&batch::tests::txn_batch(n, pid, 0, seq)).unwrap();
        p.record(&t(1, 0, 2), 10, &[]);
        p.record(&t(2, 0, 1), 12, &[]);
        p.record(&t(1, 2, 1), 13, &[]);
        assert_eq!(p.first_unstable(), Some(10));
        marker(&mut p, 1, 0, false, 14);
        assert_eq!(p.first_unstable(), Some(12), "producer 2 is still open");
        marker(&mut p, 2, 0, true, 15);
        assert_eq!(p.first_unstable(), None);
        let a = Aborted { producer_id: 1, first_offset: 10, last_offset: 14 };
        assert_eq!(p.aborted_between(0, 100), vec![a]);
        assert_eq!(p.aborted_between(15, 100), vec![], "ends before the fetch");
        assert_eq!(p.aborted_between(0, 9), vec![], "starts after the fetched records");
        assert_eq!(p.describe()[0].last_sequence, 2, "a marker keeps the sequence");
    }

    #[test]
    fn a_marker_with_a_newer_epoch_fences_the_older_one() {
        let mut p = Producers::default();
        let t = Header::parse(&batch::tests::txn_batch(1, 1, 0, 0)).unwrap();
        p.record(&t, 0, &[]);
        marker(&mut p, 1, 1, false, 1);
        assert_eq!(
            p.check(&Header::parse(&batch::tests::txn_batch(1, 1, 0, 1)).unwrap()),
            Check::Refuse(Code::InvalidProducerEpoch)
        );
        assert_eq!(p.check(&Header::parse(&batch::tests::txn_batch(1, 1, 1, 0)).unwrap()), Check::Append);
    }
}
