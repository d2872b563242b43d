//! Record batches (message format v2) as stored: the broker keeps each batch
//! byte for byte as the producer sent it, patching only the base offset and
//! the partition leader epoch, which the CRC does not cover.
//!
//! `kafka-protocol`'s `BatchDecodeInfo` omits `lastOffsetDelta` and
//! `maxTimestamp`, which the log needs for every batch (the next offset, the
//! time index), so the fixed 61-byte header is read here; the records inside
//! are decoded with `kafka-protocol` only where a record's own offset or
//! timestamp matters (ListOffsets by time).

use bytes::{Buf, BufMut, Bytes};

/// Size of the v2 batch header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
/// Offset of the `batchLength` field's end: a batch occupies
/// `LOG_OVERHEAD + batch_length` bytes.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {have} bytes, shorter than its header says ({need})")]
    Truncated { have: usize, need: usize },
    #[error("message format v{0} is not supported (v2 only)")]
    Magic(i8),
    #[error("CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc { stored: u32, computed: u32 },
    #[error("invalid batch header: {0}")]
    Invalid(&'static str),
}

/// The fields of a v2 batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub base_offset: i64,
    /// Bytes after the length field.
    pub batch_length: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes of `b`.
    pub fn parse(mut b: &[u8]) -> Result<Header, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::Truncated { have: b.len(), need: HEADER_LEN });
        }
        let base_offset = b.get_i64();
        let batch_length = b.get_i32();
        let _leader_epoch = b.get_i32();
        let magic = b.get_i8();
        if magic != 2 {
            return Err(BatchError::Magic(magic));
        }
        let h = Header {
            base_offset,
            batch_length,
            magic,
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            records_count: b.get_i32(),
        };
        if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::Invalid("batch length shorter than a header"));
        }
        if h.last_offset_delta < 0 || h.records_count < 0 {
            return Err(BatchError::Invalid("negative record count or offset delta"));
        }
        Ok(h)
    }

    /// Total bytes of the batch, header included.
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }

    /// The sequence of the batch's last record (sequences wrap at `i32::MAX`).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        ((self.base_sequence as i64 + self.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
    }
}

/// Checks one whole batch (`b` holds exactly it): header, length and CRC.
pub fn validate(b: &[u8]) -> Result<Header, BatchError> {
    let h = Header::parse(b)?;
    if b.len() != h.size() {
        return Err(BatchError::Truncated { have: b.len(), need: h.size() });
    }
    let computed = crc32c::crc32c(&b[CRC_START..]);
    if computed != h.crc {
        return Err(BatchError::Crc { stored: h.crc, computed });
    }
    Ok(h)
}

/// Splits a produce request's record set into its batches, each validated.
pub fn split(records: &Bytes) -> Result<Vec<(Header, Bytes)>, BatchError> {
    let mut out = vec![];
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated { have: rest.len(), need: LOG_OVERHEAD });
        }
        let len = i32::from_be_bytes(rest[8..12].try_into().unwrap());
        if len < 0 {
            return Err(BatchError::Invalid("negative batch length"));
        }
        let size = LOG_OVERHEAD + len as usize;
        if rest.len() < size {
            return Err(BatchError::Truncated { have: rest.len(), need: size });
        }
        let h = validate(&rest[..size])?;
        out.push((h, records.slice(at..at + size)));
        at += size;
    }
    if out.is_empty() {
        return Err(BatchError::Invalid("no record batch"));
    }
    Ok(out)
}

/// A copy of `batch` with its base offset set (bytes 0–8, outside the CRC)
/// and partition leader epoch 0.
pub fn with_base_offset(batch: &[u8], base_offset: i64) -> Vec<u8> {
    let mut v = batch.to_vec();
    v[0..8].copy_from_slice(&base_offset.to_be_bytes());
    v[12..16].copy_from_slice(&0i32.to_be_bytes());
    v
}

/// The offset of the first record in `batch` whose timestamp is at least
/// `ts`, decoding the records (and decompressing them when needed).
pub fn first_offset_at_or_after(batch: &Bytes, ts: i64) -> Option<(i64, i64)> {
    let mut buf = batch.clone();
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records.iter().find(|r| r.timestamp >= ts).map(|r| (r.offset, r.timestamp))
}

/// The header fields of a batch being built.
struct Fields {
    attributes: i16,
    last_offset_delta: i32,
    timestamp: i64,
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
}

/// A v2 batch (base offset 0) of `count` encoded records.
fn encode(f: Fields, count: i32, records: &[u8]) -> Vec<u8> {
    let mut after_crc = Vec::with_capacity(HEADER_LEN + records.len());
    after_crc.put_i16(f.attributes);
    after_crc.put_i32(f.last_offset_delta);
    after_crc.put_i64(f.timestamp);
    after_crc.put_i64(f.timestamp);
    after_crc.put_i64(f.producer_id);
    after_crc.put_i16(f.epoch);
    after_crc.put_i32(f.base_sequence);
    after_crc.put_i32(count);
    after_crc.put_slice(records);
    let mut b = Vec::with_capacity(CRC_START + after_crc.len());
    b.put_i64(0);
    b.put_i32((4 + 1 + 4 + after_crc.len()) as i32);
    b.put_i32(0);
    b.put_i8(2);
    b.put_u32(crc32c::crc32c(&after_crc));
    b.put_slice(&after_crc);
    b
}

