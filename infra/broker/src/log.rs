//! One partition's log on disk: append-only segment files
//! (`<base offset, 20 digits>.log`) of record batches as the producer sent
//! them, offsets assigned.
//!
//! - **Durability.** A batch is written to its segment file (the OS page
//!   cache) before its produce request is answered, so a kill -9 of the
//!   broker loses nothing acknowledged; `fsync` (the `--fsync` flag) also
//!   covers a machine crash.
//! - **Recovery.** On open every segment is read and every batch's length
//!   and CRC checked; the first torn or corrupt batch and everything after
//!   it are cut off (a write the broker never acknowledged), and the batch
//!   index and the idempotent-producer state are rebuilt from the headers.
//! - **Log start.** DeleteRecords and retention move the log start offset
//!   (`log-start-offset`, written atomically) and remove whole segments below it.
//! - **Compaction** ([`crate::compact`]) rewrites closed segments: a cleaned
//!   copy is written to `<segment>.log.cleaned`, synced and renamed over the
//!   segment ([`PartitionLog::replace_segment`]); a leftover `.cleaned` file
//!   (a crash before the rename) is removed on open. Offsets never change:
//!   fetches at removed offsets get the next batch.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, Header, HEADER_LEN, LOG_OVERHEAD};
use crate::producers::{Aborted, Producers};

const START_FILE: &str = "log-start-offset";
/// Suffix of a segment being rewritten by compaction.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";

/// Where one batch lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The offset of its last record (`base + lastOffsetDelta`).
    pub last: i64,
    pub pos: u64,
    pub len: u32,
    pub max_ts: i64,
    /// No records (compaction keeps a producer's last batch this way).
    pub empty: bool,
}

impl Entry {
    pub(crate) fn new(h: &Header, last: i64, pos: u64, len: usize) -> Entry {
        Entry { last, pos, len: len as u32, max_ts: h.max_timestamp, empty: h.records_count == 0 }
    }
}

/// A closed or active segment as compaction sees it, outside the lock.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    pub base: i64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub batches: Vec<Entry>,
    pub size: u64,
}

impl SegmentView {
    /// The bytes of one of its batches.
    pub fn read(&self, e: &Entry) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; e.len as usize];
        self.file.read_exact_at(&mut buf, e.pos)?;
        Ok(buf)
    }
}

/// What compaction needs of a partition, taken under its lock.
#[derive(Debug, Clone)]
pub(crate) struct CompactionView {
    /// Every segment, the active one last.
    pub segments: Vec<SegmentView>,
    /// The last stable offset: data at or above it is left alone.
    pub stable: i64,
    /// Aborted transactions below the last stable offset.
    pub aborted: Vec<Aborted>,
    /// Base offsets of each producer's last batch (kept, if only empty).
    pub last_batches: std::collections::HashSet<i64>,
    pub end: i64,
}

#[derive(Debug)]
struct Segment {
    base: i64,
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    batches: Vec<Entry>,
}

impl Segment {
    fn create(dir: &Path, base: i64) -> io::Result<Segment> {
        let path = dir.join(format!("{base:020}.log"));
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        Ok(Segment { base, path, file: Arc::new(file), size: 0, batches: vec![] })
    }

    fn max_ts(&self) -> i64 {
        self.batches.iter().map(|e| e.max_ts).max().unwrap_or(-1)
    }
}

/// What recovery found in one partition.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub batches: usize,
    /// Bytes cut off a torn or corrupt tail.
    pub truncated_bytes: u64,
    pub reason: Option<String>,
}

/// Settings of one partition's log.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub fsync: bool,
}

/// A byte range of a segment to read outside the partition lock.
#[derive(Debug, Clone)]
pub struct Slice {
    file: Arc<File>,
    pos: u64,
    len: usize,
    /// The offset of the last record in it.
    pub last: i64,
}

impl Slice {
    pub fn read(&self) -> io::Result<Bytes> {
        let mut buf = vec![0u8; self.len];
        self.file.read_exact_at(&mut buf, self.pos)?;
        Ok(Bytes::from(buf))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why a read found nothing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    OutOfRange { log_start: i64, end: i64 },
}

/// One partition's log.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    cfg: LogConfig,
    segments: Vec<Segment>,
    log_start: i64,
    next_offset: i64,
    producers: Producers,
    /// The end offset and compaction settings of the last compaction that
    /// left nothing for later: until the log grows, another pass with the
    /// same settings would find nothing to remove.
    clean_mark: Option<(i64, crate::compact::Settings)>,
}

