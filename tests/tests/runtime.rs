//! The worker runtime with its test worker (`worker counter`: per customer it
//! counts orders and emits one `PointsAwarded` whose balance is the running
//! count) against the real broker: every input causes exactly one distinct
//! output even when instances are killed with SIGKILL mid-run, per-key order
//! holds, re-sent facts are applied once, and poison goes to the DLQ.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use keyflow_e2e::{bin, options, run, start, text};
use keyflow_infra::inspect::read_raw;
use keyflow_producers::gen::Generator;
use keyflow_producers::orders::{OrderGen, OrderMix};
use keyflow_schemas::events::{AnyEvent, LoyaltyEvent, OrderEvent};
use keyflow_schemas::topics::TopicSpec;
use keyflow_schemas::{Codec, RegistryConfig};

const START: i64 = 1_767_225_600_000;

fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        replication_factor: 1,
        config: Default::default(),
        family: None,
        events: vec![],
    }
}

/// What the counter must produce: per customer, the orders it counts, in order.
fn expected(count: u64, seed: u64) -> (BTreeMap<String, Vec<String>>, usize) {
    let mix = OrderMix { customers: 300, ..OrderMix::default() };
    let mut g = OrderGen::new(mix, seed, START, 1.0);
    let mut seen = HashSet::new();
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut poison = 0;
    for _ in 0..count {
        let p = g.next_event();
        if let AnyEvent::Order(OrderEvent::OrderPlaced(o)) = p.event {
            // Every record that breaks the contract goes to the DLQ, re-sent copies too:
            // only applied facts are remembered as seen.
            if o.total_minor < 0 {
                poison += 1;
                continue;
            }
            if !seen.insert(o.metadata.idempotency_key.clone()) {
                continue;
            }
            per_key.entry(o.customer_id.clone()).or_default().push(o.order_id.clone());
        }
    }
    (per_key, poison)
}

fn spawn_worker(brokers: &str, registry: &str, instance: &str, log: &std::path::Path) -> std::process::Child {
    spawn_worker_with(brokers, registry, instance, log, &[])
}

