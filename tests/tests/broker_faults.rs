//! Broker faults, injected with librdkafka's mock cluster (used here for fault
//! injection only; every other runtime test runs against the real embedded
//! broker). Two `worker counter` processes run against a 3-broker mock
//! cluster while it fails produce, fetch, offset-commit and group requests,
//! takes a broker down and up, and moves partition leaders and the group
//! coordinator. The invariants must hold: every input causes exactly one
//! distinct output, per-key order and balances are exact, nothing is lost.
//!
//! The mock cluster keeps only the newest ~5 MiB per partition, so the run
//! is kept small.

use std::time::{Duration, Instant};

use keyflow_e2e::counter::{
    expected, kill_all, log_tail, produce_orders, spawn_worker_with, verify_outputs, MockStack, Tail,
};
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::{Codec, RegistryConfig};
use rdkafka::mocking::MockCoordinator;
use rdkafka::types::RDKafkaApiKey as Api;
use rdkafka::types::RDKafkaRespErr::*;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn request_errors_broker_restarts_and_leader_and_coordinator_moves_keep_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let stack = MockStack::start(dir.path(), PARTITIONS).await;
    let (cluster, brokers, registry) = (&stack.cluster, stack.brokers.clone(), stack.registry.clone());
    let count = 6_000u64;
    produce_orders(&brokers, &registry, count, 3).await;
    let (want, _) = expected(count, 3);
    let want_total: usize = want.values().map(Vec::len).sum();
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();

    let _keep = keyflow_e2e::KeepOnPanic(dir.path().to_path_buf());
    // Dynamic members; 10 ms per record, one at a time, keeps the run going while the faults come.
    let mut extra = vec!["--delay", "10ms", "--max-in-flight", "1", "--max-batch", "100"];
    if std::env::var_os("KEYFLOW_SERIAL_TASK_WRITES").is_some() {
        extra.push("--serial-task-writes");
    }
    // One log per worker (worker-N.log), kept with the changelog's dump when the test fails.
    let spawned = std::cell::Cell::new(0);
    let log_of = |n: usize| dir.path().join(format!("worker-{n}.log"));
    let spawn = || {
        spawned.set(spawned.get() + 1);
        spawn_worker_with(&brokers, &registry, "", &log_of(spawned.get()), &extra)
    };
    let logs = || -> String { (1..=spawned.get()).map(|n| log_tail(&log_of(n))).collect() };
    let mut workers = vec![spawn(), spawn()];
    let mut tail = Tail::new(&brokers, "loyalty", PARTITIONS);
    let deadline = Instant::now() + Duration::from_secs(300);
    let started = Instant::now();
    let mut step = 0;
    let mut distinct = 0;
    while (distinct < want_total || step < 9) && Instant::now() < deadline {
        distinct = tail.distinct(&codec).await;
        for w in &mut workers {
            if let Some(status) = w.try_wait().unwrap() {
                panic!("a worker exited ({status}) under broker faults:\n{}", logs());
            }
        }
        // One fault every ~1.5 s once outputs flow, each on a different path.
        if distinct == 0 || started.elapsed() < Duration::from_millis(1500 * step) {
            continue;
        }
        match step {
            0 => cluster.request_errors(
                Api::Produce,
                &[
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                ]
                .repeat(3),
            ),
            1 => cluster.request_errors(
                Api::Fetch,
                &[RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART].repeat(3),
            ),
            2 => cluster.request_errors(
                Api::OffsetCommit,
                &[RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE].repeat(3),
            ),
            3 => {
                // A third member joins (a rebalance) while group requests fail.
                cluster.request_errors(
                    Api::JoinGroup,
                    &[RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS, RD_KAFKA_RESP_ERR_NOT_COORDINATOR],
                );
                cluster.request_errors(Api::SyncGroup, &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS]);
                cluster.request_errors(Api::Heartbeat, &[RD_KAFKA_RESP_ERR_NOT_COORDINATOR]);
                workers.push(spawn());
            }
            4 => cluster.broker_down(2).unwrap(),
            6 => cluster.broker_up(2).unwrap(),
            7 => {
                for p in 0..PARTITIONS {
                    for topic in ["orders", "loyalty", "counter-state"] {
                        cluster.partition_leader(topic, p, Some(1 + (p + 1) % 3)).unwrap();
                    }
                }
            }
            8 => cluster.coordinator(MockCoordinator::Group("counter".into()), 3).unwrap(),
            _ => {}
        }
        step += 1;
    }
    kill_all(&mut workers);
    let kafka = KafkaArgs::new(brokers.clone());
    keyflow_e2e::dump_topic(&kafka, "counter-state", &dir.path().join("counter-state.txt")).await;
    assert_eq!(distinct, want_total, "every input caused one output under faults (steps {step}):\n{}", logs());
    let logs: String = (1..=spawned.get()).map(|n| std::fs::read_to_string(log_of(n)).unwrap_or_default()).collect();
    assert!(step >= 9, "every fault was injected ({step})");
    assert!(logs.contains("partitions revoked"), "the third member's join rebalanced the group");
    let copies = verify_outputs(&kafka, &codec, &want).await;
    eprintln!("broker faults: {want_total} outputs, {copies} raw copies");
}
