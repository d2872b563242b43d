//! Log compaction (`cleanup.policy` with `compact`), after Apache Kafka's log
//! cleaner: closed segments keep only the latest record of each key.
//!
//! - **Latest.** The latest record of a key is the one with the highest
//!   offset below the last stable offset anywhere in the log, the active
//!   segment included; records of aborted transactions and control records
//!   never count. Keys are compared as bytes.
//! - **What goes**, in closed segments only and below the last stable offset
//!   (data of open transactions is left alone): records older than their
//!   key's latest, records of aborted transactions, records without a key (a
//!   compacted topic refuses them at produce; these predate the policy), and
//!   tombstones (latest, null value) once their batch's max timestamp is older
//!   than `delete.retention.ms`. A batch whose max timestamp is within
//!   `min.compaction.lag.ms` of now is not touched.
//! - **What stays as it is**: control batches (transaction markers; Kafka
//!   removes them once their transaction's data is gone, we keep them), and
//!   every batch nothing is removed from, byte for byte.
//! - **Offsets never change.** A batch losing records is rewritten with the
//!   same base offset, last offset delta, base timestamp, producer id, epoch,
//!   base sequence and codec ([`batch::retain`], as Kafka's
//!   `buildRetainedRecordsInto`), so the producer's last sequence, the next
//!   offset and recovery's offset checks read the same. A batch losing every
//!   record disappears, unless it is its producer's last batch: that one stays
//!   empty so a restart rebuilds the producer's epoch and sequence (Kafka's
//!   `RETAIN_EMPTY`). Fetches at removed offsets get the next batch.
//! - **Crash safety.** A segment is rewritten into `<segment>.log.cleaned`,
//!   synced, and renamed over the segment ([`PartitionLog::replace_segment`]);
//!   open removes a leftover `.cleaned` file. A segment left with no batch is
//!   removed (the first one stays, empty: it anchors the log start).
//! - **Locking.** The work runs outside the partition lock on the segment
//!   files (closed ones never change); the lock is taken to snapshot the
//!   segments and to swap each cleaned one in. Readers holding the old file
//!   keep reading it.
//!
//! Differences from Kafka, accepted for a development broker: tombstones age
//! by their batch's timestamp, not from the first cleaning of their segment
//! (Kafka's delete horizon); markers are never removed; segments are not
//! merged; every pass reads the whole log (no dirty ratio or cleaner
//! checkpoint: a pass is skipped only when nothing was appended since a pass
//! that left nothing for later).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::batch::{self, Header, RawRecord};
use crate::log::{CompactionView, Entry, PartitionLog, SegmentView, CLEANED_SUFFIX};

/// A topic's compaction configs, and the time of the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub now_ms: i64,
    /// `min.compaction.lag.ms`.
    pub min_lag_ms: i64,
    /// `delete.retention.ms` (negative: tombstones stay).
    pub delete_retention_ms: i64,
}

impl Settings {
    /// The same configs (the time aside).
    pub(crate) fn same_rules(&self, o: &Settings) -> bool {
        self.min_lag_ms == o.min_lag_ms && self.delete_retention_ms == o.delete_retention_ms
    }

    fn too_recent(&self, max_ts: i64) -> bool {
        self.min_lag_ms > 0 && max_ts > self.now_ms.saturating_sub(self.min_lag_ms)
    }

    fn tombstone_expired(&self, max_ts: i64) -> bool {
        self.delete_retention_ms >= 0 && max_ts < self.now_ms.saturating_sub(self.delete_retention_ms)
    }
}

/// What one pass over a partition did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Segments rewritten or removed.
    pub segments: usize,
    pub records_removed: u64,
    pub batches_removed: u64,
    /// The partition's bytes on disk before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