fn spawn_worker_with(
    brokers: &str,
    registry: &str,
    instance: &str,
    log: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    // An empty instance id makes a dynamic member (it leaves the group at once on SIGTERM).
    let membership: &[&str] = if instance.is_empty() { &[] } else { &["--instance-id", instance] };
    std::process::Command::new(bin("worker"))
        .args(["counter", "-b", brokers, "--registry", registry])
        .args(membership)
        .args(["--max-batch", "200", "--delay", "2ms", "--max-in-flight", "4"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap()
}

/// Checks `loyalty` against the oracle: one record per event_id (copies are
/// byte-identical), per key the orders of first occurrences in input order
/// with balances 1..n. Returns the number of raw copies.
async fn verify_outputs(
    stack: &keyflow_infra::stack::Stack,
    codec: &Codec,
    want: &BTreeMap<String, Vec<String>>,
) -> usize {
    let records = read_raw(&stack.kafka, "loyalty", usize::MAX).await.unwrap();
    let mut by_id: HashMap<String, Vec<u8>> = HashMap::new();
    let mut copies = 0;
    let mut got: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for r in &records {
        let payload = r.payload.clone().unwrap();
        let e: LoyaltyEvent = codec.decode("loyalty", Some(&payload)).await.unwrap();
        let LoyaltyEvent::PointsAwarded(p) = e else { panic!("counter emits PointsAwarded only") };
        if let Some(prev) = by_id.get(&p.metadata.event_id) {
            assert_eq!(prev, &payload, "two different records share event_id {}", p.metadata.event_id);
            copies += 1;
            continue;
        }
        by_id.insert(p.metadata.event_id.clone(), payload);
        got.entry(p.customer_id.clone()).or_default().push((p.order_id.clone(), p.balance));
    }
    for (key, orders) in want {
        let g = got.get(key).unwrap_or_else(|| panic!("no outputs for {key}"));
        let order_ids: Vec<&String> = g.iter().map(|(o, _)| o).collect();
        assert_eq!(order_ids, orders.iter().collect::<Vec<_>>(), "per-key order of first occurrences for {key}");
        let balances: Vec<i64> = g.iter().map(|(_, b)| *b).collect();
        assert_eq!(balances, (1..=orders.len() as i64).collect::<Vec<_>>(), "exact state for {key}");
    }
    copies
}

/// Distinct output event_ids on `loyalty` and the number of raw copies.
async fn outputs(stack: &keyflow_infra::stack::Stack, codec: &Codec) -> (HashSet<String>, usize) {
    let mut ids = HashSet::new();
    let mut copies = 0;
    for r in read_raw(&stack.kafka, "loyalty", usize::MAX).await.unwrap() {
        let e: LoyaltyEvent = codec.decode("loyalty", r.payload.as_deref()).await.unwrap();
        if !ids.insert(keyflow_schemas::events::TopicEvent::metadata(&e).event_id.clone()) {
            copies += 1;
        }
    }
    (ids, copies)
}

/// A stack with the counter's topics and `count` orders (seed 3) on `orders`.
async fn stack_with_orders(dir: &std::path::Path, count: u64) -> keyflow_infra::stack::Stack {
    let stack = start(&options(dir, 3)).await;
    keyflow_infra::kafka::create_topics(&stack.kafka, &[spec("counter-state", 3), spec("counter.dlq", 1)], None)
        .await
        .unwrap();
    let out = run(
        "producer",
        &[
            "orders",
            "-b",
            &stack.kafka.brokers,
            "--registry",
            &stack.registry.registry,
            "--rate",
            "0",
            "--count",
            &count.to_string(),
            "--seed",
            "3",
            "--start-time",
            &START.to_string(),
            "--event-step-ms",
            "1",
            "--customers",
            "300",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out).1);
    stack
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_exits_0_within_10_s_and_a_restart_reprocesses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let count = 10_000u64;
    let stack = stack_with_orders(dir.path(), count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let (want, _) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let log = dir.path().join("worker.log");
    let addr = format!("127.0.0.1:{}", keyflow_e2e::free_port());
    let mut w = spawn_worker_with(&brokers, &registry, "a", &log, &["--metrics-addr", &addr]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ids, _) = outputs(&stack, &codec).await;
        if !ids.is_empty() || Instant::now() > deadline {
            break;
        }
    }
    // Observability while it works: ready after restore, health asks the broker, metrics move.
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        let log = log.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap()),
                Err(e) => panic!("{url}: {e:?}; worker log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
            }
        }
    };
    assert_eq!(get("/ready").await.0, 200);
    assert_eq!(get("/health").await.0, 200);
    let (_, metrics) = get("/metrics").await;
    for name in [
        keyflow_schemas::metrics::WORKER_PROCESSED,
        keyflow_schemas::metrics::WORKER_PRODUCED,
        keyflow_schemas::metrics::WORKER_CHECKPOINTS,
        keyflow_schemas::metrics::WORKER_E2E_LATENCY_SECONDS,
    ] {
        assert!(metrics.contains(name), "{name} not exported:\n{metrics}");
    }
    assert!(metrics.contains(r#"outcome="ok""#) && metrics.contains(r#"worker="counter""#), "{metrics}");
    let term = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(term.elapsed() < Duration::from_secs(10), "worker did not stop within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let (before, _) = outputs(&stack, &codec).await;
    assert!(before.len() < want_total, "stopped mid-run ({} of {want_total})", before.len());

    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    let deadline = Instant::now() + Duration::from_secs(180);
    let (ids, copies) = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ids, copies) = outputs(&stack, &codec).await;
        if ids.len() >= want_total || Instant::now() > deadline {
            break (ids, copies);
        }
    };
    let _ = w.kill();
    let _ = w.wait();
    assert_eq!(ids.len(), want_total);
    assert_eq!(copies, 0, "a graceful stop leaves no copy: nothing was reprocessed");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_loses_nothing_duplicates_nothing_and_keeps_per_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let count = 20_000u64;
    let stack = stack_with_orders(dir.path(), count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let (want, poison) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();

    let log = dir.path().join("workers.log");
    let mut a = spawn_worker(&brokers, &registry, "a", &log);
    let mut b = spawn_worker(&brokers, &registry, "b", &log);
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut distinct = 0;
    let mut last_kill = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let records = read_raw(&stack.kafka, "loyalty", usize::MAX).await.unwrap();
        let mut ids = HashSet::new();
        for r in &records {
            let e: LoyaltyEvent = codec.decode("loyalty", r.payload.as_deref()).await.unwrap();
            ids.insert(keyflow_schemas::events::TopicEvent::metadata(&e).event_id.clone());
        }
        distinct = ids.len();
        if distinct >= want_total {
            break;
        }
        if kills < 6 && distinct > 0 && last_kill.elapsed() > Duration::from_millis(2500) {
            last_kill = Instant::now();
            // SIGKILL one instance mid-run and bring it back.
            let victim = if kills % 2 == 0 { &mut a } else { &mut b };
            victim.kill().unwrap();
            victim.wait().unwrap();
            kills += 1;
            *victim = spawn_worker(&brokers, &registry, if kills % 2 == 1 { "a" } else { "b" }, &log);
        }
    }
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        distinct,
        want_total,
        "every input caused one output (kills: {kills}); worker logs:\n{}",
        &logs[logs.len().saturating_sub(4000)..]
    );
    assert!(kills >= 2, "the run was interrupted by kill -9 ({kills} times)");

    let copies = verify_outputs(&stack, &codec, &want).await;
    let dlq = read_raw(&stack.kafka, "counter.dlq", usize::MAX).await.unwrap();
    let dlq_offsets: HashSet<(String, String)> = dlq
        .iter()
        .map(|r| {
            let h = |k: &str| {
                r.headers
                    .iter()
                    .find(|(n, _)| n == k)
                    .and_then(|(_, v)| v.clone())
                    .map(|v| String::from_utf8(v).unwrap())
            };
            assert_eq!(h("worker").as_deref(), Some("counter"));
            assert_eq!(h("error.class").as_deref(), Some("contract_violation"));
            (h("source.partition").unwrap(), h("source.offset").unwrap())
        })
        .collect();
    assert_eq!(dlq_offsets.len(), poison, "each poison record in the DLQ (distinct by source offset)");
    eprintln!("kills {kills}, outputs {want_total}, raw copies {copies}, dlq {poison}");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn six_kinds_of_poison_land_in_the_dlq_with_headers_while_good_records_flow() {
    use keyflow_schemas::samples::samples;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let count = 2_000u64;
    let stack = stack_with_orders(dir.path(), count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let s = samples("poison");
    let OrderEvent::OrderPlaced(mut good) = s.orders[0].clone() else { unreachable!("sample 0 is an order") };
    good.customer_id = "customer-poison".into();
    let good_bytes = codec.encode("orders", &OrderEvent::from(good.clone())).await.unwrap();
    let mut negative = good.clone();
    negative.total_minor = -1;
    negative.metadata.event_id = "negative".into();
    negative.metadata.idempotency_key = "negative".into();
    let mut unknown_id = good_bytes.clone();
    unknown_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let wrong_type = codec.encode("orders", &s.payments[0]).await.unwrap();
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("not_wire_format", b"{\"not\": \"avro\"}".to_vec()),
        ("unknown_schema", unknown_id),
        ("wrong_record_type", wrong_type),
        ("malformed_avro", good_bytes[..good_bytes.len() / 2].to_vec()),
        ("contract_violation", codec.encode("orders", &OrderEvent::from(negative)).await.unwrap()),
        ("oversized", vec![0u8; 1_500_000]),
    ];
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "3000000")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut sent = HashMap::new();
    for (class, bytes) in &poison {
        let d = producer
            .send(FutureRecord::to("orders").key("customer-poison").payload(bytes), Duration::from_secs(30))
            .await
            .unwrap();
        sent.insert((d.partition.to_string(), d.offset.to_string()), class.to_string());
    }
    // A good record of the same key after the poison still flows.
    producer
        .send(FutureRecord::to("orders").key("customer-poison").payload(&good_bytes), Duration::from_secs(30))
        .await
        .unwrap();

    let (want, poison_in_stream) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum::<usize>() + 1;
    let log = dir.path().join("worker.log");
    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ids = HashSet::new();
    while Instant::now() < deadline && ids.len() < want_total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ids = outputs(&stack, &codec).await.0;
    }
    let _ = w.kill();
    let _ = w.wait();
    assert_eq!(ids.len(), want_total, "good records kept flowing");
    let dlq = read_raw(&stack.kafka, "counter.dlq", usize::MAX).await.unwrap();
    assert_eq!(dlq.len(), poison.len() + poison_in_stream);
    let mut found = HashMap::new();
    for r in &dlq {
        let h = |k: &str| {
            r.headers.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone()).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(h("worker").as_deref(), Some("counter"));
        assert_eq!(h("source.topic").as_deref(), Some("orders"));
        assert!(h("error.message").is_some_and(|m| !m.is_empty()));
        if let Some(class) = sent.get(&(h("source.partition").unwrap(), h("source.offset").unwrap())) {
            assert_eq!(h("error.class").as_deref(), Some(class.as_str()), "{r:?}");
            found.insert(class.clone(), r.payload.clone().unwrap_or_default());
        }
    }
    assert_eq!(found.len(), poison.len(), "every kind in the DLQ: {:?}", found.keys());
    for (class, bytes) in &poison {
        let kept = &found[*class];
        if *class == "oversized" {
            assert_eq!(kept.len(), 64 * 1024);
        } else {
            assert_eq!(kept, bytes, "{class}: original bytes kept");
        }
    }
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_s_registry_outage_sends_no_good_record_to_the_dlq_and_processing_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let count = 3_000u64;
    let mut stack = stack_with_orders(dir.path(), count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let (want, poison) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let log = dir.path().join("worker.log");
    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while outputs(&stack, &codec).await.0.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Outage: the registry goes away, and the worker restarts with nothing cached.
    stack.stop_registry().await;
    w.kill().unwrap();
    w.wait().unwrap();
    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let dlq_during = read_raw(&stack.kafka, "counter.dlq", usize::MAX).await.unwrap();
    assert!(
        dlq_during.iter().all(|r| r
            .headers
            .iter()
            .any(|(k, v)| k == "error.class" && v.as_deref() == Some(b"contract_violation".as_slice()))),
        "only real poison in the DLQ during the outage"
    );
    assert!(w.try_wait().unwrap().is_none(), "the worker keeps retrying instead of exiting");
    stack.start_registry().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ids = HashSet::new();
    while ids.len() < want_total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ids = outputs(&stack, &codec).await.0;
    }
    let _ = w.kill();
    let _ = w.wait();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(ids.len(), want_total, "processing resumed by itself");
    assert!(logs.contains("registry unavailable"), "the outage is visible in the logs");
    let dlq = read_raw(&stack.kafka, "counter.dlq", usize::MAX).await.unwrap();
    let offsets: HashSet<_> = dlq
        .iter()
        .map(|r| r.headers.iter().filter(|(k, _)| k.starts_with("source.")).cloned().collect::<Vec<_>>())
        .collect();
    assert_eq!(offsets.len(), poison, "no good record in the DLQ");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_storm_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_with_orders(dir.path(), 1).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    // Orders keep arriving during the storm (same seed as the oracle; one order was produced above).
    let sum = dir.path().join("producer.json");
    let producer = tokio::process::Command::new(bin("producer"))
        .args([
            "orders",
            "-b",
            &brokers,
            "--registry",
            &registry,
            "--rate",
            "250",
            "--duration",
            "60s",
            "--seed",
            "3",
            "--start-time",
            &START.to_string(),
            "--event-step-ms",
            "1",
            "--customers",
            "300",
            "--summary-json",
            sum.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = dir.path().join("workers.log");
    let mut a = spawn_worker(&brokers, &registry, "a", &log);
    let mut b: Option<std::process::Child> = None;
    let mut toggles = 0;
    let storm = Instant::now();
    while storm.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(6)).await;
        match b.take() {
            Some(mut c) => {
                // A dynamic member leaving: SIGTERM, it leaves the group at once.
                let _ = std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
                let _ = c.wait();
            }
            None => b = Some(spawn_worker(&brokers, &registry, "", &log)),
        }
        toggles += 1;
    }
    let out = producer.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let sent = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&sum).unwrap()).unwrap()["sent"]
        .as_u64()
        .unwrap();
    // The stream restarts seed 3, so the order stack_with_orders produced comes again
    // as a byte copy (same event_id), which the worker drops: the oracle is the stream.
    let (want, _) = expected(sent, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut ids = HashSet::new();
    while ids.len() < want_total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ids = outputs(&stack, &codec).await.0;
    }
    for c in [Some(&mut a), b.as_mut()].into_iter().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(ids.len(), want_total, "worker logs:\n{}", &logs[logs.len().saturating_sub(3000)..]);
    assert!(toggles >= 9, "{toggles} joins/leaves");
    assert!(!logs.contains("not co-partitioned"));
    let copies = verify_outputs(&stack, &codec, &want).await;
    eprintln!("storm: {toggles} joins/leaves, {want_total} outputs, {copies} raw copies");
    stack.down().await;
}
