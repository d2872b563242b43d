//! `devstack tail TOPIC`: records of a topic as JSON lines, Avro-decoded
//! through the registry — for people whose kcat has no Avro support. Starts
//! at the beginning, the end (default, then follows), an offset, the last N
//! of each partition or a point in time; filters by key and event type;
//! stops after `-n` records or, with `-e`, at the end of every partition.

use std::collections::BTreeMap;
use std::time::Duration;

use keyflow_schemas::client::{parse_duration, KafkaArgs};
use keyflow_schemas::kafka::Quiet;
use keyflow_schemas::kafka::{position, reader_config};
use keyflow_schemas::Codec;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::inspect::{record_json, RawRecord};
use crate::kafka::partition_count;

/// Where each partition's read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
    /// This offset of every partition (clamped to what the partition holds).
    Offset(i64),
    /// The last N records of every partition.
    Last(i64),
}

impl StartAt {
    /// `beginning`, `end`, `N` or `-N` (as kcat's `-o`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "beginning" => Ok(StartAt::Beginning),
            "end" => Ok(StartAt::End),
            _ => match s.parse::<i64>() {
                Ok(n) if n < 0 => Ok(StartAt::Last(-n)),
                Ok(n) => Ok(StartAt::Offset(n)),
                Err(_) => Err(format!("'{s}': expected beginning, end, an offset N or -N (the last N)")),
            },
        }
    }

    /// The start offset in a partition holding `[low, high)`.
    pub fn offset(self, low: i64, high: i64) -> i64 {
        match self {
            StartAt::Beginning => low,
            StartAt::End => high,
            StartAt::Offset(n) => n.clamp(low, high),
            StartAt::Last(n) => (high - n).max(low),
        }
    }
}

/// `devstack tail` flags (besides the connection ones).
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Topic to read (e.g. orders, payment.dlq).
    pub topic: String,
    /// Where to start in every partition: beginning, end, an offset N, or -N
    /// for the last N records.
    #[arg(short = 'o', long, value_parser = StartAt::parse, default_value = "end", conflicts_with = "since", allow_negative_numbers = true)]
    pub from: StartAt,
    /// Start at the first record at or after this time: RFC 3339
    /// (2026-12-01T10:00:00Z), milliseconds since the epoch, or a duration
    /// ago (10m, 2h).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<i64>,
    /// Only these partitions (repeatable; default all).
    #[arg(short = 'p', long)]
    pub partition: Vec<i32>,
    /// Only records with this key.
    #[arg(short = 'k', long)]
    pub key: Option<String>,
    /// Only events of this type (repeatable), e.g. OrderPlaced.
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub event_type: Vec<String>,
    /// Stop after printing this many records.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// Stop at the end of every partition (as it was when the read started)
    /// instead of waiting for new records.
    #[arg(short = 'e', long = "exit")]
    pub exit_at_end: bool,
}

/// Parses `--since`: RFC 3339, epoch milliseconds, or a duration ago.
pub fn parse_since(s: &str) -> Result<i64, String> {
    parse_since_at(s, keyflow_schemas::process::now_ms())
}

