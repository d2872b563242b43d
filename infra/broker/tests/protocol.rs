//! The broker at the wire: raw requests encoded with `kafka-protocol`'s
//! client side, for the cases client libraries hide (version negotiation,
//! sequence errors, acks=0, mid-batch fetches, malformed frames).

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use keyflow_broker::{Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Conn {
    s: TcpStream,
    corr: i32,
}

impl Conn {
    async fn open(b: &Broker) -> Conn {
        Conn { s: TcpStream::connect(b.addr).await.unwrap(), corr: 0 }
    }

    async fn send<R: Encodable>(&mut self, api: ApiKey, v: i16, req: &R) -> i32 {
        self.corr += 1;
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(v)
            .with_correlation_id(self.corr)
            .with_client_id(Some(StrBytes::from_static_str("protocol-test")))
            .encode(&mut buf, api.request_header_version(v))
            .unwrap();
        req.encode(&mut buf, v).unwrap();
        self.s.write_i32(buf.len() as i32).await.unwrap();
        self.s.write_all(&buf).await.unwrap();
        self.corr
    }

    /// The next response: (correlation id, body after the header).
    async fn recv_raw(&mut self, api: ApiKey, v: i16) -> (i32, Bytes) {
        let n = self.s.read_i32().await.unwrap();
        let mut buf = vec![0; n as usize];
        self.s.read_exact(&mut buf).await.unwrap();
        let mut b = Bytes::from(buf);
        let hv = if api == ApiKey::ApiVersions { 0 } else { api.response_header_version(v) };
        let h = ResponseHeader::decode(&mut b, hv).unwrap();
        (h.correlation_id, b)
    }

    async fn call<R: Encodable, T: Decodable>(&mut self, api: ApiKey, v: i16, req: &R) -> T {
        let corr = self.send(api, v, req).await;
        let (got, mut b) = self.recv_raw(api, v).await;
        assert_eq!(got, corr, "responses come in request order");
        T::decode(&mut b, v).unwrap()
    }
}

async fn broker(dir: &std::path::Path) -> Broker {
    Broker::start(Config::new(dir)).await.unwrap()
}

async fn create(c: &mut Conn, name: &str, partitions: i32) -> i16 {
    let t = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.into())))
        .with_num_partitions(partitions)
        .with_replication_factor(1);
    let r: CreateTopicsResponse =
        c.call(ApiKey::CreateTopics, 5, &CreateTopicsRequest::default().with_topics(vec![t])).await;
    r.topics[0].error_code
}

/// A v2 batch of `n` records from producer `pid`/`epoch` starting at `seq`
/// (-1: no idempotence).
fn batch(n: i64, pid: i64, epoch: i16, seq: i32, value_len: usize) -> Bytes {
    batch_of(n, pid, epoch, seq, value_len, false)
}

fn batch_of(n: i64, pid: i64, epoch: i16, seq: i32, value_len: usize, transactional: bool) -> Bytes {
    encode((0..n).map(|i| Record {
        transactional,
        producer_id: pid,
        producer_epoch: epoch,
        // kafka-protocol starts a new batch where offset − sequence changes;
        // a batch without idempotence has base sequence -1.
        sequence: seq + i as i32,
        timestamp: 1_000 + i,
        ..record(i, Some(Bytes::from(format!("k{i}"))), Some(Bytes::from(vec![b'v'; value_len])))
    }))
}

/// Record `offset` of a batch: not idempotent, not transactional, no headers.
fn record(offset: i64, key: Option<Bytes>, value: Option<Bytes>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1 + offset as i32,
        timestamp: 1_000,
        key,
        value,
        headers: IndexMap::new(),
    }
}

/// One v2 batch of `records`, uncompressed.
fn encode(records: impl Iterator<Item = Record>) -> Bytes {
    let records: Vec<Record> = records.collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .unwrap();
    buf.freeze()
}

fn produce_req(topic: &str, records: Bytes, acks: i16) -> ProduceRequest {
    let pd = PartitionProduceData::default().with_index(0).with_records(Some(records));
    let td = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![pd]);
    ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![td])
}

async fn produce(c: &mut Conn, topic: &str, records: Bytes) -> (i16, i64) {
    let r: ProduceResponse = c.call(ApiKey::Produce, 7, &produce_req(topic, records, -1)).await;
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_req(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let p = FetchPartition::default().with_partition(0).with_fetch_offset(offset).with_partition_max_bytes(1 << 20);
    let t = FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.into()))).with_partitions(vec![p]);
    FetchRequest::default().with_max_wait_ms(max_wait_ms).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![t])
}

