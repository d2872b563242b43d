//! Idempotent-producer state of one partition: the sequence checks Kafka
//! makes before appending a batch (apache/kafka `ProducerAppendInfo`), and
//! the last five batches of each producer, so a retried batch is answered
//! with its original offset instead of being written twice.

use std::collections::{HashMap, VecDeque};

use crate::batch::Header;
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

    /// Records an appended batch (also used to rebuild the state from the log).
    pub fn record(&mut self, h: &Header, base_offset: i64) {
        if h.producer_id < 0 || h.base_sequence < 0 || h.is_control() {
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

    #[test]
    fn a_retried_batch_is_answered_with_its_original_offset() {
        let mut p = Producers::default();
        let h = header(1, 0, 0, 3);
        assert_eq!(p.check(&h), Check::Append);
        p.record(&h, 100);
        assert_eq!(p.check(&h), Check::Duplicate(100));
        assert_eq!(p.check(&header(1, 0, 3, 2)), Check::Append);
    }

    #[test]
    fn a_gap_in_sequences_is_out_of_order() {
        let mut p = Producers::default();
        p.record(&header(1, 0, 0, 3), 0);
        assert_eq!(p.check(&header(1, 0, 4, 1)), Check::Refuse(Code::OutOfOrderSequenceNumber));
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_must_start_at_zero() {
        let mut p = Producers::default();
        p.record(&header(1, 2, 0, 1), 0);
        assert_eq!(p.check(&header(1, 1, 1, 1)), Check::Refuse(Code::InvalidProducerEpoch));
        assert_eq!(p.check(&header(1, 3, 5, 1)), Check::Refuse(Code::OutOfOrderSequenceNumber));
        assert_eq!(p.check(&header(1, 3, 0, 1)), Check::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut p = Producers::default();
        for i in 0..6 {
            p.record(&header(1, 0, i, 1), i as i64);
        }
        assert_eq!(p.check(&header(1, 0, 5, 1)), Check::Duplicate(5));
        // The first batch fell out of the window: a retry of it is out of order.
        assert_eq!(p.check(&header(1, 0, 0, 1)), Check::Refuse(Code::OutOfOrderSequenceNumber));
    }

    #[test]
    fn an_unknown_producer_may_start_at_any_sequence() {
        assert_eq!(Producers::default().check(&header(9, 0, 17, 1)), Check::Append);
    }
}