fn parse_since_at(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Some(ms) = parse_rfc3339(s) {
        return Ok(ms);
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    match parse_duration(s) {
        Ok(d) => Ok(now_ms - d.as_millis() as i64),
        Err(_) => Err(format!(
            "'{s}': expected an RFC 3339 time (2026-12-01T10:00:00Z), ms since the epoch, or a duration ago (10m)"
        )),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` to ms since the epoch.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        ms = frac[..digits.min(3)].parse::<i64>().ok()? * 10i64.pow(3 - digits.min(3) as u32);
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Whether a decoded record passes the key and type filters.
fn wanted(args: &TailArgs, v: &Value) -> bool {
    let key_ok = args.key.as_deref().is_none_or(|k| v["key"].as_str() == Some(k));
    let type_ok = args.event_type.is_empty() || args.event_type.iter().any(|t| v["type"].as_str() == Some(t.as_str()));
    key_ok && type_ok
}

/// What a tail read and printed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TailSummary {
    pub read: u64,
    pub printed: u64,
    pub partitions: usize,
}

/// Runs the tail, handing each selected record to `out` until `-n`, `-e`'s
/// end or `stop` resolves.
pub async fn tail(
    kafka: &KafkaArgs,
    codec: &Codec,
    args: &TailArgs,
    stop: impl std::future::Future<Output = ()>,
    mut out: impl FnMut(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<TailSummary> {
    let timeout = Duration::from_secs(15);
    let topic = args.topic.as_str();
    let count = partition_count(kafka, topic, timeout)?;
    let partitions: Vec<i32> = if args.partition.is_empty() { (0..count).collect() } else { args.partition.clone() };
    if let Some(p) = partitions.iter().find(|p| !(0..count).contains(*p)) {
        anyhow::bail!("--partition {p}: {topic} has partitions 0..{}", count - 1);
    }
    let consumer: StreamConsumer<Quiet> = reader_config(kafka, "keyflow-devstack-tail")?.create_with_context(Quiet)?;
    let mut by_time = TopicPartitionList::new();
    if let Some(ms) = args.since {
        for &p in &partitions {
            by_time.add_partition_offset(topic, p, Offset::Offset(ms))?;
        }
        by_time = consumer.offsets_for_times(by_time, timeout)?;
    }
    let mut tpl = TopicPartitionList::new();
    // Partition → the offset where `-e` stops (the high watermark at the start).
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let start = match args.since {
            Some(_) => match by_time.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.clamp(low, high),
                _ => high,
            },
            None => args.from.offset(low, high),
        };
        if start < high || !args.exit_at_end {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
            ends.insert(p, high);
        }
    }
    let mut summary = TailSummary { partitions: ends.len(), ..Default::default() };
    if ends.is_empty() {
        return Ok(summary);
    }
    consumer.assign(&tpl)?;
    tokio::pin!(stop);
    loop {
        if args.count.is_some_and(|n| summary.printed >= n) || (args.exit_at_end && ends.is_empty()) {
            break;
        }
        let m = tokio::select! {
            _ = &mut stop => break,
            m = consumer.recv() => m.map_err(|e| anyhow::anyhow!("reading {topic}: {e}"))?,
            // With `-e`, a partition whose position passed its end with no
            // record at it (a transaction marker ends it) is done too.
            _ = tokio::time::sleep(Duration::from_millis(200)), if args.exit_at_end => {
                ends.retain(|&p, &mut end| position(&consumer, topic, p).is_none_or(|o| o < end));
                continue;
            }
        };
        let raw = RawRecord::from_message(&m);
        drop(m);
        if args.exit_at_end {
            match ends.get(&raw.partition) {
                Some(&end) if raw.offset < end => {
                    if raw.offset + 1 >= end {
                        ends.remove(&raw.partition);
                    }
                }
                _ => continue,
            }
        }
        summary.read += 1;
        // The embedded broker answers a time past the newest record with
        // offset 0 (infra/BROKER-NOTES.md), so `--since` is also applied per record.
        if args.since.is_some_and(|since| raw.timestamp.is_some_and(|t| t < since)) {
            continue;
        }
        let v = record_json(codec, topic, &raw).await;
        if wanted(args, &v) {
            out(&v)?;
            summary.printed += 1;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::format_rfc3339;

    #[test]
    fn start_positions_follow_kcat_offsets_and_stay_inside_the_partition() {
        assert_eq!(StartAt::parse("beginning").unwrap().offset(5, 10), 5);
        assert_eq!(StartAt::parse("end").unwrap().offset(5, 10), 10);
        assert_eq!(StartAt::parse("7").unwrap().offset(5, 10), 7);
        assert_eq!(StartAt::parse("70").unwrap().offset(5, 10), 10);
        assert_eq!(StartAt::parse("0").unwrap().offset(5, 10), 5);
        assert_eq!(StartAt::parse("-3").unwrap().offset(5, 10), 7);
        assert_eq!(StartAt::parse("-30").unwrap().offset(5, 10), 5);
        assert!(StartAt::parse("soon").unwrap_err().contains("beginning, end"));
    }

    #[test]
    fn since_takes_rfc3339_epoch_ms_or_a_duration_ago() {
        assert_eq!(parse_since_at("1970-01-01T00:00:00Z", 0), Ok(0));
        assert_eq!(parse_since_at("2026-12-01T10:00:00Z", 0), Ok(1_796_119_200_000));
        assert_eq!(parse_since_at("2026-12-01T10:00:00.25Z", 0), Ok(1_796_119_200_250));
        assert_eq!(parse_since_at("2026-12-01T11:30:00+01:30", 0), Ok(1_796_119_200_000));
        assert_eq!(parse_since_at("1796119200000", 0), Ok(1_796_119_200_000));
        assert_eq!(parse_since_at("10m", 1_000_000), Ok(400_000));
        assert!(parse_since_at("yesterday", 0).unwrap_err().contains("RFC 3339"));
        assert!(parse_since_at("2026-13-01T10:00:00Z", 0).is_err());
    }

    #[test]
    fn times_print_as_rfc3339_and_parse_back() {
        for ms in [0, 1_796_119_200_250, 951_782_400_000 /* 2000-02-29 */, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms), "{}", format_rfc3339(ms));
        }
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