async fn fetch(c: &mut Conn, topic: &str, offset: i64, max_wait_ms: i32) -> fetch_response::PartitionData {
    let r: FetchResponse = c.call(ApiKey::Fetch, 11, &fetch_req(topic, offset, max_wait_ms)).await;
    r.responses[0].partitions[0].clone()
}

fn offsets_of(records: &Option<Bytes>) -> Vec<i64> {
    let mut b = records.clone().unwrap_or_default();
    let mut out = vec![];
    while b.has_remaining() {
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        out.extend(set.records.iter().map(|r| r.offset));
    }
    out
}

#[tokio::test]
async fn an_unsupported_api_versions_request_is_answered_in_v0_with_the_supported_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    // ApiVersions v9 does not exist: the answer is a v0 body with error 35 (KIP-511).
    let mut buf = BytesMut::new();
    buf.put_i16(ApiKey::ApiVersions as i16);
    buf.put_i16(9);
    buf.put_i32(77);
    buf.put_i16(-1);
    c.s.write_i32(buf.len() as i32).await.unwrap();
    c.s.write_all(&buf).await.unwrap();
    let (corr, mut body) = c.recv_raw(ApiKey::ApiVersions, 0).await;
    let r = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!((corr, r.error_code), (77, 35));
    let produce = r.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).unwrap();
    assert_eq!((produce.min_version, produce.max_version), (3, 9));
    // The same connection then negotiates normally.
    let r: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    assert_eq!(r.error_code, 0);
}

#[tokio::test]
async fn a_retried_idempotent_batch_gets_its_first_offset_and_a_gap_or_an_old_epoch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    assert_eq!(create(&mut c, "idem", 1).await, 0);
    let r: InitProducerIdResponse = c
        .call(
            ApiKey::InitProducerId,
            2,
            &InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60000),
        )
        .await;
    let pid = r.producer_id.0;
    assert_eq!((r.error_code, r.producer_epoch), (0, 0), "{r:?}");
    assert!(pid >= 0);
    assert_eq!(produce(&mut c, "idem", batch(3, pid, 0, 0, 10)).await, (0, 0));
    assert_eq!(produce(&mut c, "idem", batch(2, pid, 0, 3, 10)).await, (0, 3));
    // A retry of the first batch: answered with its original offset, not written again.
    assert_eq!(produce(&mut c, "idem", batch(3, pid, 0, 0, 10)).await, (0, 0));
    // A gap in the sequence: OUT_OF_ORDER_SEQUENCE_NUMBER.
    assert_eq!(produce(&mut c, "idem", batch(1, pid, 0, 9, 10)).await.0, 45);
    // A bumped epoch restarts at 0; the old epoch is then fenced.
    assert_eq!(produce(&mut c, "idem", batch(1, pid, 1, 0, 10)).await, (0, 5));
    assert_eq!(produce(&mut c, "idem", batch(1, pid, 0, 5, 10)).await.0, 47);
    assert_eq!(offsets_of(&fetch(&mut c, "idem", 0, 0).await.records), vec![0, 1, 2, 3, 4, 5]);
    // Producer state is rebuilt from the log: after a restart the retry is still a duplicate.
    b.stop().await;
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    assert_eq!(produce(&mut c, "idem", batch(1, pid, 1, 0, 10)).await, (0, 5));
    assert_eq!(produce(&mut c, "idem", batch(1, pid, 1, 1, 10)).await, (0, 6));
    let r: InitProducerIdResponse = c
        .call(
            ApiKey::InitProducerId,
            2,
            &InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60000),
        )
        .await;
    assert!(r.producer_id.0 > pid, "producer ids are not reused after a restart");
}

#[tokio::test]
async fn a_fetch_inside_a_batch_returns_the_whole_batch_and_past_the_end_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    create(&mut c, "f", 1).await;
    assert_eq!(produce(&mut c, "f", batch(5, -1, -1, -1, 10)).await, (0, 0));
    assert_eq!(produce(&mut c, "f", batch(5, -1, -1, -1, 10)).await, (0, 5));
    assert_eq!(offsets_of(&fetch(&mut c, "f", 0, 0).await.records), (0..10).collect::<Vec<_>>());
    let p = fetch(&mut c, "f", 7, 0).await;
    assert_eq!((p.error_code, p.high_watermark), (0, 10));
    assert_eq!(offsets_of(&p.records), vec![5, 6, 7, 8, 9], "the batch holding offset 7, whole");
    let p = fetch(&mut c, "f", 11, 0).await;
    assert_eq!((p.error_code, p.high_watermark, p.log_start_offset), (1, 10, 0));
}

