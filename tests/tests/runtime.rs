//! The worker runtime with its test worker (`worker counter`: per customer it
//! counts orders and emits one `PointsAwarded` whose balance is the running
//! count) against the real broker: every input causes exactly one distinct
//! output even when instances are killed with SIGKILL mid-run, per-key order
//! holds, re-sent facts are applied once, and poison goes to the DLQ.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keyflow_devstack::inspect::read_raw;
use keyflow_e2e::counter::{
    expected, kill_all, log_tail, outputs, spawn_worker_with, stack_with_orders, verify_outputs, Tail, START,
};
use keyflow_e2e::{bin, metric, wait_ready};
use keyflow_schemas::events::OrderEvent;
use keyflow_schemas::{Codec, RegistryConfig};

fn spawn_worker(brokers: &str, registry: &str, instance: &str, log: &std::path::Path) -> std::process::Child {
    spawn_worker_with(brokers, registry, instance, log, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_exits_0_within_10_s_and_a_restart_reprocesses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let count = 10_000u64;
    let stack = stack_with_orders(dir.path(), 3, count).await;
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
        let (ids, _) = outputs(&stack.kafka, &codec).await;
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
    let (before, _) = outputs(&stack.kafka, &codec).await;
    assert!(before.len() < want_total, "stopped mid-run ({} of {want_total})", before.len());

    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    let deadline = Instant::now() + Duration::from_secs(180);
    let (ids, copies) = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ids, copies) = outputs(&stack.kafka, &codec).await;
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
async fn kill_9_twenty_times_in_200k_records_loses_nothing_duplicates_nothing_and_keeps_per_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let count = 200_000u64;
    let stack = stack_with_orders(dir.path(), 3, count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let (want, poison) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();

    let log = dir.path().join("workers.log");
    // Small snapshots, so kills also land in and after snapshot writes and restores start from one.
    let extra = ["--snapshot-interval-bytes", "2000000", "--delay", "0ms", "--max-in-flight", "16"];
    let spawn = |instance: &str| spawn_worker_with(&brokers, &registry, instance, &log, &extra);
    let mut a = spawn("a");
    let mut b = spawn("b");
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let mut tail = Tail::new(&stack.kafka.brokers, "loyalty", 3);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut distinct = 0;
    let mut last_kill = Instant::now();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    while Instant::now() < deadline {
        distinct = tail.distinct(&codec).await;
        if distinct >= want_total {
            break;
        }
        // SIGKILL one instance at a random moment (every 0.15-0.65 s while there is work left)
        // and bring it back; the last kills leave a tenth of the run to finish.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let gap = Duration::from_millis(150 + rng % 500);
        if kills < 20 && distinct > 0 && distinct < want_total * 9 / 10 && last_kill.elapsed() > gap {
            last_kill = Instant::now();
            let (victim, id) = if rng.is_multiple_of(2) { (&mut a, "a") } else { (&mut b, "b") };
            victim.kill().unwrap();
            victim.wait().unwrap();
            kills += 1;
            *victim = spawn(id);
        }
    }
    kill_all([&mut a, &mut b]);
    assert_eq!(distinct, want_total, "every input caused one output (kills: {kills}):\n{}", log_tail(&log));
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(kills >= 20, "the run was interrupted by kill -9 at least 20 times ({kills})");
    assert!(logs.contains("state snapshot written"), "snapshots were written during the run");

    let copies = verify_outputs(&stack.kafka, &codec, &want).await;
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
    let stack = stack_with_orders(dir.path(), 3, count).await;
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
    // Kafka refuses records above a topic's max.message.bytes (1 MiB by
    // default): raise it for `orders`, as an operator would, to let one in.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let raise = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("orders"))
        .set("max.message.bytes", "3000000");
    let altered = admin.alter_configs(&[raise], &rdkafka::admin::AdminOptions::new()).await.unwrap();
    assert!(altered.iter().all(|r| r.is_ok()), "{altered:?}");
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
    let metrics = format!("127.0.0.1:{}", keyflow_e2e::free_port());
    let mut w = spawn_worker_with(&brokers, &registry, "a", &log, &["--metrics-addr", &metrics]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ids = HashSet::new();
    while Instant::now() < deadline && ids.len() < want_total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ids = outputs(&stack.kafka, &codec).await.0;
    }
    // Every dead-lettered input counts as outcome `dlq`, poison the worker never saw included.
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let dlq_outcomes = keyflow_devstack::pipeline::metric_sum(
        &text,
        keyflow_schemas::metrics::WORKER_PROCESSED,
        Some(("outcome", "dlq")),
    );
    assert_eq!(dlq_outcomes as usize, poison.len() + poison_in_stream, "processed{{outcome=dlq}}");
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
    let mut stack = stack_with_orders(dir.path(), 3, count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let (want, poison) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let log = dir.path().join("worker.log");
    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while outputs(&stack.kafka, &codec).await.0.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The worker restarts with nothing cached, and once it is past its
    // start-up check (which would refuse a registry that never answers),
    // the registry goes away.
    w.kill().unwrap();
    w.wait().unwrap();
    let started = std::fs::read_to_string(&log).unwrap_or_default().matches("worker started").count();
    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    while std::fs::read_to_string(&log).unwrap_or_default().matches("worker started").count() == started {
        assert!(Instant::now() < deadline, "the worker did not start:\n{}", log_tail(&log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.stop_registry().await;
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
        ids = outputs(&stack.kafka, &codec).await.0;
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
    let stack = stack_with_orders(dir.path(), 3, 1).await;
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
    let mut b: Option<(std::process::Child, String)> = None;
    let mut toggles = 0;
    let storm = Instant::now();
    while storm.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(4)).await;
        match b.take() {
            Some((mut c, metrics)) => {
                // A dynamic member leaving a few seconds after it has joined:
                // SIGTERM, it leaves the group at once. (On the embedded broker
                // a member that leaves while a round is still settling is not
                // removed until its session times out, and chains of those
                // wedge the group: infra/BROKER-NOTES.md.)
                let joined = Instant::now() + Duration::from_secs(60);
                while Instant::now() < joined
                    && !reqwest::get(format!("http://{metrics}/ready")).await.is_ok_and(|r| r.status().is_success())
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
                let _ = c.wait();
            }
            None => {
                let metrics = format!("127.0.0.1:{}", keyflow_e2e::free_port());
                b = Some((spawn_worker_with(&brokers, &registry, "", &log, &["--metrics-addr", &metrics]), metrics));
            }
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
        ids = outputs(&stack.kafka, &codec).await.0;
    }
    kill_all([Some(&mut a), b.as_mut().map(|(c, _)| c)].into_iter().flatten());
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(ids.len(), want_total, "worker logs:\n{}", log_tail(&log));
    assert!(toggles >= 8, "{toggles} joins/leaves");
    assert!(!logs.contains("not co-partitioned"));
    let copies = verify_outputs(&stack.kafka, &codec, &want).await;
    eprintln!("storm: {toggles} joins/leaves, {want_total} outputs, {copies} raw copies");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_restores_from_the_latest_snapshot_without_reading_the_whole_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let count = 12_000u64;
    let stack = stack_with_orders(dir.path(), 3, count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let (want, _) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let log = dir.path().join("worker.log");
    // The whole history stays, so the restore could read it all; the state
    // lives in memory, so the restore rebuilds it from the changelog.
    let extra = [
        "--snapshot-interval-bytes",
        "100000",
        "--max-batch",
        "50",
        "--delay",
        "0ms",
        "--keep-changelog-history",
        "--state-store",
        "memory",
    ];
    let mut w = spawn_worker_with(&brokers, &registry, "a", &log, &extra);
    let mut tail = Tail::new(&stack.kafka.brokers, "loyalty", 3);
    let deadline = Instant::now() + Duration::from_secs(300);
    while tail.distinct(&codec).await < want_total * 2 / 3 && Instant::now() < deadline {}
    // A crash, not a clean stop: the restore must rebuild everything from the changelog.
    w.kill().unwrap();
    w.wait().unwrap();
    let changelog = read_raw(&stack.kafka, "counter-state", usize::MAX).await.unwrap().len();
    let addr = format!("127.0.0.1:{}", keyflow_e2e::free_port());
    let mut w = spawn_worker_with(&brokers, &registry, "a", &log, &[&extra[..], &["--metrics-addr", &addr]].concat());
    let page = wait_ready(&addr, &log).await;
    let read = metric(&page, keyflow_schemas::metrics::WORKER_RESTORE_RECORDS) as usize;
    while tail.distinct(&codec).await < want_total && Instant::now() < deadline {}
    let _ = w.kill();
    let _ = w.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("state snapshot written"), "snapshots were written");
    assert!(
        read * 4 < changelog,
        "the restore read {read} of {changelog} changelog records: it must start at the snapshot"
    );
    let copies = verify_outputs(&stack.kafka, &codec, &want).await;
    eprintln!("restore read {read} of {changelog} changelog records; {copies} raw copies");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_waiting_out_a_registry_outage_exits_0_within_10_s_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let count = 2_000u64;
    let mut stack = stack_with_orders(dir.path(), 3, count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let (want, _) = expected(count, 3);
    // The registry goes away once the worker is past its start-up check
    // (which would refuse a registry that never answers), before it decodes.
    let log = dir.path().join("worker.log");
    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("worker started") {
        assert!(Instant::now() < deadline, "the worker did not start:\n{}", log_tail(&log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.stop_registry().await;
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("registry unavailable") {
        assert!(Instant::now() < deadline, "the worker never hit the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let term = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(term.elapsed() < Duration::from_secs(10), "SIGTERM not honoured during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    stack.start_registry().await.unwrap();
    let mut w = spawn_worker(&brokers, &registry, "a", &log);
    let want_total: usize = want.values().map(Vec::len).sum();
    let mut tail = Tail::new(&stack.kafka.brokers, "loyalty", 3);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tail.distinct(&codec).await < want_total && Instant::now() < deadline {}
    let _ = w.kill();
    let _ = w.wait();
    let copies = verify_outputs(&stack.kafka, &codec, &want).await;
    assert_eq!(copies, 0, "the abandoned batch was never recorded, so nothing is repeated");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_beyond_the_partition_count_stays_up_ready_and_idle() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_with_orders(dir.path(), 3, 100).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let log = dir.path().join("workers.log");
    // Four instances, three partitions: the range assignor leaves one with none.
    let mut workers: Vec<(std::process::Child, String)> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| {
            let metrics = format!("127.0.0.1:{}", keyflow_e2e::free_port());
            (spawn_worker_with(&brokers, &registry, id, &log, &["--metrics-addr", &metrics]), metrics)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let assigned = loop {
        let mut assigned = vec![];
        for (_, metrics) in &workers {
            if let Ok(r) = reqwest::get(format!("http://{metrics}/metrics")).await {
                let text = r.text().await.unwrap_or_default();
                assigned.push(keyflow_devstack::pipeline::metric_sum(
                    &text,
                    keyflow_schemas::metrics::WORKER_ASSIGNED,
                    None,
                ) as i64);
            }
        }
        let ready = futures::future::join_all(workers.iter().map(|(_, m)| reqwest::get(format!("http://{m}/ready"))))
            .await
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status().is_success()));
        if (ready && assigned.len() == 4 && assigned.iter().sum::<i64>() == 3) || Instant::now() > deadline {
            break assigned;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (w, _) in workers.iter_mut() {
        assert!(w.try_wait().unwrap().is_none(), "an instance exited:\n{}", log_tail(&log));
    }
    kill_all(workers.iter_mut().map(|(w, _)| w));
    let mut sorted = assigned.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 1, 1], "partitions per instance: {assigned:?}\n{}", log_tail(&log));
    stack.down().await;
}

/// Another member's claim on a partition this worker is writing (what a
/// member dropped from the group meets when the partition's new owner has
/// restored): the worker finds it before it points anything at its next
/// snapshot, stops writing the partition, rejoins the group, claims the
/// partition again and carries on; every restore skips what it wrote in
/// between, and every invariant holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_claim_on_its_partition_makes_a_worker_stop_writing_it_rejoin_and_keep_every_invariant() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let count = 8_000u64;
    let stack = stack_with_orders(dir.path(), 1, count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let (want, _) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let log = dir.path().join("worker.log");
    // Slow enough (5 ms an input, one at a time) that it still works, and
    // snapshots, well after the claim.
    let extra = ["--snapshot-interval-bytes", "50000", "--max-batch", "20", "--delay", "5ms", "--max-in-flight", "1"];
    let mut w = spawn_worker_with(&brokers, &registry, "", &log, &extra);
    let mut tail = Tail::new(&brokers, "loyalty", 1);
    let deadline = Instant::now() + Duration::from_secs(300);
    let snapshots = || std::fs::read_to_string(&log).unwrap_or_default().matches("state snapshot written").count();
    while snapshots() < 3 {
        assert!(Instant::now() < deadline, "no snapshots:\n{}", log_tail(&log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The claim another owner appends before its restore (base: the log start).
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let claim =
        FutureRecord::to("counter-state").partition(0).key("__claim").payload(r#"{"kind":"claim","base":null}"#);
    let at = producer.send(claim, Duration::from_secs(10)).await.unwrap().offset;
    while Instant::now() < deadline {
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        if logs.contains("another member claimed this partition") && tail.distinct(&codec).await >= want_total {
            break;
        }
        assert!(w.try_wait().unwrap().is_none(), "the worker exited:\n{}", log_tail(&log));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = w.kill();
    let _ = w.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("another member claimed this partition"), "the claim at {at} was found:\n{}", log_tail(&log));
    assert!(logs.contains("leaving the group and joining again"), "{}", log_tail(&log));
    assert_eq!(logs.matches("partitions assigned").count(), 2, "assigned again after rejoining:\n{}", log_tail(&log));
    let copies = verify_outputs(&stack.kafka, &codec, &want).await;
    eprintln!("claim at offset {at}; {copies} raw copies");
    stack.down().await;
}

/// The group's committed offsets of `orders` (the counter worker's input), and the partitions' ends.
fn counter_lag(brokers: &str) -> i64 {
    let kafka = keyflow_schemas::client::KafkaArgs::new(brokers.to_string());
    keyflow_devstack::pipeline::group_positions(&kafka, "counter", &["orders".to_string()])
        .unwrap()
        .iter()
        .map(|p| p.high - p.committed.unwrap_or(p.low))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_with_no_new_input_commits_the_restored_checkpoint_so_the_group_shows_no_lag() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let dir = tempfile::tempdir().unwrap();
    let count = 300u64;
    let stack = stack_with_orders(dir.path(), 3, count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let (want, _) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let log = dir.path().join("worker.log");
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let mut tail = Tail::new(&brokers, "loyalty", 3);
    let mut w = spawn_worker(&brokers, &registry, "", &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tail.distinct(&codec).await < want_total {
        assert!(Instant::now() < deadline, "outputs did not arrive:\n{}", log_tail(&log));
    }
    assert!(std::process::Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap().success());
    w.wait().unwrap();
    // (A dynamic member: it leaves the group on SIGTERM, so the group is empty now.)

    // As if the owner had been killed after recording its batches but before
    // committing their offsets: the group's offsets go back to the start.
    let c: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "counter").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("orders", p, rdkafka::Offset::Offset(0)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
    drop(c);
    assert_eq!(counter_lag(&brokers), count as i64, "the group is back at the start");

    // The next owner restores the checkpoint (the end) and, with no new input,
    // must still move the group there.
    let mut w = spawn_worker(&brokers, &registry, "", &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter_lag(&brokers) > 0 {
        assert!(Instant::now() < deadline, "the group's lag stayed {}:\n{}", counter_lag(&brokers), log_tail(&log));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ids, copies) = outputs(&stack.kafka, &codec).await;
    assert_eq!((ids.len(), copies), (want_total, 0), "nothing was processed again");
    kill_all([&mut w]);
    stack.down().await;
}

/// Runs the counter with frequent snapshots (`guarantee` mode), crashes it,
/// and checks that every changelog partition was trimmed below a snapshot
/// and that the restart restores exact state from the trimmed log.
async fn trimmed_changelog_restores_exactly(guarantee: &str) {
    let dir = tempfile::tempdir().unwrap();
    let count = 9_000u64;
    let stack = stack_with_orders(dir.path(), 3, count).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let (want, _) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let log = dir.path().join("worker.log");
    let addr = format!("127.0.0.1:{}", keyflow_e2e::free_port());
    let extra = [
        "--snapshot-interval-bytes",
        "50000",
        "--max-batch",
        "50",
        "--delay",
        "0ms",
        "--guarantee",
        guarantee,
        "--metrics-addr",
        &addr,
    ];
    let mut w = spawn_worker_with(&brokers, &registry, "a", &log, &extra);
    let mut tail = Tail::new(&stack.kafka.brokers, "loyalty", 3);
    let deadline = Instant::now() + Duration::from_secs(300);
    while tail.distinct(&codec).await < want_total * 2 / 3 {
        assert!(Instant::now() < deadline, "{}", log_tail(&log));
    }
    let page = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let trims = metric(&page, &format!("{}{{result=\"ok\"", keyflow_schemas::metrics::WORKER_CHANGELOG_TRIMS));
    w.kill().unwrap();
    w.wait().unwrap();
    assert!(trims > 0.0, "snapshots trimmed the changelog:\n{}", log_tail(&log));
    let c: rdkafka::consumer::BaseConsumer =
        keyflow_schemas::kafka::client_config(&stack.kafka, &[("group.id", "probe")]).unwrap().create().unwrap();
    for p in 0..3 {
        let (low, high) =
            rdkafka::consumer::Consumer::fetch_watermarks(&c, "counter-state", p, Duration::from_secs(10)).unwrap();
        assert!(low > 0 && low < high, "counter-state[{p}] starts at a snapshot, not at 0 ({low}..{high})");
    }
    let mut w = spawn_worker_with(&brokers, &registry, "a", &log, &extra);
    while tail.distinct(&codec).await < want_total {
        assert!(Instant::now() < deadline, "{}", log_tail(&log));
    }
    kill_all([&mut w]);
    let copies = verify_outputs(&stack.kafka, &codec, &want).await;
    eprintln!("{guarantee}: {trims} trims, {copies} raw copies");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_trim_the_changelog_below_them_and_a_crash_restores_exact_state_from_the_trimmed_log() {
    trimmed_changelog_restores_exactly("effectively-once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_trims_the_changelog_after_the_snapshot_commits_and_a_crash_restores_exact_state() {
    trimmed_changelog_restores_exactly("exactly-once").await;
}