fn parse_base(path: &Path) -> Option<i64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".log")?.parse().ok()
}

impl PartitionLog {
    /// Opens (creating it if needed) and recovers the log in `dir`.
    pub fn open(dir: &Path, cfg: LogConfig) -> io::Result<(PartitionLog, Recovered)> {
        fs::create_dir_all(dir)?;
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            if path.to_str().is_some_and(|p| p.ends_with(CLEANED_SUFFIX)) {
                // A compaction cut short before its rename: the segment is whole.
                fs::remove_file(&path)?;
            }
        }
        let mut bases: Vec<(i64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| parse_base(&p).map(|b| (b, p)))
            .collect();
        bases.sort();
        let stored_start: i64 =
            fs::read_to_string(dir.join(START_FILE)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let mut log = PartitionLog {
            dir: dir.into(),
            cfg,
            segments: vec![],
            log_start: stored_start,
            next_offset: stored_start,
            producers: Producers::default(),
            clean_mark: None,
        };
        let mut rec = Recovered::default();
        let mut cut = false;
        for (base, path) in bases {
            if cut {
                let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                rec.truncated_bytes += size;
                fs::remove_file(&path)?;
                continue;
            }
            let (seg, problem) = log.recover_segment(base, &path)?;
            rec.batches += seg.batches.len();
            if let Some((at, why)) = problem {
                let len = fs::metadata(&path)?.len();
                rec.truncated_bytes += len - at;
                rec.reason = Some(format!("{}: {why} at byte {at}", path.display()));
                seg.file.set_len(at)?;
                cut = true;
            }
            if let Some(last) = seg.batches.last() {
                log.next_offset = log.next_offset.max(last.last + 1);
            } else {
                log.next_offset = log.next_offset.max(base);
            }
            log.segments.push(seg);
        }
        // Segments entirely below the log start (a crash between moving the
        // start and deleting them) go now.
        log.drop_segments_below_start()?;
        if let Some(first) = log.segments.first() {
            log.log_start = log.log_start.max(first.base);
        }
        Ok((log, rec))
    }

    /// Reads a segment, checking every batch; returns where the first bad one starts.
    #[allow(clippy::type_complexity)]
    fn recover_segment(&mut self, base: i64, path: &Path) -> io::Result<(Segment, Option<(u64, String)>)> {
        let file = OpenOptions::new().read(true).append(true).open(path)?;
        let mut data = vec![];
        (&file).read_to_end(&mut data)?;
        let mut seg = Segment { base, path: path.into(), file: Arc::new(file), size: 0, batches: vec![] };
        let mut at = 0usize;
        let mut expected = base;
        while at < data.len() {
            let rest = &data[at..];
            if rest.len() < HEADER_LEN {
                return Ok((seg, Some((at as u64, "torn batch header".into()))));
            }
            let len = i32::from_be_bytes(rest[8..12].try_into().unwrap());
            let size = LOG_OVERHEAD + len.max(0) as usize;
            if len < 0 || rest.len() < size {
                return Ok((seg, Some((at as u64, "torn batch".into()))));
            }
            let h = match batch::validate(&rest[..size]) {
                Ok(h) => h,
                Err(e) => return Ok((seg, Some((at as u64, e.to_string())))),
            };
            if h.base_offset < expected {
                return Ok((seg, Some((at as u64, format!("offset {} goes back", h.base_offset)))));
            }
            self.producers.record(&h, h.base_offset, &rest[..size]);
            seg.batches.push(Entry::new(&h, h.last_offset(), at as u64, size));
            expected = h.last_offset() + 1;
            at += size;
            seg.size = at as u64;
        }
        Ok((seg, None))
    }

    fn drop_segments_below_start(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 && self.segments[1].base <= self.log_start {
            let s = self.segments.remove(0);
            fs::remove_file(&s.path)?;
        }
        if self.segments.len() == 1 && self.log_start >= self.next_offset && !self.segments[0].batches.is_empty() {
            // Everything is deleted: start a fresh segment at the log start.
            let s = self.segments.remove(0);
            fs::remove_file(&s.path)?;
            self.segments.push(Segment::create(&self.dir, self.log_start)?);
        }
        Ok(())
    }

