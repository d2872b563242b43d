//! Deterministic scheduling of follow-up events (a cancellation some events
//! after its order, the steps of a contract's life): a min-heap keyed by the
//! sequence number at which an event becomes due, ties broken by insertion
//! order, so the same seed always yields the same interleaving.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Events waiting for their turn.
#[derive(Debug)]
pub struct Scheduler<T> {
    heap: BinaryHeap<Reverse<(u64, u64, Slot<T>)>>,
    inserted: u64,
}

/// Wrapper that makes the payload irrelevant to ordering.
#[derive(Debug)]
struct Slot<T>(T);

impl<T> PartialEq for Slot<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), inserted: 0 }
    }
}

impl<T> Scheduler<T> {
    /// Queues `item` to be emitted once `seq >= due`.
    pub fn at(&mut self, due: u64, item: T) {
        self.inserted += 1;
        self.heap.push(Reverse((due, self.inserted, Slot(item))));
    }

    /// The earliest item due at `seq`, if any.
    pub fn pop_due(&mut self, seq: u64) -> Option<T> {
        match self.heap.peek() {
            Some(Reverse((due, _, _))) if *due <= seq => self.heap.pop().map(|Reverse((_, _, Slot(t)))| t),
            _ => None,
        }
    }

    /// Items still waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_when_due_in_due_then_insertion_order() {
        let mut s = Scheduler::default();
        s.at(5, "b");
        s.at(3, "a");
        s.at(5, "c");
        assert_eq!(s.pop_due(2), None);
        assert_eq!(s.pop_due(3), Some("a"));
        assert_eq!(s.pop_due(4), None);
        assert_eq!(s.pop_due(9), Some("b"));
        assert_eq!(s.pop_due(9), Some("c"));
        assert!(s.is_empty());
    }
}
