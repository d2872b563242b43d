//! Records: Produce, Fetch (long-poll), ListOffsets, DeleteRecords,
//! InitProducerId, OffsetForLeaderEpoch.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::select_all;
use futures::FutureExt;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use tokio::sync::watch;

use super::s;
use crate::batch::{self, BatchError};
use crate::errors::Code;
use crate::log::ReadError;
use crate::server::Ctx;
use crate::State;

/// Appends one partition's record set; the base offset or why not.
fn produce_partition(
    st: &State,
    txn_id: Option<&str>,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
) -> Result<(i64, i64), (Code, String)> {
    let Some(t) = st.topics.get(topic) else {
        return Err((Code::UnknownTopicOrPartition, format!("no topic '{topic}'")));
    };
    let Some(p) = usize::try_from(index).ok().and_then(|i| t.partitions.get(i)) else {
        return Err((Code::UnknownTopicOrPartition, format!("topic '{topic}' has no partition {index}")));
    };
    let Some(records) = records else {
        return Err((Code::CorruptMessage, "no records".into()));
    };
    let batches = batch::split(&records).map_err(|e| match e {
        BatchError::Magic(_) => (Code::UnsupportedForMessageFormat, e.to_string()),
        _ => (Code::CorruptMessage, e.to_string()),
    })?;
    let max = t.config_i64("max.message.bytes");
    if let Some((h, _)) = batches.iter().find(|(h, _)| h.size() as i64 > max) {
        return Err((Code::MessageTooLarge, format!("batch of {} bytes exceeds max.message.bytes {max}", h.size())));
    }
    if batches.iter().any(|(h, _)| h.is_control()) {
        return Err((Code::InvalidRequest, "control batches are written by the transaction coordinator only".into()));
    }
    if t.config("cleanup.policy").contains("compact") {
        for (h, raw) in &batches {
            match batch::has_null_key(raw, h) {
                Ok(false) => {}
                Ok(true) => {
                    let msg = format!(
                        "Compacted topic cannot accept message without key in topic partition {topic}-{index}."
                    );
                    return Err((Code::InvalidRecord, msg));
                }
                Err(e) => return Err((Code::CorruptMessage, e.to_string())),
            }
        }
    }
    let appended = match batches.iter().find(|(h, _)| h.is_transactional()) {
        Some((h, _)) => {
            if batches.iter().any(|(b, _)| !b.is_transactional() || b.producer_id != h.producer_id) {
                return Err((Code::InvalidRequest, "a produce mixes transactional and other batches".into()));
            }
            crate::txn::verified_append(st, txn_id, h.producer_id, h.producer_epoch, (topic, index), || {
                p.append(&batches)
            })
        }
        None => p.append(&batches),
    }
    .map_err(|c| (c, String::new()))?;
    st.metrics.records_in.inc_by(batches.iter().map(|(h, _)| h.records_count as u64).sum());
    Ok((appended.base_offset, appended.log_start))
}