#[tokio::test]
async fn a_long_poll_fetch_at_the_end_is_answered_when_another_connection_appends() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    create(&mut c, "lp", 1).await;
    let mut reader = Conn::open(&b).await;
    let started = Instant::now();
    let corr = reader.send(ApiKey::Fetch, 11, &fetch_req("lp", 0, 30_000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(&mut c, "lp", batch(2, -1, -1, -1, 10)).await;
    let (got, mut body) = reader.recv_raw(ApiKey::Fetch, 11).await;
    let r = FetchResponse::decode(&mut body, 11).unwrap();
    assert_eq!(got, corr);
    assert_eq!(offsets_of(&r.responses[0].partitions[0].records), vec![0, 1]);
    assert!(started.elapsed() < Duration::from_secs(30), "woken by the append, not by max_wait");
}

#[tokio::test]
async fn acks_0_gets_no_response_and_the_next_request_is_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    create(&mut c, "a0", 1).await;
    c.send(ApiKey::Produce, 7, &produce_req("a0", batch(1, -1, -1, -1, 10), 0)).await;
    let p = fetch(&mut c, "a0", 0, 0).await;
    assert_eq!(p.high_watermark, 1, "the acks=0 record was written, and the fetch got the next response");
}

#[tokio::test]
async fn a_malformed_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut good = Conn::open(&b).await;
    let mut bad = Conn::open(&b).await;
    bad.s.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let mut rest = vec![];
    let n = tokio::time::timeout(Duration::from_secs(10), bad.s.read_to_end(&mut rest)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the broker closed the bad connection without answering");
    // An unknown API key closes that connection too.
    let mut unknown = Conn::open(&b).await;
    unknown.s.write_all(&[0, 0, 0, 8, 0x7f, 0x00, 0, 0, 0, 0, 0, 1]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), unknown.s.read_to_end(&mut rest)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(create(&mut good, "still-served", 1).await, 0, "other connections are served");
}

#[tokio::test]
async fn an_oversized_batch_a_corrupt_batch_and_an_invalid_topic_name_get_kafkas_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    create(&mut c, "big", 1).await;
    assert_eq!(produce(&mut c, "big", batch(1, -1, -1, -1, 1_100_000)).await.0, 10, "MESSAGE_TOO_LARGE");
    let mut corrupt = batch(2, -1, -1, -1, 10).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(produce(&mut c, "big", Bytes::from(corrupt)).await.0, 2, "CORRUPT_MESSAGE");
    assert_eq!(produce(&mut c, "no-such-topic", batch(1, -1, -1, -1, 10)).await.0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(create(&mut c, "bad/name", 1).await, 17, "INVALID_TOPIC_EXCEPTION");
    assert_eq!(create(&mut c, "big", 1).await, 36, "TOPIC_ALREADY_EXISTS");
    assert_eq!(fetch(&mut c, "big", 0, 0).await.high_watermark, 0, "nothing refused was written");
}

/// One batch of keyed records (`None`: null) stamped now, not idempotent.
fn keyed(records: &[(Option<&str>, Option<&str>)]) -> Bytes {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let text = |s: &Option<&str>| s.map(|s| Bytes::copy_from_slice(s.as_bytes()));
    encode(
        records.iter().enumerate().map(|(i, (k, v))| Record { timestamp: now, ..record(i as i64, text(k), text(v)) }),
    )
}