    pub fn log_start(&self) -> i64 {
        self.log_start
    }

    /// The offset the next record gets (the high watermark: one node).
    pub fn end(&self) -> i64 {
        self.next_offset
    }

    pub fn producers(&self) -> &Producers {
        &self.producers
    }

    /// The last stable offset: below it no transaction is open.
    pub fn last_stable(&self) -> i64 {
        self.producers.first_unstable().unwrap_or(self.next_offset)
    }

    /// Bytes on disk.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Appends a validated batch; returns its base offset.
    pub fn append(&mut self, h: &Header, raw: &[u8]) -> io::Result<i64> {
        let roll = match self.segments.last() {
            None => true,
            Some(s) => s.size > 0 && s.size + raw.len() as u64 > self.cfg.segment_bytes,
        };
        if roll {
            self.segments.push(Segment::create(&self.dir, self.next_offset)?);
        }
        let base = self.next_offset;
        let bytes = batch::with_base_offset(raw, base);
        let seg = self.segments.last_mut().expect("a segment");
        if let Err(e) = (&*seg.file).write_all(&bytes) {
            // Leave no partial batch behind: the next append starts clean.
            let _ = seg.file.set_len(seg.size);
            return Err(e);
        }
        if self.cfg.fsync {
            seg.file.sync_data()?;
        }
        let last = base + h.last_offset_delta as i64;
        seg.batches.push(Entry::new(h, last, seg.size, bytes.len()));
        seg.size += bytes.len() as u64;
        self.next_offset = last + 1;
        self.producers.record(h, base, &bytes);
        Ok(base)
    }

    /// The batches from the one holding `offset` on, up to `max_bytes` (at
    /// least one batch), within one segment, ending below `limit` (the end,
    /// or the last stable offset for read_committed).
    pub fn read(&self, offset: i64, max_bytes: usize, limit: i64) -> Result<Option<Slice>, ReadError> {
        if offset < self.log_start || offset > self.next_offset {
            return Err(ReadError::OutOfRange { log_start: self.log_start, end: self.next_offset });
        }
        if offset == self.next_offset {
            return Ok(None);
        }
        let si = self.segments.partition_point(|s| s.base <= offset).saturating_sub(1);
        for seg in &self.segments[si..] {
            let i = seg.batches.partition_point(|e| e.last < offset);
            let Some(first) = seg.batches.get(i) else { continue };
            if first.last >= limit {
                return Ok(None);
            }
            let (mut len, mut last) = (first.len as usize, first.last);
            for e in &seg.batches[i + 1..] {
                if len + e.len as usize > max_bytes || e.last >= limit {
                    break;
                }
                len += e.len as usize;
                last = e.last;
            }
            return Ok(Some(Slice { file: seg.file.clone(), pos: first.pos, len, last }));
        }
        Ok(None)
    }

    /// The first batch (at or above the log start) whose max timestamp is at
    /// least `ts`, to be searched record by record (the max timestamp is a
    /// record's: compaction recomputes it, and skips empty batches here).
    pub fn batch_at_time(&self, ts: i64) -> Option<Slice> {
        self.segments.iter().flat_map(|s| s.batches.iter().map(move |e| (s, e))).find_map(|(s, e)| {
            (e.max_ts >= ts && e.last >= self.log_start && !e.empty).then(|| Slice {
                file: s.file.clone(),
                pos: e.pos,
                len: e.len as usize,
                last: e.last,
            })
        })
    }

    /// The batch holding the record with the highest timestamp.
    pub fn max_timestamp(&self) -> Option<(i64, Slice)> {
        let mut best: Option<(i64, Slice)> = None;
        for s in &self.segments {
            for e in s.batches.iter().filter(|e| e.last >= self.log_start && !e.empty) {
                if best.as_ref().is_none_or(|(ts, _)| e.max_ts > *ts) {
                    let slice = Slice { file: s.file.clone(), pos: e.pos, len: e.len as usize, last: e.last };
                    best = Some((e.max_ts, slice));
                }
            }
        }
        best
    }

    /// Moves the log start to `offset` (DeleteRecords); returns the new start.
    pub fn delete_before(&mut self, offset: i64) -> io::Result<i64> {
        let offset = offset.min(self.next_offset);
        if offset > self.log_start {
            self.log_start = offset;
            write_atomically(&self.dir.join(START_FILE), offset.to_string().as_bytes())?;
            self.drop_segments_below_start()?;
            self.producers.forget_below(offset);
        }
        Ok(self.log_start)
    }

