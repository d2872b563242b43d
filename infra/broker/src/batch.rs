//! Record batches (message format v2) as stored: the broker keeps each batch
//! byte for byte as the producer sent it, patching only the base offset and
//! the partition leader epoch, which the CRC does not cover.
//!
//! `kafka-protocol`'s `BatchDecodeInfo` omits `lastOffsetDelta` and
//! `maxTimestamp`, which the log needs for every batch (the next offset, the
//! time index), so the fixed 61-byte header is read here; the records inside
//! are decoded with `kafka-protocol` only where a record's own offset or
//! timestamp matters (ListOffsets by time), or its key (a compacted topic:
//! the null-key check at produce, the log cleaner). The cleaner reads records
//! as raw byte ranges ([`RawRecord`]) so a rewritten batch keeps every kept
//! record byte for byte (headers included).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the v2 batch header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
/// Offset of the `batchLength` field's end: a batch occupies
/// `LOG_OVERHEAD + batch_length` bytes.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

const CODEC: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
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
    #[error("invalid records: {0}")]
    Records(String),
    #[error("invalid record: {0}")]
    Record(&'static str),
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
    assemble(0, 0, &after_crc)
}

/// A whole batch from the bytes its CRC covers (attributes on).
fn assemble(base_offset: i64, leader_epoch: i32, after_crc: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(CRC_START + after_crc.len());
    b.put_i64(base_offset);
    b.put_i32((4 + 1 + 4 + after_crc.len()) as i32);
    b.put_i32(leader_epoch);
    b.put_i8(2);
    b.put_u32(crc32c::crc32c(after_crc));
    b.put_slice(after_crc);
    b
}

/// One record of a batch as stored, its fields read but its bytes kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// The whole record, its length prefix included.
    pub bytes: &'a [u8],
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    pub key: Option<&'a [u8]>,
    /// A tombstone.
    pub null_value: bool,
}

fn records_error(what: &'static str) -> BatchError {
    BatchError::Record(what)
}

/// The records section of a whole, validated batch, decompressed.
pub fn records_data(batch: &[u8], h: &Header) -> Result<Bytes, BatchError> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    fn run<D: Decompressor<Bytes, Buf = Bytes>>(mut data: Bytes) -> anyhow::Result<Bytes> {
        D::decompress(&mut data, |out: &mut Bytes| Ok(std::mem::take(out)))
    }
    let data = Bytes::copy_from_slice(batch.get(HEADER_LEN..).ok_or(records_error("batch shorter than a header"))?);
    let out = match h.attributes & CODEC {
        0 => return Ok(data),
        1 => run::<Gzip>(data),
        2 => run::<Snappy>(data),
        3 => run::<Lz4>(data),
        4 => run::<Zstd>(data),
        c => return Err(BatchError::Records(format!("unknown compression codec {c}"))),
    };
    out.map_err(|e| BatchError::Records(format!("cannot decompress: {e:#}")))
}

/// `count` records read from `data` (from [`records_data`]), which they must
/// fill exactly.
pub fn parse_records(mut data: &[u8], count: i32) -> Result<Vec<RawRecord<'_>>, BatchError> {
    fn bytes<'a>(b: &mut &'a [u8]) -> Result<Option<&'a [u8]>, BatchError> {
        let len = get_varint(b).ok_or(records_error("torn length"))?;
        if len < 0 {
            return if len == -1 { Ok(None) } else { Err(records_error("negative length")) };
        }
        let len = usize::try_from(len).map_err(|_| records_error("length too large"))?;
        if b.len() < len {
            return Err(records_error("a field runs past its record"));
        }
        let (v, rest) = b.split_at(len);
        *b = rest;
        Ok(Some(v))
    }
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let whole = data;
        let len = get_varint(&mut data).ok_or(records_error("torn record length"))?;
        let len = usize::try_from(len).map_err(|_| records_error("negative record length"))?;
        if data.len() < len {
            return Err(records_error("a record runs past its batch"));
        }
        let prefix = whole.len() - data.len();
        let (mut body, rest) = data.split_at(len);
        data = rest;
        body = body.get(1..).ok_or(records_error("empty record"))?; // attributes
        let timestamp_delta = get_varint(&mut body).ok_or(records_error("torn timestamp delta"))?;
        let offset_delta = get_varint(&mut body).ok_or(records_error("torn offset delta"))?;
        let key = bytes(&mut body)?;
        let null_value = bytes(&mut body)?.is_none();
        out.push(RawRecord { bytes: &whole[..prefix + len], timestamp_delta, offset_delta, key, null_value });
    }
    if !data.is_empty() {
        return Err(BatchError::Records(format!("{} bytes after the last record", data.len())));
    }
    Ok(out)
}