pub async fn produce(st: &State, req: ProduceRequest, ctx: &Ctx) -> ProduceResponse {
    let txn_id = req.transactional_id.as_ref().map(|t| t.to_string());
    let responses = req
        .topic_data
        .into_iter()
        .map(|td| {
            let topic = td.name.to_string();
            let partition_responses = td
                .partition_data
                .into_iter()
                .map(|pd| {
                    let r = PartitionProduceResponse::default().with_index(pd.index);
                    let outcome = produce_partition(st, txn_id.as_deref(), &topic, pd.index, pd.records);
                    match outcome {
                        Ok((base, log_start)) => {
                            let r = r.with_base_offset(base);
                            if ctx.version >= 5 {
                                r.with_log_start_offset(log_start)
                            } else {
                                r
                            }
                        }
                        Err((code, msg)) => {
                            if code != Code::OutOfOrderSequenceNumber && code != Code::InvalidProducerEpoch {
                                tracing::info!(topic, partition = pd.index, error = ?code, msg, client = ctx.client_id, "produce refused");
                            }
                            let r = r.with_error_code(code.code());
                            if ctx.version >= 8 && !msg.is_empty() {
                                r.with_error_message(Some(s(&msg)))
                            } else {
                                r
                            }
                        }
                    }
                })
                .collect();
            TopicProduceResponse::default().with_name(td.name).with_partition_responses(partition_responses)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

/// One pass over a fetch request: the response, its record bytes, and the
/// end-offset watches of partitions that had nothing new.
fn read_fetch(st: &State, req: &FetchRequest, version: i16) -> (FetchResponse, usize, Vec<watch::Receiver<i64>>) {
    let mut budget = if req.max_bytes > 0 { req.max_bytes as usize } else { usize::MAX };
    let mut total = 0usize;
    let mut watches = vec![];
    let read_committed = req.isolation_level == 1;
    let responses = req
        .topics
        .iter()
        .map(|ft| {
            let topic = ft.topic.to_string();
            let partitions = ft
                .partitions
                .iter()
                .map(|fp| {
                    let mut pd = PartitionData::default().with_partition_index(fp.partition);
                    let Some(p) = st.topics.partition(&topic, fp.partition) else {
                        return pd.with_error_code(Code::UnknownTopicOrPartition.code()).with_high_watermark(-1);
                    };
                    let (log_start, stable, end) = p.offsets();
                    pd = pd.with_high_watermark(end).with_last_stable_offset(stable);
                    if version >= 5 {
                        pd = pd.with_log_start_offset(log_start);
                    }
                    let max = (fp.partition_max_bytes.max(0) as usize).min(budget);
                    match p.read(fp.fetch_offset, max.max(1), read_committed) {
                        Err(ReadError::OutOfRange { log_start, end }) => {
                            let pd = pd.with_error_code(Code::OffsetOutOfRange.code()).with_high_watermark(end);
                            if version >= 5 {
                                pd.with_log_start_offset(log_start)
                            } else {
                                pd
                            }
                        }
                        Ok(None) => {
                            watches.push(p.watch_end());
                            pd.with_records(Some(Bytes::new()))
                        }
                        Ok(Some(slice)) => {
                            // KIP-74: the first batch goes out even above the limits.
                            if total > 0 && slice.len() > budget {
                                return pd.with_records(Some(Bytes::new()));
                            }
                            match slice.read() {
                                Ok(b) => {
                                    total += b.len();
                                    budget = budget.saturating_sub(b.len());
                                    if read_committed {
                                        let aborted = p
                                            .aborted_between(fp.fetch_offset, slice.last)
                                            .into_iter()
                                            .map(|a| {
                                                AbortedTransaction::default()
                                                    .with_producer_id(ProducerId(a.producer_id))
                                                    .with_first_offset(a.first_offset)
                                            })
                                            .collect();
                                        pd = pd.with_aborted_transactions(Some(aborted));
                                    }
                                    pd.with_records(Some(b))
                                }
                                Err(e) => {
                                    tracing::error!(topic, partition = fp.partition, error = %e, "cannot read the log");
                                    pd.with_error_code(Code::KafkaStorageError.code())
                                }
                            }
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default().with_topic(ft.topic.clone()).with_partitions(partitions)
        })
        .collect();
    (FetchResponse::default().with_responses(responses), total, watches)
}

pub async fn fetch(st: &State, req: FetchRequest, ctx: &Ctx) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(1) as usize;
    loop {
        let (resp, bytes, mut watches) = read_fetch(st, &req, ctx.version);
        let now = Instant::now();
        if bytes >= min_bytes || now >= deadline || watches.is_empty() {
            st.metrics.bytes_fetched.inc_by(bytes as u64);
            return resp;
        }
        // Woken by an append to any partition that had nothing, or the deadline.
        let changed = select_all(watches.iter_mut().map(|w| w.changed().boxed()));
        let _ = tokio::time::timeout(deadline - now, changed).await;
    }
}

pub async fn list_offsets(st: &State, req: ListOffsetsRequest, ctx: &Ctx) -> ListOffsetsResponse {
    let read_committed = ctx.version >= 2 && req.isolation_level == 1;
    let topics = req
        .topics
        .into_iter()
        .map(|lt| {
            let topic = lt.name.to_string();
            let partitions = lt
                .partitions
                .into_iter()
                .map(|lp| {
                    let r = ListOffsetsPartitionResponse::default().with_partition_index(lp.partition_index);
                    let Some(p) = st.topics.partition(&topic, lp.partition_index) else {
                        return r.with_error_code(Code::UnknownTopicOrPartition.code());
                    };
                    let (log_start, stable, end) = p.offsets();
                    // read_committed readers are answered only offsets below the last stable offset.
                    let fetchable = if read_committed { stable } else { end };
                    let below = |f: Option<(i64, i64)>| f.filter(|&(offset, _)| offset < fetchable);
                    let found = match lp.timestamp {
                        -2 => Ok(Some((log_start, -1))),
                        -1 => Ok(Some((fetchable, -1))),
                        -3 => p.max_timestamp().map(below),
                        ts => p.offset_for_time(ts).map(below),
                    };
                    let r = match found {
                        Ok(Some((offset, ts))) => r.with_offset(offset).with_timestamp(ts),
                        // No record at or after that time: -1, as Kafka answers (clients read it as the end).
                        Ok(None) => r,
                        Err(e) => {
                            tracing::error!(topic, error = %e, "cannot read the log");
                            return r.with_error_code(Code::KafkaStorageError.code());
                        }
                    };
                    if ctx.version >= 4 {
                        r.with_leader_epoch(0)
                    } else {
                        r
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(lt.name).with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

pub async fn delete_records(st: &State, req: DeleteRecordsRequest, _ctx: &Ctx) -> DeleteRecordsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|dt| {
            let topic = dt.name.to_string();
            let partitions = dt
                .partitions
                .into_iter()
                .map(|dp| {
                    let r = DeleteRecordsPartitionResult::default().with_partition_index(dp.partition_index);
                    let Some(p) = st.topics.partition(&topic, dp.partition_index) else {
                        return r.with_error_code(Code::UnknownTopicOrPartition.code());
                    };
                    let (_, end) = p.bounds();
                    let offset = if dp.offset == -1 { end } else { dp.offset };
                    if offset < 0 || offset > end {
                        return r.with_error_code(Code::OffsetOutOfRange.code());
                    }
                    match p.delete_before(offset) {
                        Ok(low) => r.with_low_watermark(low),
                        Err(e) => {
                            tracing::error!(topic, error = %e, "cannot delete records");
                            r.with_error_code(Code::KafkaStorageError.code())
                        }
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default().with_name(dt.name).with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

pub async fn init_producer_id(st: &State, req: InitProducerIdRequest, ctx: &Ctx) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default();
    if req.transactional_id.as_ref().is_some_and(|t| t.is_empty()) {
        return resp.with_error_code(Code::InvalidRequest.code());
    }
    if let Some(id) = &req.transactional_id {
        let (pid, epoch) = if ctx.version >= 3 { (req.producer_id.0, req.producer_epoch) } else { (-1, -1) };
        return match crate::txn::init_producer(st, id, req.transaction_timeout_ms, pid, epoch) {
            Ok((pid, epoch)) => resp.with_producer_id(ProducerId(pid)).with_producer_epoch(epoch),
            Err(c) => {
                tracing::info!(transactional_id = %id.0, error = ?c, client = ctx.client_id, "InitProducerId refused");
                resp.with_error_code(c.for_version(ctx.version, 4).code())
            }
        };
    }
    // KIP-360: a producer resending its id asks for an epoch bump.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return resp.with_producer_id(req.producer_id).with_producer_epoch(req.producer_epoch + 1);
    }
    match st.producer_ids.next() {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            resp.with_error_code(Code::KafkaStorageError.code())
        }
    }
}

pub async fn offset_for_leader_epoch(
    st: &State,
    req: OffsetForLeaderEpochRequest,
    _ctx: &Ctx,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = t.topic.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|lp| {
                    let r = EpochEndOffset::default().with_partition(lp.partition);
                    match st.topics.partition(&topic, lp.partition) {
                        // One leader epoch (0) for the partition's whole life: it ends at the log end.
                        Some(p) => r.with_leader_epoch(0).with_end_offset(p.bounds().1),
                        None => r.with_error_code(Code::UnknownTopicOrPartition.code()),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(t.topic).with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