fn lock(log: &Mutex<PartitionLog>) -> MutexGuard<'_, PartitionLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compacts the closed segments of one partition's log.
pub fn compact(log: &Mutex<PartitionLog>, s: Settings) -> io::Result<Stats> {
    let Some(view) = lock(log).compaction_view(s) else {
        return Ok(Stats::default());
    };
    let before: u64 = view.segments.iter().map(|s| s.size).sum();
    let mut stats = Stats { bytes_before: before, bytes_after: before, ..Stats::default() };
    let ctx = Ctx::new(&view, s)?;
    // Something kept now that time alone will make removable.
    let mut pending = false;
    let mut complete = true;
    for seg in &view.segments[..view.segments.len().saturating_sub(1)] {
        // A first look without building anything: most segments, once
        // cleaned, have nothing more to lose.
        let mut changes = false;
        for e in &seg.batches {
            changes |= ctx.clean(&seg.read(e)?, &mut pending, false).outcome != Outcome::Keep;
        }
        if !changes {
            continue;
        }
        let (tmp, file, batches, removed) = match ctx.rewrite(seg) {
            Ok(r) => r,
            Err((tmp, e)) => {
                let _ = fs::remove_file(tmp);
                return Err(e);
            }
        };
        let after = batches.last().map_or(0, |e| e.pos + e.len as u64);
        let dropped = (seg.batches.len() - batches.len()) as u64;
        if lock(log).replace_segment(seg.base, &seg.file, &tmp, file, batches)? {
            stats.segments += 1;
            stats.records_removed += removed;
            stats.batches_removed += dropped;
            stats.bytes_after = stats.bytes_after + after - seg.size;
        } else {
            complete = false;
        }
    }
    if complete && !pending {
        lock(log).mark_clean(view.end, s);
    }
    Ok(stats)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// As it is.
    Keep,
    /// Gone.
    Drop,
    /// With fewer records (built only when asked).
    Rewrite(Option<Vec<u8>>),
}

struct Cleaned {
    outcome: Outcome,
    records_removed: u64,
}

const KEEP: Cleaned = Cleaned { outcome: Outcome::Keep, records_removed: 0 };

/// What a pass decides from: the view and the latest offset of every key.
struct Ctx<'a> {
    view: &'a CompactionView,
    s: Settings,
    latest: HashMap<Vec<u8>, i64>,
    /// Aborted transactions by producer: (first offset, marker offset).
    aborted: HashMap<i64, Vec<(i64, i64)>>,
}

/// The records of a batch, when they can be read.
fn records<'a>(raw: &[u8], h: &Header, data: &'a mut bytes::Bytes) -> Option<Vec<RawRecord<'a>>> {
    match batch::records_data(raw, h) {
        Ok(d) => *data = d,
        Err(e) => {
            tracing::warn!(offset = h.base_offset, error = %e, "compaction keeps a batch it cannot read");
            return None;
        }
    }
    match batch::parse_records(data, h.records_count) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(offset = h.base_offset, error = %e, "compaction keeps a batch it cannot read");
            None
        }
    }
}

