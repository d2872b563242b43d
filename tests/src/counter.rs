//! The `counter` test worker's oracle and tooling, shared by the runtime
//! tests (real broker) and the broker-fault tests (mock cluster): what it
//! must output for a seeded order stream, how to run it, and how to check
//! its output topic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use keyflow_devstack::inspect::read_raw;
use keyflow_producers::gen::Generator;
use keyflow_producers::orders::{OrderGen, OrderMix};
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::events::{AnyEvent, LoyaltyEvent, OrderEvent};
use keyflow_schemas::Codec;

use crate::bin;

/// Event time of the first generated order.
pub const START: i64 = 1_767_225_600_000;

/// Customers in the test streams.
pub const CUSTOMERS: u32 = 300;

/// What the counter must produce: per customer, the orders it counts, in order.
pub fn expected(count: u64, seed: u64) -> (BTreeMap<String, Vec<String>>, usize) {
    let mix = OrderMix { customers: CUSTOMERS, ..OrderMix::default() };
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

/// Produces `count` orders (seed `seed`, the test customers and event times
/// of [`expected`]) to `orders` as fast as the broker takes them.
pub async fn produce_orders(brokers: &str, registry: &str, count: u64, seed: u64) {
    let (count, seed, start, customers) =
        (count.to_string(), seed.to_string(), START.to_string(), CUSTOMERS.to_string());
    let out = crate::run(
        "producer",
        &[
            "orders",
            "-b",
            brokers,
            "--registry",
            registry,
            "--rate",
            "0",
            "--count",
            &count,
            "--seed",
            &seed,
            "--start-time",
            &start,
            "--event-step-ms",
            "1",
            "--customers",
            &customers,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", crate::text(&out).1);
}

/// The counter's changelog, as the catalog creates every `<worker>-state`.
pub fn changelog_spec(partitions: i32) -> keyflow_schemas::topics::TopicSpec {
    keyflow_schemas::topics::catalog().state_spec("counter", partitions)
}

/// A fresh embedded stack (broker and registry) with `partitions`
/// partitions, the counter worker's changelog and DLQ, and `count` orders
/// (seed 3) on `orders`.
pub async fn stack_with_orders(dir: &std::path::Path, partitions: i32, count: u64) -> keyflow_devstack::stack::Stack {
    let stack = crate::start(&crate::options(dir, partitions)).await;
    let specs = [changelog_spec(partitions), keyflow_schemas::topics::TopicSpec::new("counter.dlq", 1)];
    keyflow_devstack::kafka::create_topics(&stack.kafka, &specs, None).await.unwrap();
    produce_orders(&stack.kafka.brokers, &stack.registry.registry, count, 3).await;
    stack
}

/// A librdkafka mock cluster (fault injection only) of three brokers with the
/// counter worker's topics, and an embedded schema registry in `dir`.
pub struct MockStack {
    pub cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub brokers: String,
    pub registry: String,
    _registry: (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>),
}

impl MockStack {
    pub async fn start(dir: &std::path::Path, partitions: i32) -> Self {
        let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
        for (topic, n) in
            [("orders", partitions), ("loyalty", partitions), ("counter-state", partitions), ("counter.dlq", 1)]
        {
            cluster.create_topic(topic, n, 3).unwrap();
        }
        let brokers = cluster.bootstrap_servers();
        let (registry, stop, task) = keyflow_devstack::stack::start_registry(dir, crate::free_port()).await.unwrap();
        MockStack { cluster, brokers, registry, _registry: (stop, task) }
    }
}

/// Starts `worker counter` (test defaults: small batches, 2 ms simulated I/O;
/// `extra` overrides them), logging to `log`. An empty `instance` makes a
/// dynamic member, which leaves the group at once on SIGTERM.
pub fn spawn_worker_with(
    brokers: &str,
    registry: &str,
    instance: &str,
    log: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    // Test defaults (small batches, a little simulated I/O); `extra` overrides them.
    let defaults = ["--max-batch", "200", "--delay", "2ms", "--max-in-flight", "4"];
    let membership: &[&str] = if instance.is_empty() { &[] } else { &["--instance-id", instance] };
    // Each instance its own state dir beside its log (a restart of the same
    // instance finds its store); a dynamic member a fresh one.
    static DYNAMIC: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = match instance {
        "" => format!("dynamic-{}", DYNAMIC.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        id => id.to_string(),
    };
    let state_dir = log.parent().unwrap_or(std::path::Path::new(".")).join("state").join(name);
    let state: Vec<String> = match extra.contains(&"--state-dir") {
        true => vec![],
        false => vec!["--state-dir".into(), state_dir.display().to_string()],
    };
    std::process::Command::new(bin("worker"))
        .args(["counter", "-b", brokers, "--registry", registry])
        .args(membership)
        .args(&state)
        .args(defaults.chunks(2).filter(|d| !extra.contains(&d[0])).flatten())
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap()
}

/// Checks `loyalty` against the oracle: one record per event_id (copies are
/// byte-identical), per key the orders of first occurrences in input order
/// with balances 1..n. Returns the number of raw copies.
pub async fn verify_outputs(kafka: &KafkaArgs, codec: &Codec, want: &BTreeMap<String, Vec<String>>) -> usize {
    let records = read_raw(kafka, "loyalty", usize::MAX).await.unwrap();
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
pub async fn outputs(kafka: &KafkaArgs, codec: &Codec) -> (HashSet<String>, usize) {
    let mut ids = HashSet::new();
    let mut copies = 0;
    for r in read_raw(kafka, "loyalty", usize::MAX).await.unwrap() {
        let e: LoyaltyEvent = codec.decode("loyalty", r.payload.as_deref()).await.unwrap();
        if !ids.insert(keyflow_schemas::events::TopicEvent::metadata(&e).event_id.clone()) {
            copies += 1;
        }
    }
    (ids, copies)
}

/// Reads a topic from the beginning as it grows; counts distinct output event_ids.
pub struct Tail {
    consumer: rdkafka::consumer::BaseConsumer,
    ids: HashSet<String>,
}

impl Tail {
    pub fn new(brokers: &str, topic: &str, partitions: i32) -> Self {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "test-tail")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Self { consumer, ids: HashSet::new() }
    }

    /// Reads what arrived until the topic is quiet for a moment (at most
    /// 2,000 records, so a caller's loop stays responsive while outputs
    /// stream in); returns the distinct count.
    pub async fn distinct(&mut self, codec: &Codec) -> usize {
        use rdkafka::Message;
        let mut payloads = Vec::new();
        while let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(300)) {
            payloads.extend(m.payload().map(<[u8]>::to_vec));
            if payloads.len() >= 2_000 {
                break;
            }
        }
        for p in payloads {
            let e: LoyaltyEvent = codec.decode("loyalty", Some(&p)).await.unwrap();
            self.ids.insert(keyflow_schemas::events::TopicEvent::metadata(&e).event_id.clone());
        }
        self.ids.len()
    }
}

/// The last few KiB of a log file, for assertion messages; lines about
/// records sent to the DLQ on purpose are left out (they would fill it).
pub fn log_tail(log: &std::path::Path) -> String {
    let logs: String = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("to DLQ"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut start = logs.len().saturating_sub(4000);
    while !logs.is_char_boundary(start) {
        start += 1;
    }
    logs[start..].to_string()
}

/// Kills worker processes (SIGKILL) and reaps them.
pub fn kill_all<'a>(workers: impl IntoIterator<Item = &'a mut std::process::Child>) {
    for w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}
