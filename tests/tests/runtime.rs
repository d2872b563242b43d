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
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    std::process::Command::new(bin("worker"))
        .args([
            "counter",
            "-b",
            brokers,
            "--registry",
            registry,
            "--instance-id",
            instance,
            "--max-batch",
            "200",
            "--delay",
            "2ms",
            "--max-in-flight",
            "4",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_loses_nothing_duplicates_nothing_and_keeps_per_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 3)).await;
    keyflow_infra::kafka::create_topics(&stack.kafka, &[spec("counter-state", 3), spec("counter.dlq", 1)], None)
        .await
        .unwrap();
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let count = 20_000u64;
    let out = run(
        "producer",
        &[
            "orders",
            "-b",
            &brokers,
            "--registry",
            &registry,
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

    // Verify: one record per event_id (copies byte-identical), balances 1..n per key in input order.
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
    for (key, orders) in &want {
        let g = got.get(key).unwrap_or_else(|| panic!("no outputs for {key}"));
        let order_ids: Vec<&String> = g.iter().map(|(o, _)| o).collect();
        assert_eq!(order_ids, orders.iter().collect::<Vec<_>>(), "per-key order of first occurrences for {key}");
        let balances: Vec<i64> = g.iter().map(|(_, b)| *b).collect();
        assert_eq!(balances, (1..=orders.len() as i64).collect::<Vec<_>>(), "exact state for {key}");
    }
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