fn put_varint(b: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            b.put_u8(z as u8);
            return;
        }
        b.put_u8((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn get_varint(b: &mut &[u8]) -> Option<i64> {
    let mut z = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

/// A transaction marker (a control batch of one record) ending
/// `producer_id`'s transaction, as the transaction coordinator writes it.
pub fn control_batch(producer_id: i64, epoch: i16, commit: bool, coordinator_epoch: i32, timestamp: i64) -> Vec<u8> {
    let mut body = vec![0u8]; // attributes
    put_varint(&mut body, 0); // timestamp delta
    put_varint(&mut body, 0); // offset delta
    put_varint(&mut body, 4);
    body.put_i16(0); // key version
    body.put_i16(commit as i16); // type: 0 abort, 1 commit
    put_varint(&mut body, 6);
    body.put_i16(0); // value version
    body.put_i32(coordinator_epoch);
    put_varint(&mut body, 0); // headers
    let mut records = vec![];
    put_varint(&mut records, body.len() as i64);
    records.extend_from_slice(&body);
    let f = Fields {
        attributes: TRANSACTIONAL | CONTROL,
        last_offset_delta: 0,
        timestamp,
        producer_id,
        epoch,
        base_sequence: -1,
    };
    encode(f, 1, &records)
}

/// Whether a control batch marks a commit (`Some(true)`), an abort
/// (`Some(false)`), or is no transaction marker (`None`). Control batches
/// are never compressed.
pub fn control_commits(batch: &[u8]) -> Option<bool> {
    let mut b = batch.get(HEADER_LEN..)?;
    get_varint(&mut b)?; // record length
    b = b.get(1..)?; // attributes
    get_varint(&mut b)?; // timestamp delta
    get_varint(&mut b)?; // offset delta
    if get_varint(&mut b)? < 4 {
        return None;
    }
    match i16::from_be_bytes(b.get(2..4)?.try_into().ok()?) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v2 batch of `n` uncompressed records (keys `k<i>`, no headers) as a
    /// producer would send it.
    pub fn batch(n: i32, producer_id: i64, epoch: i16, base_sequence: i32, ts: i64) -> Bytes {
        batch_with(0, n, producer_id, epoch, base_sequence, ts)
    }

    /// The same, transactional.
    pub fn txn_batch(n: i32, producer_id: i64, epoch: i16, base_sequence: i32) -> Bytes {
        batch_with(TRANSACTIONAL, n, producer_id, epoch, base_sequence, 0)
    }

    fn batch_with(attributes: i16, n: i32, producer_id: i64, epoch: i16, base_sequence: i32, ts: i64) -> Bytes {
        let mut records = vec![];
        for i in 0..n {
            let mut body = vec![0u8]; // attributes
            put_varint(&mut body, 0); // timestamp delta
            put_varint(&mut body, i as i64); // offset delta
            let key = format!("k{i}");
            put_varint(&mut body, key.len() as i64);
            body.extend_from_slice(key.as_bytes());
            put_varint(&mut body, -1); // null value
            put_varint(&mut body, 0); // headers
            put_varint(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let fields = Fields { attributes, last_offset_delta: n - 1, timestamp: ts, producer_id, epoch, base_sequence };
        Bytes::from(encode(fields, n, &records))
    }

    #[test]
    fn a_valid_batch_parses_and_a_flipped_byte_fails_its_crc() {
        let b = batch(3, 7, 1, 10, 1_000);
        let h = validate(&b).unwrap();
        assert_eq!((h.records_count, h.last_offset_delta, h.producer_id, h.base_sequence), (3, 2, 7, 10));
        assert_eq!(h.last_sequence(), 12);
        let mut bad = b.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(validate(&bad), Err(BatchError::Crc { .. })));
    }

    #[test]
    fn patching_the_base_offset_keeps_the_crc_valid() {
        let b = batch(2, -1, -1, -1, 5);
        let patched = with_base_offset(&b, 42);
        assert_eq!(validate(&patched).unwrap().base_offset, 42);
    }

    #[test]
    fn split_returns_each_batch_and_refuses_a_torn_one() {
        let mut two = batch(1, -1, -1, -1, 1).to_vec();
        two.extend_from_slice(&batch(2, -1, -1, -1, 2));
        let two = Bytes::from(two);
        assert_eq!(split(&two).unwrap().len(), 2);
        assert!(matches!(split(&two.slice(..two.len() - 3)), Err(BatchError::Truncated { .. })));
    }

    #[test]
    fn the_record_at_a_timestamp_is_found_inside_a_batch() {
        let b = Bytes::from(with_base_offset(&batch(3, -1, -1, -1, 100), 10));
        assert_eq!(first_offset_at_or_after(&b, 100), Some((10, 100)));
        assert_eq!(first_offset_at_or_after(&b, 101), None);
    }

    #[test]
    fn a_control_batch_is_valid_and_says_whether_it_commits() {
        for commit in [true, false] {
            let b = control_batch(9, 3, commit, 0, 1_000);
            let h = validate(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence, h.records_count), (9, 3, -1, 1));
            assert_eq!(control_commits(&b), Some(commit));
        }
        assert_eq!(control_commits(&batch(1, -1, -1, -1, 0)), None, "a data record's key is not a marker");
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let b = batch(3, 1, 0, i32::MAX - 1, 0);
        assert_eq!(Header::parse(&b).unwrap().last_sequence(), 0, "MAX-1, MAX, 0");
    }
}