    /// Deletes closed segments past `retention_ms` (by their newest record)
    /// or beyond `retention_bytes` (oldest first); -1 disables either.
    pub fn enforce_retention(&mut self, now_ms: i64, retention_ms: i64, retention_bytes: i64) -> io::Result<i64> {
        let mut new_start = self.log_start;
        let mut size = self.size() as i64;
        for (i, s) in self.segments.iter().enumerate() {
            let Some(next) = self.segments.get(i + 1) else { break };
            // A segment compaction emptied ages from its last write, as in Kafka.
            let newest = if s.batches.is_empty() { modified_ms(&s.path) } else { s.max_ts() };
            let expired = retention_ms >= 0 && newest >= 0 && newest < now_ms - retention_ms;
            let too_big = retention_bytes >= 0 && size - s.size as i64 >= retention_bytes;
            if !(expired || too_big) {
                break;
            }
            size -= s.size as i64;
            new_start = next.base;
        }
        self.delete_before(new_start)
    }

    /// The segments and transaction state compaction works from; `None`
    /// when the last pass with these settings left nothing for later and
    /// nothing was appended since.
    pub(crate) fn compaction_view(&self, s: crate::compact::Settings) -> Option<CompactionView> {
        if self.clean_mark.is_some_and(|(end, m)| end == self.next_offset && m.same_rules(&s)) {
            return None;
        }
        let stable = self.last_stable();
        Some(CompactionView {
            segments: self
                .segments
                .iter()
                .map(|s| SegmentView {
                    base: s.base,
                    path: s.path.clone(),
                    file: s.file.clone(),
                    batches: s.batches.clone(),
                    size: s.size,
                })
                .collect(),
            stable,
            aborted: self.producers.aborted_between(self.log_start, stable),
            last_batches: self.producers.last_batch_offsets(),
            end: self.next_offset,
        })
    }

    /// Notes that compaction with `s` left nothing to remove later at `end`.
    pub(crate) fn mark_clean(&mut self, end: i64, s: crate::compact::Settings) {
        self.clean_mark = Some((end, s));
    }

    /// Puts a compacted copy of the closed segment at `base` in its place:
    /// `cleaned` (synced, at `cleaned_path`) with `batches` is renamed over
    /// it; no batches left, the segment goes (the first one stays, empty, as
    /// the log's lower bound). Nothing happens (false) when the segment is no
    /// longer the one `expect` read (retention or DeleteRecords removed it).
    pub(crate) fn replace_segment(
        &mut self,
        base: i64,
        expect: &Arc<File>,
        cleaned_path: &Path,
        cleaned: File,
        batches: Vec<Entry>,
    ) -> io::Result<bool> {
        let n = self.segments.len();
        let Some(i) = self.segments.iter().position(|s| s.base == base && Arc::ptr_eq(&s.file, expect)) else {
            let _ = fs::remove_file(cleaned_path);
            return Ok(false);
        };
        assert!(i + 1 < n, "compaction never rewrites the active segment");
        let size = batches.last().map_or(0, |e| e.pos + e.len as u64);
        if batches.is_empty() && i > 0 {
            fs::remove_file(cleaned_path)?;
            let seg = self.segments.remove(i);
            fs::remove_file(&seg.path)?;
        } else {
            let seg = &mut self.segments[i];
            fs::rename(cleaned_path, &seg.path)?;
            seg.file = Arc::new(cleaned);
            seg.batches = batches;
            seg.size = size;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }
}

/// When a file was last written, in ms since the epoch (-1: unknown).
fn modified_ms(path: &Path) -> i64 {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(-1, |d| d.as_millis() as i64)
}

/// Writes `path` via a temporary file and a rename, synced, so a crash leaves
/// the old or the new content.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::batch;

    const CFG: LogConfig = LogConfig { segment_bytes: 1 << 20, fsync: false };

    fn append(log: &mut PartitionLog, n: i32, pid: i64, seq: i32, ts: i64) -> i64 {
        let b = batch(n, pid, 0, seq, ts);
        let h = batch::validate(&b).unwrap();
        log.append(&h, &b).unwrap()
    }