/// Whether a record of the batch has no key (Kafka refuses those in a
/// compacted topic); reads, and decompresses, the records.
pub fn has_null_key(batch: &[u8], h: &Header) -> Result<bool, BatchError> {
    let data = records_data(batch, h)?;
    Ok(parse_records(&data, h.records_count)?.iter().any(|r| r.key.is_none()))
}

fn compress(codec: i16, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    fn run<C: Compressor<Vec<u8>, BufMut = BytesMut>>(data: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = vec![];
        C::compress(&mut out, |b: &mut BytesMut| {
            b.extend_from_slice(data);
            Ok(())
        })?;
        Ok(out)
    }
    let out = match codec {
        0 => return Ok(data.to_vec()),
        1 => run::<Gzip>(data),
        2 => run::<Snappy>(data),
        3 => run::<Lz4>(data),
        4 => run::<Zstd>(data),
        c => return Err(BatchError::Records(format!("unknown compression codec {c}"))),
    };
    out.map_err(|e| BatchError::Records(format!("cannot compress: {e:#}")))
}

/// `batch` (whole, validated) with only the `kept` records (taken from its
/// own [`parse_records`]), as Kafka's log cleaner rewrites a batch: the same
/// base offset, last offset delta (so the offset range, the producer's last
/// sequence and the next offset stay), base timestamp (the kept records'
/// deltas stay valid), producer id, epoch, base sequence, attributes and
/// codec; the max timestamp is the kept records' newest. No records left: an
/// empty, uncompressed batch with the original max timestamp.
pub fn retain(batch: &[u8], h: &Header, kept: &[RawRecord]) -> Result<Vec<u8>, BatchError> {
    let mut attributes = h.attributes;
    let mut max_timestamp = h.max_timestamp;
    let mut records = vec![];
    if kept.is_empty() {
        attributes &= !CODEC;
    } else {
        if attributes & LOG_APPEND_TIME == 0 {
            max_timestamp = kept.iter().map(|r| h.base_timestamp + r.timestamp_delta).max().unwrap_or(-1);
        }
        let plain: Vec<u8> = kept.iter().flat_map(|r| r.bytes.iter().copied()).collect();
        records = compress(h.attributes & CODEC, &plain)?;
    }
    let mut after_crc = Vec::with_capacity(HEADER_LEN - CRC_START + records.len());
    after_crc.put_i16(attributes);
    after_crc.put_i32(h.last_offset_delta);
    after_crc.put_i64(h.base_timestamp);
    after_crc.put_i64(max_timestamp);
    after_crc.put_i64(h.producer_id);
    after_crc.put_i16(h.producer_epoch);
    after_crc.put_i32(h.base_sequence);
    after_crc.put_i32(kept.len() as i32);
    after_crc.put_slice(&records);
    let leader_epoch = i32::from_be_bytes(batch[12..16].try_into().unwrap());
    Ok(assemble(h.base_offset, leader_epoch, &after_crc))
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
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let kvs: Vec<(Option<&str>, Option<&str>)> = keys.iter().map(|k| (Some(k.as_str()), None)).collect();
        keyed_with(attributes, &kvs, producer_id, epoch, base_sequence, ts)
    }

    /// A batch of records with these keys and values (`None`: null), all at
    /// `ts`, uncompressed; `attributes` may say transactional.
    pub fn keyed_with(
        attributes: i16,
        kvs: &[(Option<&str>, Option<&str>)],
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        ts: i64,
    ) -> Bytes {
        let mut records = vec![];
        for (i, (key, value)) in kvs.iter().enumerate() {
            let mut body = vec![0u8]; // attributes
            put_varint(&mut body, 0); // timestamp delta
            put_varint(&mut body, i as i64); // offset delta
            for field in [key, value] {
                match field {
                    Some(f) => {
                        put_varint(&mut body, f.len() as i64);
                        body.extend_from_slice(f.as_bytes());
                    }
                    None => put_varint(&mut body, -1),
                }
            }
            put_varint(&mut body, 1); // one header, to see it kept
            put_varint(&mut body, 1);
            body.push(b'h');
            put_varint(&mut body, 1);
            body.push(b'1');
            put_varint(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let n = kvs.len() as i32;
        let fields = Fields { attributes, last_offset_delta: n - 1, timestamp: ts, producer_id, epoch, base_sequence };
        Bytes::from(encode(fields, n, &records))
    }

    /// Keyed records, not idempotent.
    pub fn keyed(kvs: &[(Option<&str>, Option<&str>)], ts: i64) -> Bytes {
        keyed_with(0, kvs, -1, -1, -1, ts)
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

    #[test]
    fn records_are_read_with_their_keys_and_null_values() {
        let b = keyed(&[(Some("a"), Some("1")), (None, Some("2")), (Some("c"), None)], 7);
        let h = validate(&b).unwrap();
        let data = records_data(&b, &h).unwrap();
        let recs = parse_records(&data, h.records_count).unwrap();
        let got: Vec<_> = recs.iter().map(|r| (r.key, r.null_value, r.offset_delta)).collect();
        assert_eq!(got, vec![(Some(&b"a"[..]), false, 0), (None, false, 1), (Some(&b"c"[..]), true, 2)]);
        assert!(has_null_key(&b, &h).unwrap());
        let keyed_only = keyed(&[(Some("a"), None)], 0);
        assert!(!has_null_key(&keyed_only, &validate(&keyed_only).unwrap()).unwrap());
        assert!(parse_records(&data, 4).is_err(), "fewer records than counted");
        assert!(parse_records(&data, 2).is_err(), "bytes left over");
    }

    /// A batch encoded by kafka-protocol with `codec`.
    pub fn compressed(codec: kafka_protocol::records::Compression, kvs: &[(Option<&str>, Option<&str>)]) -> Bytes {
        use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        let records: Vec<Record> = kvs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: 5,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 100 + i as i64,
                key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions { version: 2, compression: codec };
        RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
        buf.freeze()
    }

    #[test]
    fn a_batch_keeps_only_the_chosen_records_with_its_offsets_sequence_and_codec() {
        use kafka_protocol::records::{Compression, RecordBatchDecoder};
        let kvs = [(Some("a"), Some("1")), (Some("b"), Some("2")), (Some("c"), Some("3")), (Some("d"), None)];
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let b = with_base_offset(&compressed(codec, &kvs), 40);
            let h = validate(&b).unwrap();
            let data = records_data(&b, &h).unwrap();
            let recs = parse_records(&data, h.records_count).unwrap();
            let kept = [recs[1], recs[2]];
            let out = retain(&b, &h, &kept).unwrap();
            let nh = validate(&out).expect("a valid CRC");
            assert_eq!(nh.attributes & CODEC, codec as i16, "{codec:?} kept");
            assert_eq!((nh.base_offset, nh.last_offset_delta, nh.records_count), (40, 3, 2), "{codec:?}");
            assert_eq!((nh.producer_id, nh.producer_epoch, nh.base_sequence), (5, 0, 0), "{codec:?}");
            assert_eq!((nh.base_timestamp, nh.max_timestamp), (100, 102), "{codec:?}");
            let set = RecordBatchDecoder::decode(&mut Bytes::from(out)).unwrap();
            let got: Vec<_> = set.records.iter().map(|r| (r.offset, r.timestamp, r.key.clone().unwrap())).collect();
            assert_eq!(got, vec![(41, 101, Bytes::from("b")), (42, 102, Bytes::from("c"))], "{codec:?}");
            let empty = retain(&b, &h, &[]).unwrap();
            let eh = validate(&empty).unwrap();
            assert_eq!((eh.records_count, eh.last_offset(), eh.attributes & CODEC, eh.max_timestamp), (0, 43, 0, 103));
        }
    }
}