#[tokio::test]
async fn a_compacted_topic_refuses_keyless_records_and_reads_back_each_keys_latest_at_its_offset() {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    let config = |k: &'static str, v: &'static str| {
        CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str(k))
            .with_value(Some(StrBytes::from_static_str(v)))
    };
    let t = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("table")))
        .with_num_partitions(1)
        .with_replication_factor(1)
        // Every batch rolls a segment: all but the last are closed.
        .with_configs(vec![config("cleanup.policy", "compact"), config("segment.bytes", "1")]);
    let r: CreateTopicsResponse =
        c.call(ApiKey::CreateTopics, 5, &CreateTopicsRequest::default().with_topics(vec![t])).await;
    assert_eq!(r.topics[0].error_code, 0);

    let r: ProduceResponse = c
        .call(ApiKey::Produce, 8, &produce_req("table", keyed(&[(Some("a"), Some("1")), (None, Some("x"))]), -1))
        .await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 87, "INVALID_RECORD");
    assert!(p.error_message.as_ref().unwrap().contains("without key"), "{:?}", p.error_message);

    for (i, kv) in [(Some("a"), Some("a1")), (Some("b"), Some("b1")), (Some("a"), Some("a2")), (Some("b"), None)]
        .into_iter()
        .chain([(Some("z"), Some("z1"))])
        .enumerate()
    {
        assert_eq!(produce(&mut c, "table", keyed(&[kv])).await, (0, i as i64));
    }
    keyflow_broker::apply_compaction(&b.state);

    // Read from 0 to the end as a consumer does, batch after batch.
    let (mut at, mut got) = (0i64, vec![]);
    while at < 5 {
        let pd = fetch(&mut c, "table", at, 0).await;
        assert_eq!((pd.error_code, pd.high_watermark), (0, 5));
        let mut records = pd.records.unwrap();
        assert!(!records.is_empty(), "a fetch at {at} returns the next batch");
        while records.has_remaining() {
            let last = i64::from_be_bytes(records[..8].try_into().unwrap())
                + i32::from_be_bytes(records[23..27].try_into().unwrap()) as i64;
            let set = RecordBatchDecoder::decode(&mut records).unwrap();
            got.extend(set.records.into_iter().map(|r| (r.offset, r.key.unwrap(), r.value)));
            at = last + 1;
        }
    }
    let want = vec![
        (2, Bytes::from("a"), Some(Bytes::from("a2"))),
        (3, Bytes::from("b"), None), // a tombstone younger than delete.retention.ms
        (4, Bytes::from("z"), Some(Bytes::from("z1"))),
    ];
    assert_eq!(got, want);
    b.stop().await;
}

#[tokio::test]
async fn a_transactional_produce_needs_its_partition_in_the_open_transaction_and_describe_producers_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut c = Conn::open(&b).await;
    assert_eq!(create(&mut c, "t", 1).await, 0);
    let txn_id = TransactionalId(StrBytes::from_static_str("tx"));
    let init: InitProducerIdResponse = c
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(txn_id.clone()))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await;
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id, init.producer_epoch);
    let produce_txn = |records| produce_req("t", records, -1).with_transactional_id(Some(txn_id.clone()));
    // KIP-890: a partition not added to the open transaction is refused (no hanging transaction).
    let r: ProduceResponse = c.call(ApiKey::Produce, 7, &produce_txn(batch_of(3, pid.0, epoch, 0, 5, true))).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 48, "INVALID_TXN_STATE");
    let add = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id.clone())
        .with_v3_and_below_producer_id(pid)
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![0])]);
    let added: AddPartitionsToTxnResponse = c.call(ApiKey::AddPartitionsToTxn, 3, &add).await;
    assert_eq!(added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, 0);
    let r: ProduceResponse = c.call(ApiKey::Produce, 7, &produce_txn(batch_of(3, pid.0, epoch, 0, 5, true))).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);

    let describe = || {
        DescribeProducersRequest::default().with_topics(vec![describe_producers_request::TopicRequest::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_indexes(vec![0])])
    };
    let d: DescribeProducersResponse = c.call(ApiKey::DescribeProducers, 0, &describe()).await;
    let p = &d.topics[0].partitions[0].active_producers[0];
    assert_eq!(
        (p.producer_id, p.producer_epoch, p.last_sequence, p.current_txn_start_offset),
        (pid, epoch as i32, 2, 0)
    );
    let l: ListTransactionsResponse = c.call(ApiKey::ListTransactions, 0, &ListTransactionsRequest::default()).await;
    assert_eq!(l.transaction_states[0].transaction_state.as_str(), "Ongoing");

    let end = EndTxnRequest::default()
        .with_transactional_id(txn_id.clone())
        .with_producer_id(pid)
        .with_producer_epoch(epoch)
        .with_committed(true);
    let e: EndTxnResponse = c.call(ApiKey::EndTxn, 3, &end).await;
    assert_eq!(e.error_code, 0);
    let d: DescribeProducersResponse = c.call(ApiKey::DescribeProducers, 0, &describe()).await;
    assert_eq!(d.topics[0].partitions[0].active_producers[0].current_txn_start_offset, -1, "no open transaction");
    let l: ListTransactionsResponse = c.call(ApiKey::ListTransactions, 0, &ListTransactionsRequest::default()).await;
    assert_eq!(l.transaction_states[0].transaction_state.as_str(), "CompleteCommit");
    // The commit marker took offset 3: a read_committed fetch reaches the end.
    let f = fetch(&mut c, "t", 0, 0).await;
    assert_eq!((f.high_watermark, f.last_stable_offset), (4, 4));
    b.stop().await;
}