impl<'a> Ctx<'a> {
    fn new(view: &'a CompactionView, s: Settings) -> io::Result<Ctx<'a>> {
        let mut aborted: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for a in &view.aborted {
            aborted.entry(a.producer_id).or_default().push((a.first_offset, a.last_offset));
        }
        let mut ctx = Ctx { view, s, latest: HashMap::new(), aborted };
        for seg in &view.segments {
            for e in &seg.batches {
                if e.last >= view.stable {
                    // Offsets only grow: everything from here on is unstable.
                    return Ok(ctx);
                }
                if e.empty {
                    continue;
                }
                let raw = seg.read(e)?;
                let Ok(h) = Header::parse(&raw) else { continue };
                if h.is_control() || ctx.is_aborted(&h) {
                    continue;
                }
                let mut data = bytes::Bytes::new();
                for r in records(&raw, &h, &mut data).unwrap_or_default() {
                    if let Some(k) = r.key {
                        let offset = h.base_offset + r.offset_delta;
                        match ctx.latest.get_mut(k) {
                            Some(o) => *o = offset,
                            None => {
                                ctx.latest.insert(k.to_vec(), offset);
                            }
                        }
                    }
                }
            }
        }
        Ok(ctx)
    }

    fn is_aborted(&self, h: &Header) -> bool {
        h.is_transactional()
            && self
                .aborted
                .get(&h.producer_id)
                .is_some_and(|v| v.iter().any(|&(first, last)| first <= h.base_offset && h.base_offset <= last))
    }

    /// Decides one batch of a closed segment; `pending` is set when
    /// something kept will become removable with time alone.
    fn clean(&self, raw: &[u8], pending: &mut bool, build: bool) -> Cleaned {
        let Ok(h) = Header::parse(raw) else { return KEEP };
        if h.is_control() || h.last_offset() >= self.view.stable {
            return KEEP;
        }
        let aborted = self.is_aborted(&h);
        let mut data = bytes::Bytes::new();
        let Some(records) = records(raw, &h, &mut data) else { return KEEP };
        let expired = self.s.tombstone_expired(h.max_timestamp);
        let mut waiting = false;
        let kept: Vec<RawRecord> = records
            .iter()
            .filter(|r| {
                let Some(k) = r.key else { return false };
                let offset = h.base_offset + r.offset_delta;
                let latest = self.latest.get(k).is_none_or(|&l| l <= offset);
                waiting |= latest && r.null_value && !expired;
                !aborted && latest && !(r.null_value && expired)
            })
            .copied()
            .collect();
        let removed = (records.len() - kept.len()) as u64;
        let last_of_producer =
            h.producer_id >= 0 && h.base_sequence >= 0 && self.view.last_batches.contains(&h.base_offset);
        let outcome = match (removed, kept.is_empty()) {
            (0, false) => Outcome::Keep,
            // Nothing left (or an empty batch kept before) and no producer
            // state to keep.
            (_, true) if !last_of_producer => Outcome::Drop,
            (0, true) => Outcome::Keep,
            _ => Outcome::Rewrite(None),
        };
        if outcome != Outcome::Keep && self.s.too_recent(h.max_timestamp) {
            *pending = true;
            return KEEP;
        }
        *pending |= waiting && !aborted;
        let outcome = match outcome {
            Outcome::Rewrite(None) if build => match batch::retain(raw, &h, &kept) {
                Ok(b) => Outcome::Rewrite(Some(b)),
                Err(e) => {
                    tracing::warn!(offset = h.base_offset, error = %e, "compaction keeps a batch it cannot rewrite");
                    return KEEP;
                }
            },
            o => o,
        };
        Cleaned { outcome, records_removed: removed }
    }

    /// Writes the cleaned copy of a closed segment next to it, synced: its
    /// path, file, batches and the records removed (or the error, and the
    /// temporary file to remove).
    #[allow(clippy::type_complexity)]
    fn rewrite(&self, seg: &SegmentView) -> Result<(PathBuf, File, Vec<Entry>, u64), (PathBuf, io::Error)> {
        let mut tmp = seg.path.clone().into_os_string();
        tmp.push(CLEANED_SUFFIX);
        let tmp = PathBuf::from(tmp);
        let fail = |e: io::Error| (tmp.clone(), e);
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new().read(true).append(true).create_new(true).open(&tmp).map_err(fail)?;
        let mut w = BufWriter::new(&file);
        let (mut pos, mut batches, mut removed) = (0u64, vec![], 0u64);
        let mut pending = false;
        for e in &seg.batches {
            let raw = seg.read(e).map_err(fail)?;
            let c = self.clean(&raw, &mut pending, true);
            let bytes = match c.outcome {
                Outcome::Drop => {
                    removed += c.records_removed;
                    continue;
                }
                Outcome::Keep => raw,
                Outcome::Rewrite(b) => b.expect("built"),
            };
            removed += c.records_removed;
            let h = Header::parse(&bytes).expect("a batch of the log");
            w.write_all(&bytes).map_err(fail)?;
            batches.push(Entry::new(&h, e.last, pos, bytes.len()));
            pos += bytes.len() as u64;
        }
        w.flush().map_err(fail)?;
        drop(w);
        file.sync_all().map_err(fail)?;
        Ok((tmp, file, batches, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::{compressed, keyed, keyed_with};
    use crate::log::LogConfig;
    use crate::producers::Check;
    use bytes::Bytes;
    use kafka_protocol::records::{Compression, RecordBatchDecoder};
    use std::path::Path;

    /// Every append starts a segment: each batch is a segment of its own.
    const ONE_BATCH_SEGMENTS: LogConfig = LogConfig { segment_bytes: 1, fsync: false };
    const TRANSACTIONAL: i16 = 0x10;
    const DAY: i64 = 86_400_000;

    type Kv<'a> = (Option<&'a str>, Option<&'a str>);

    fn open(dir: &Path) -> Mutex<PartitionLog> {
        Mutex::new(PartitionLog::open(dir, ONE_BATCH_SEGMENTS).unwrap().0)
    }

    fn append(log: &Mutex<PartitionLog>, b: &[u8]) -> i64 {
        let h = batch::validate(b).unwrap();
        lock(log).append(&h, b).unwrap()
    }

    fn put(log: &Mutex<PartitionLog>, kvs: &[Kv], ts: i64) -> i64 {
        append(log, &keyed(kvs, ts))
    }

    fn marker(log: &Mutex<PartitionLog>, pid: i64, commit: bool) -> i64 {
        append(log, &batch::control_batch(pid, 0, commit, 0, 0))
    }

    fn settings(now_ms: i64) -> Settings {
        Settings { now_ms, min_lag_ms: 0, delete_retention_ms: DAY }
    }

    /// (offset, key, value) of every data record, read as a consumer would
    /// from the log start; checks every batch's CRC and that offsets grow.
    fn contents(log: &Mutex<PartitionLog>) -> Vec<(i64, String, Option<String>)> {
        let log = lock(log);
        let (mut at, mut out) = (log.log_start(), vec![]);
        let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8(b.to_vec()).unwrap());
        while let Some(slice) = log.read(at, 1 << 20, i64::MAX).unwrap() {
            let mut b = slice.read().unwrap();
            while !b.is_empty() {
                let set = RecordBatchDecoder::decode(&mut b).expect("a valid batch");
                for r in set.records.iter().filter(|r| !r.control) {
                    assert!(out.last().is_none_or(|(o, _, _)| *o < r.offset), "offsets grow");
                    out.push((r.offset, text(&r.key).unwrap_or_default(), text(&r.value)));
                }
            }
            at = slice.last + 1;
        }
        out
    }

    fn rec(offset: i64, key: &str, value: Option<&str>) -> (i64, String, Option<String>) {
        (offset, key.to_string(), value.map(str::to_string))
    }

    /// The header of the batch a fetch at `offset` starts with.
    fn header_at(log: &Mutex<PartitionLog>, offset: i64) -> Header {
        let slice = lock(log).read(offset, 1, i64::MAX).unwrap().unwrap();
        Header::parse(&slice.read().unwrap()).unwrap()
    }

    fn raw_at(log: &Mutex<PartitionLog>, offset: i64) -> Bytes {
        lock(log).read(offset, 1, i64::MAX).unwrap().unwrap().read().unwrap()
    }

    #[test]
    fn the_latest_value_of_each_key_is_kept_at_its_original_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, &[(Some("a"), Some("a1")), (Some("b"), Some("b1")), (Some("c"), Some("c1"))], 10); // 0-2
        put(&log, &[(Some("a"), Some("a2"))], 10); // 3
        put(&log, &[(Some("d"), Some("d1")), (Some("b"), Some("b2"))], 10); // 4-5
        put(&log, &[(Some("a"), Some("a3"))], 10); // 6
        put(&log, &[(Some("e"), Some("e1"))], 10); // 7, active
        let untouched = raw_at(&log, 4);
        let stats = compact(&log, settings(1_000)).unwrap();
        assert_eq!((stats.records_removed, stats.batches_removed, stats.segments), (3, 1, 2));
        assert!(stats.bytes_after < stats.bytes_before);
        let want = vec![
            rec(2, "c", Some("c1")),
            rec(4, "d", Some("d1")),
            rec(5, "b", Some("b2")),
            rec(6, "a", Some("a3")),
            rec(7, "e", Some("e1")),
        ];
        assert_eq!(contents(&log), want);
        let h = header_at(&log, 0);
        assert_eq!((h.base_offset, h.last_offset(), h.records_count), (0, 2, 1), "the range of the rewritten batch");
        assert_eq!(header_at(&log, 1).base_offset, 0, "a fetch inside it gets it");
        assert_eq!(header_at(&log, 3).base_offset, 4, "a fetch at a removed batch gets the next one");
        assert_eq!(raw_at(&log, 4), untouched, "a batch nothing left is copied byte for byte");
        assert_eq!(lock(&log).end(), 8);
        assert_eq!(compact(&log, settings(2_000)).unwrap(), Stats::default(), "nothing new: nothing to do");
        assert_eq!(contents(&log), want);
    }

    #[test]
    fn a_key_overwritten_in_the_active_segment_is_removed_from_closed_segments_and_the_active_one_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, &[(Some("a"), Some("a1")), (Some("b"), Some("b1"))], 10);
        put(&log, &[(Some("a"), Some("a2")), (Some("a"), Some("a3"))], 10); // active
        compact(&log, settings(1_000)).unwrap();
        assert_eq!(contents(&log), vec![rec(1, "b", Some("b1")), rec(2, "a", Some("a2")), rec(3, "a", Some("a3"))]);
    }

    #[test]
    fn a_tombstone_is_kept_until_delete_retention_ms_has_passed_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, &[(Some("a"), Some("a1"))], 1_000);
        put(&log, &[(Some("a"), None)], 2_000);
        put(&log, &[(Some("z"), Some("z1"))], 3_000);
        let s = |now| Settings { now_ms: now, min_lag_ms: 0, delete_retention_ms: 1_000 };
        compact(&log, s(2_900)).unwrap();
        assert_eq!(
            contents(&log),
            vec![rec(1, "a", None), rec(2, "z", Some("z1"))],
            "the value goes, the tombstone stays"
        );
        compact(&log, s(3_000)).unwrap();
        assert_eq!(contents(&log), vec![rec(1, "a", None), rec(2, "z", Some("z1"))], "exactly delete.retention.ms old");
        let stats = compact(&log, s(3_001)).unwrap();
        assert_eq!(stats.records_removed, 1);
        assert_eq!(contents(&log), vec![rec(2, "z", Some("z1"))], "older than delete.retention.ms: gone");
    }

    #[test]
    fn min_compaction_lag_ms_protects_recent_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, &[(Some("a"), Some("a1"))], 1_000);
        put(&log, &[(Some("b"), Some("b1"))], 5_000);
        put(&log, &[(Some("a"), Some("a2")), (Some("b"), Some("b2"))], 5_000);
        let s = |now| Settings { now_ms: now, min_lag_ms: 1_000, delete_retention_ms: DAY };
        compact(&log, s(5_500)).unwrap();
        assert_eq!(
            contents(&log),
            vec![rec(1, "b", Some("b1")), rec(2, "a", Some("a2")), rec(3, "b", Some("b2"))],
            "a1 is older than the lag, b1 is not"
        );
        compact(&log, s(6_001)).unwrap();
        assert_eq!(contents(&log), vec![rec(2, "a", Some("a2")), rec(3, "b", Some("b2"))], "b1 aged past the lag");
    }

    #[test]
    fn aborted_records_go_committed_ones_and_markers_stay_and_open_transactions_are_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let txn = |kvs: &[Kv], pid, seq| keyed_with(TRANSACTIONAL, kvs, pid, 0, seq, 10);
        put(&log, &[(Some("a"), Some("a0"))], 10); // 0
        append(&log, &txn(&[(Some("a"), Some("aborted")), (Some("b"), Some("aborted"))], 1, 0)); // 1-2
        append(&log, &txn(&[(Some("c"), Some("committed"))], 2, 0)); // 3
        assert_eq!(marker(&log, 1, false), 4);
        assert_eq!(marker(&log, 2, true), 5);
        // An open transaction's tombstone, old enough to go if it were not open.
        append(&log, &txn(&[(Some("d"), Some("open")), (Some("e"), None)], 3, 0)); // 6-7, never ended
        put(&log, &[(Some("d"), Some("d-after")), (Some("c"), Some("c-after-lso"))], 10); // 8-9
        put(&log, &[(Some("z"), Some("z"))], 10); // 10, active
        assert_eq!(lock(&log).last_stable(), 6);
        compact(&log, settings(10 + DAY + 1)).unwrap();
        let want = vec![
            rec(0, "a", Some("a0")),        // an aborted write does not supersede
            rec(3, "c", Some("committed")), // superseded only at or above the LSO
            rec(6, "d", Some("open")),
            rec(7, "e", None),
            rec(8, "d", Some("d-after")),
            rec(9, "c", Some("c-after-lso")),
            rec(10, "z", Some("z")),
        ];
        assert_eq!(contents(&log), want);
        assert!(header_at(&log, 4).is_control() && header_at(&log, 5).is_control(), "markers stay");
        let h = header_at(&log, 1);
        assert_eq!(
            (h.records_count, h.base_offset, h.last_offset(), h.producer_id),
            (0, 1, 2, 1),
            "kept empty: producer 1's last batch"
        );
        assert!(h.is_transactional());

        drop(log);
        let log = open(dir.path());
        assert_eq!(contents(&log), want);
        let l = lock(&log);
        assert_eq!(l.last_stable(), 6, "the open transaction is open again after a reopen");
        assert_eq!(l.producers().aborted_between(0, 100).len(), 1, "the abort is indexed again");
        assert_eq!(l.producers().describe().iter().find(|p| p.producer_id == 1).unwrap().last_sequence, 1);
    }

    #[test]
    fn a_compacted_log_reopens_with_valid_crcs_the_same_records_and_its_producer_state() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let idem = |kvs: &[Kv], seq| keyed_with(0, kvs, 7, 2, seq, 10);
        append(&log, &idem(&[(Some("a"), Some("a1")), (Some("b"), Some("b1"))], 0)); // 0-1: all superseded
        append(&log, &idem(&[(Some("a"), Some("a2")), (Some("x"), Some("x1"))], 2)); // 2-3: a2 superseded
        let last = append(&log, &idem(&[(Some("c"), Some("c1"))], 4)); // 4: producer 7's last, superseded
        put(&log, &[(Some("a"), Some("a3")), (Some("b"), Some("b2")), (Some("c"), Some("c2"))], 10); // 5-7
        put(&log, &[(Some("z"), Some("z"))], 10); // 8
        compact(&log, settings(1_000)).unwrap();
        let want = vec![
            rec(3, "x", Some("x1")),
            rec(5, "a", Some("a3")),
            rec(6, "b", Some("b2")),
            rec(7, "c", Some("c2")),
            rec(8, "z", Some("z")),
        ];
        assert_eq!(contents(&log), want);
        assert_eq!(header_at(&log, 0).base_offset, 2, "a batch of producer 7 that is not its last goes");
        let h = header_at(&log, 4);
        assert_eq!((h.records_count, h.base_sequence, h.last_sequence(), h.producer_epoch), (0, 4, 4, 2));
        let files = fs::read_dir(dir.path()).unwrap().count();
        drop(log);

        let (reopened, rec_) = PartitionLog::open(dir.path(), ONE_BATCH_SEGMENTS).unwrap();
        assert_eq!((rec_.truncated_bytes, rec_.reason), (0, None), "every batch passes its CRC");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), files, "no segment dropped at recovery");
        let log = Mutex::new(reopened);
        assert_eq!(contents(&log), want);
        let l = lock(&log);
        assert_eq!(l.end(), 9);
        let next = batch::validate(&idem(&[(Some("n"), Some("n"))], 5)).unwrap();
        assert_eq!(l.producers().check(&next), Check::Append, "producer 7 goes on at sequence 5");
        let retry = batch::validate(&idem(&[(Some("c"), Some("c1"))], 4)).unwrap();
        assert_eq!(l.producers().check(&retry), Check::Duplicate(last), "its last batch is still known");
        let stale = batch::validate(&keyed_with(0, &[(Some("n"), None)], 7, 1, 5, 10)).unwrap();
        assert!(matches!(l.producers().check(&stale), Check::Refuse(_)), "and its epoch");
    }

    #[test]
    fn a_compressed_batch_is_rewritten_with_its_codec() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, &compressed(Compression::Zstd, &[(Some("a"), Some("a1")), (Some("b"), Some("b1"))]));
        put(&log, &[(Some("a"), Some("a2"))], 10);
        put(&log, &[(Some("z"), Some("z"))], 10);
        compact(&log, settings(1_000)).unwrap();
        assert_eq!(contents(&log), vec![rec(1, "b", Some("b1")), rec(2, "a", Some("a2")), rec(3, "z", Some("z"))]);
        assert_eq!(header_at(&log, 0).attributes & 0x07, Compression::Zstd as i16);
    }

    #[test]
    fn records_without_a_key_are_removed_from_closed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, &[(None, Some("no key")), (Some("a"), Some("a1"))], 10);
        put(&log, &[(Some("z"), Some("z"))], 10);
        compact(&log, settings(1_000)).unwrap();
        assert_eq!(contents(&log), vec![rec(1, "a", Some("a1")), rec(2, "z", Some("z"))]);
    }

    #[test]
    fn a_segment_left_empty_is_removed_but_the_first_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, &[(Some("a"), Some("a1"))], 10);
        put(&log, &[(Some("a"), Some("a2"))], 10);
        put(&log, &[(Some("a"), Some("a3"))], 10);
        compact(&log, settings(1_000)).unwrap();
        let mut names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec![format!("{:020}.log", 0), format!("{:020}.log", 2)]);
        assert_eq!(fs::metadata(dir.path().join(&names[0])).unwrap().len(), 0);
        assert_eq!(contents(&log), vec![rec(2, "a", Some("a3"))]);
        assert_eq!(lock(&log).log_start(), 0);
        drop(log);
        let log = open(dir.path());
        let bounds = {
            let l = lock(&log);
            (l.log_start(), l.end())
        };
        assert_eq!(bounds, (0, 3));
        assert_eq!(contents(&log), vec![rec(2, "a", Some("a3"))]);
        // compact,delete: the emptied first segment ages from its last write.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert_eq!(lock(&log).enforce_retention(now, 60_000, -1).unwrap(), 0, "written just now");
        assert_eq!(lock(&log).enforce_retention(now + 120_000, 60_000, -1).unwrap(), 2, "a retention.ms later");
    }

    #[test]
    fn a_leftover_cleaned_file_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, &[(Some("a"), Some("a1"))], 10);
        put(&log, &[(Some("z"), Some("z"))], 10);
        drop(log);
        let leftover = dir.path().join(format!("{:020}.log{CLEANED_SUFFIX}", 0));
        fs::write(&leftover, b"half a cleaned segment").unwrap();
        let log = open(dir.path());
        assert!(!leftover.exists());
        assert_eq!(contents(&log), vec![rec(0, "a", Some("a1")), rec(1, "z", Some("z"))]);
    }
}