    #[test]
    fn appended_batches_get_consecutive_offsets_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), CFG).unwrap();
        assert_eq!(append(&mut log, 3, 1, 0, 10), 0);
        assert_eq!(append(&mut log, 2, 1, 3, 20), 3);
        drop(log);
        let (log, rec) = PartitionLog::open(dir.path(), CFG).unwrap();
        assert_eq!((log.end(), rec.batches, rec.truncated_bytes), (5, 2, 0));
        let slice = log.read(4, 1 << 20, i64::MAX).unwrap().unwrap();
        assert_eq!(batch::validate(&slice.read().unwrap()).unwrap().base_offset, 3, "whole batch holding 4");
        assert_eq!(log.producers().epoch(1), Some(0), "producer state rebuilt");
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), CFG).unwrap();
        append(&mut log, 3, -1, -1, 10);
        drop(log);
        let seg = dir.path().join(format!("{:020}.log", 0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&batch(2, -1, -1, -1, 1)[..30]).unwrap();
        drop(f);
        let (mut log, rec) = PartitionLog::open(dir.path(), CFG).unwrap();
        assert_eq!((log.end(), rec.truncated_bytes), (3, 30));
        assert_eq!(append(&mut log, 1, -1, -1, 10), 3, "appends continue after the cut");
    }

    #[test]
    fn reads_out_of_range_and_at_the_end_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), CFG).unwrap();
        append(&mut log, 2, -1, -1, 10);
        assert!(log.read(2, 100, i64::MAX).unwrap().is_none());
        assert_eq!(log.read(3, 100, i64::MAX).unwrap_err(), ReadError::OutOfRange { log_start: 0, end: 2 });
    }

    #[test]
    fn segments_roll_and_delete_records_removes_whole_segments_below_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_bytes: 200, fsync: false };
        let (mut log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        for i in 0..6 {
            append(&mut log, 2, -1, -1, i);
        }
        assert!(log.segments.len() > 2);
        assert_eq!(log.delete_before(7).unwrap(), 7);
        assert!(log.read(6, 100, i64::MAX).is_err());
        assert!(log.read(7, 100, i64::MAX).unwrap().is_some());
        let files = fs::read_dir(dir.path()).unwrap().count();
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!((log.log_start(), log.end()), (7, 12));
        assert!(files <= log.segments.len() + 1);
    }

    #[test]
    fn a_full_disk_fails_the_append_and_leaves_the_log_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_bytes: 200, fsync: false };
        let (mut log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        for i in 0..3 {
            append(&mut log, 2, -1, -1, i);
        }
        // The next segment lands on a device that is always full.
        let mut next = PathBuf::new();
        let (mut full, mut i) = (false, 3);
        while !full {
            let b = batch(2, -1, -1, -1, i);
            if log.segments.last().is_some_and(|s| s.size + b.len() as u64 > 200) {
                next = dir.path().join(format!("{:020}.log", log.end()));
                std::os::unix::fs::symlink("/dev/full", &next).unwrap();
                let err = log.append(&batch::validate(&b).unwrap(), &b).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
                full = true;
            } else {
                append(&mut log, 2, -1, -1, i);
                i += 1;
            }
        }
        let end = log.end();
        let err = log.append(&batch::validate(&batch(1, -1, -1, -1, 0)).unwrap(), &batch(1, -1, -1, -1, 0));
        assert!(err.is_err(), "still full");
        assert_eq!(log.end(), end, "no offset was given to a batch that was not written");
        // Every acknowledged batch reads back whole, CRCs valid.
        let mut at = 0;
        while at < end {
            let slice = log.read(at, 1 << 20, i64::MAX).unwrap().expect("a batch");
            batch::split(&slice.read().unwrap()).unwrap();
            at = slice.last + 1;
        }
        drop(log);
        std::fs::remove_file(&next).unwrap();
        let (log, rec) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!((log.end(), rec.truncated_bytes, rec.reason), (end, 0, None), "nothing torn, nothing lost");
    }

    #[test]
    fn retention_by_bytes_keeps_the_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), LogConfig { segment_bytes: 200, fsync: false }).unwrap();
        for i in 0..6 {
            append(&mut log, 2, -1, -1, i);
        }
        let start = log.enforce_retention(0, -1, 0).unwrap();
        assert_eq!(start, log.segments.last().unwrap().base);
        assert_eq!(log.end(), 12);
    }
}
