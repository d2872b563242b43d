//! Benchmark: the embedded broker (the release `broker` binary) against
//! librdkafka's mock cluster (in memory, in the benchmark's process), in the
//! same run, rounds alternating; librdkafka is the client of both.
//!
//! 1. Produce: `BENCH_RECORDS` (200,000) records of 200 bytes, idempotent,
//!    acks=all, to a 6-partition topic, timed until the last acknowledgement.
//! 2. Produce → consume latency: 4 consumer groups × 2 members on a
//!    6-partition topic while one producer sends `BENCH_RATE` (1,000) msg/s
//!    for `BENCH_SECS` (20 s); latency is the time a member receives a record
//!    minus the record's create timestamp, over every group's receipts after
//!    the first 3 s.
//!
//! Run: `cargo build --release --bins && cargo bench -p keyflow-e2e --bench broker`.
//! `BENCH_ROUNDS` (3) rounds of each; the median round is reported. Writes
//! its section of BENCHMARKS.md.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyflow_devstack::broker::Broker;
use keyflow_e2e::bench::{bin, env, machine, write_section};
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::topics::TopicSpec;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

const PARTITIONS: i32 = 6;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

/// Messages/s of an idempotent acks=all producer sending `count` records.
async fn produce_round(brokers: &str, topic: &str, count: u64) -> f64 {
    let p = producer(brokers);
    let payload = vec![b'x'; 200];
    let started = Instant::now();
    let mut acks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let key = format!("key-{}", i % 1000);
        loop {
            match p.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                Ok(f) => {
                    acks.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err((e, _)) => panic!("{e}"),
            }
        }
    }
    for f in acks {
        f.await.expect("delivered").expect("acknowledged");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// p50 and p99 (ms) of produce → consume latency, 4 groups × 2 members.
async fn latency_round(brokers: &str, topic: &str, rate: u64, secs: u64, round: u64) -> (i64, i64, usize) {
    let samples = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut members = vec![];
    for g in 0..4 {
        for _ in 0..2 {
            let c: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", format!("bench-{round}-{g}"))
                .set("auto.offset.reset", "latest")
                .set("enable.auto.commit", "true")
                .set("session.timeout.ms", "10000")
                .create()
                .unwrap();
            c.subscribe(&[topic]).unwrap();
            members.push(Arc::new(c));
        }
    }
    let measure_from = Arc::new(Mutex::new(i64::MAX));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = vec![];
    for c in &members {
        let (c, samples, from, stop) = (c.clone(), samples.clone(), measure_from.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await else { continue };
                let ts = m.timestamp().to_millis().unwrap_or(0);
                if ts >= *from.lock().unwrap() {
                    samples.lock().unwrap().push(now_ms() - ts);
                }
            }
        }));
    }
    // Every member has its partitions before the clock starts.
    let ready = Instant::now();
    while members.iter().any(|c| c.assignment().map(|a| a.count()).unwrap_or(0) == 0) {
        assert!(ready.elapsed() < Duration::from_secs(60), "groups did not settle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = producer(brokers);
    let payload = vec![b'x'; 200];
    let start = Instant::now();
    *measure_from.lock().unwrap() = now_ms() + 3_000;
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut i = 0u64;
    let mut interval = tokio::time::interval(tick);
    while start.elapsed() < Duration::from_secs(secs) {
        interval.tick().await;
        for _ in 0..per_tick {
            let key = format!("key-{}", i % 1000);
            let _ = p.send_result(FutureRecord::to(topic).key(&key).payload(&payload));
            i += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let mut s = samples.lock().unwrap().clone();
    s.sort_unstable();
    let q = |f: f64| s.get(((s.len() as f64 * f) as usize).min(s.len().saturating_sub(1))).copied().unwrap_or(-1);
    (q(0.5), q(0.99), s.len())
}

fn median<T: Clone>(mut v: Vec<(f64, T)>) -> (f64, T) {
    v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    v[v.len() / 2].clone()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records = env("BENCH_RECORDS", 200_000);
    let rate = env("BENCH_RATE", 1_000);
    let secs = env("BENCH_SECS", 20);
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().unwrap();
    let port = keyflow_e2e::free_port();
    let broker = Broker::start(&bin("broker"), &dir.path().join("broker"), port).await.unwrap();
    let ours = broker.bootstrap.clone();
    let mock = MockCluster::<DefaultProducerContext>::new(1).unwrap();
    let theirs = mock.bootstrap_servers();

    let (mut p_ours, mut p_mock, mut l_ours, mut l_mock) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let topic = format!("produce-{round}");
        keyflow_devstack::kafka::create_topics(
            &KafkaArgs::new(ours.clone()),
            &[TopicSpec::new(&topic, PARTITIONS)],
            None,
        )
        .await
        .unwrap();
        mock.create_topic(&topic, PARTITIONS, 1).unwrap();
        let a = produce_round(&ours, &topic, records).await;
        let b = produce_round(&theirs, &topic, records).await;
        eprintln!("produce round {round}: {a:.0} msg/s embedded, {b:.0} msg/s mock");
        p_ours.push((a, ()));
        p_mock.push((b, ()));

        let topic = format!("latency-{round}");
        keyflow_devstack::kafka::create_topics(
            &KafkaArgs::new(ours.clone()),
            &[TopicSpec::new(&topic, PARTITIONS)],
            None,
        )
        .await
        .unwrap();
        mock.create_topic(&topic, PARTITIONS, 1).unwrap();
        let a = latency_round(&ours, &topic, rate, secs, round).await;
        let b = latency_round(&theirs, &topic, rate, secs, round + 100).await;
        eprintln!("latency round {round}: p50/p99 {}/{} ms embedded, {}/{} ms mock", a.0, a.1, b.0, b.1);
        l_ours.push((a.1 as f64, a));
        l_mock.push((b.1 as f64, b));
    }
    broker.stop().await;
    let all = |v: &Vec<(f64, ())>| v.iter().map(|(x, _)| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let (po, _) = median(p_ours.clone());
    let (pm, _) = median(p_mock.clone());
    let (_, lo) = median(l_ours.clone());
    let (_, lm) = median(l_mock.clone());
    let rounds_l = |v: &Vec<(f64, (i64, i64, usize))>| {
        v.iter().map(|(_, (a, b, _))| format!("{a}/{b}")).collect::<Vec<_>>().join(", ")
    };
    let body = format!(
        "## Embedded broker vs librdkafka's mock cluster\n\n\
         `cargo build --release --bins && cargo bench -p keyflow-e2e --bench broker` (BENCH_RECORDS={records}, BENCH_RATE={rate}, BENCH_SECS={secs}, BENCH_ROUNDS={rounds}), \
         release build on {}: the `broker` binary (keyflow-broker, data on local disk, `--fsync never`) and librdkafka's mock cluster \
         (in memory, inside the benchmark process), alternating rounds in one run, librdkafka 2.12 as the client of both, everything on the same 2 cores. \
         The median round is shown.\n\n\
         | benchmark | embedded broker | mock cluster | ratio | target |\n|---|---|---|---|---|\n\
         | idempotent acks=all produce, 200 B records, 6 partitions (msg/s; rounds: {} / {}) | {po:.0} | {pm:.0} | {:.2} | ≥ 100,000 |\n\
         | produce → consume latency, 4 groups × 2 members at {rate} msg/s, p50/p99 ms (rounds: {} / {}) | {}/{} ({} samples) | {}/{} | {:.2} (p99) | p99 ≤ 20 ms |\n",
        machine(),
        all(&p_ours),
        all(&p_mock),
        po / pm,
        rounds_l(&l_ours),
        rounds_l(&l_mock),
        lo.0,
        lo.1,
        lo.2,
        lm.0,
        lm.1,
        lo.1 as f64 / lm.1.max(1) as f64,
    );
    write_section("broker", &body);
    println!("{body}");
}
