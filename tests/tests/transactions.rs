//! `--guarantee exactly-once`: each batch's outputs, changelog records and
//! input offsets in one Kafka transaction. The embedded broker has no
//! transactions, so the protocol flow runs against librdkafka's mock cluster,
//! which accepts transactions but does not apply them (read_committed readers
//! still see aborted records, transactional offsets are not stored:
//! infra/BROKER-NOTES.md). What these tests pin is the worker's side: it commits
//! every batch in a transaction, resumes from its changelog (not from group
//! offsets), survives aborted transactions by rolling their tasks back, and
//! stops with a clear error when it is fenced. A broker without transactions
//! (the embedded broker, until it has them) is refused at start-up with one line.

use std::time::{Duration, Instant};

use keyflow_e2e::counter::{
    expected, kill_all, log_tail, produce_orders, spawn_worker_with, stack_with_orders, MockStack, Tail,
};
use keyflow_e2e::counter::{outputs, verify_outputs};
use keyflow_e2e::{free_port, metric, wait_ready};
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::metrics::WORKER_TRANSACTIONS;
use keyflow_schemas::{Codec, RegistryConfig};
use rdkafka::types::RDKafkaApiKey as Api;
use rdkafka::types::RDKafkaRespErr::*;

const PARTITIONS: i32 = 3;

/// The worker's flags for exactly-once with metrics on `addr`.
fn exactly_once(addr: &str) -> [&str; 4] {
    ["--guarantee", "exactly-once", "--metrics-addr", addr]
}

/// Committed and aborted transactions on a worker's metrics page.
fn transactions(page: &str) -> (f64, f64) {
    (
        metric(page, &format!("{WORKER_TRANSACTIONS}{{result=\"committed\"")),
        metric(page, &format!("{WORKER_TRANSACTIONS}{{result=\"aborted\"")),
    )
}

async fn metrics_page(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

/// Waits until `tail` has seen `want` distinct outputs, failing early when
/// the worker exits.
async fn wait_outputs(tail: &mut Tail, codec: &Codec, want: usize, w: &mut std::process::Child, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n = tail.distinct(codec).await;
        if n >= want {
            return;
        }
        if let Some(status) = w.try_wait().unwrap() {
            panic!("the worker exited ({status}) with {n} of {want} outputs:\n{}", log_tail(log));
        }
        assert!(Instant::now() < deadline, "{n} of {want} outputs in 180 s:\n{}", log_tail(log));
    }
}

/// A mock cluster with `count` orders (seed `seed`) and what the counter
/// must make of them, a registry client, and a worker log and metrics address.
struct Run {
    /// Kept until the run ends (the registry's files).
    _dir: tempfile::TempDir,
    stack: MockStack,
    want: std::collections::BTreeMap<String, Vec<String>>,
    want_total: usize,
    codec: Codec,
    log: std::path::PathBuf,
    addr: String,
}

impl Run {
    async fn start(count: u64, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stack = MockStack::start(dir.path(), PARTITIONS).await;
        produce_orders(&stack.brokers, &stack.registry, count, seed).await;
        let (want, _) = expected(count, seed);
        let want_total = want.values().map(Vec::len).sum();
        let codec = Codec::new(&RegistryConfig::new(&stack.registry)).unwrap();
        let log = dir.path().join("worker.log");
        let addr = format!("127.0.0.1:{}", free_port());
        Run { _dir: dir, stack, want, want_total, codec, log, addr }
    }

    /// A dynamic `worker counter` member with `extra` flags.
    fn spawn(&self, extra: &[&str]) -> std::process::Child {
        spawn_worker_with(&self.stack.brokers, &self.stack.registry, "", &self.log, extra)
    }

    fn kafka(&self) -> KafkaArgs {
        KafkaArgs::new(self.stack.brokers.clone())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_commits_every_batch_in_a_transaction_and_a_restart_resumes_from_the_changelog() {
    let r = Run::start(4_000, 3).await;
    let Run { stack, want, want_total, codec, log, addr, .. } = &r;
    let want_total = *want_total;
    // 10 ms per record keeps the run going until the stop comes.
    let slow = [&exactly_once(addr)[..], &["--delay", "10ms"]].concat();
    let mut w = r.spawn(&slow);
    let mut tail = Tail::new(&stack.brokers, "loyalty", PARTITIONS);
    wait_ready(addr, log).await;
    wait_outputs(&mut tail, codec, want_total / 3, &mut w, log).await;
    let (committed, aborted) = transactions(&metrics_page(addr).await);
    assert!(committed > 0.0, "batches were committed in transactions");
    assert_eq!(aborted, 0.0, "no transaction failed:\n{}", log_tail(log));

    // A graceful stop mid-run (a dynamic member leaves the group at once),
    // then a new instance: it resumes from the changelog checkpoint (the mock
    // keeps no transactional offsets).
    assert!(std::process::Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap().success());
    let status = w.wait().unwrap();
    assert!(status.success(), "exit status {status}:\n{}", log_tail(log));
    let (before, _) = outputs(&r.kafka(), codec).await;
    assert!(before.len() < want_total, "stopped mid-run ({} of {want_total})", before.len());
    let mut w = r.spawn(&exactly_once(addr));
    wait_outputs(&mut tail, codec, want_total, &mut w, log).await;
    let page = metrics_page(addr).await;
    kill_all([&mut w]);
    assert!(transactions(&page).0 > 0.0);
    let logs = std::fs::read_to_string(log).unwrap();
    assert_eq!(logs.matches("transactions initialized").count(), 2, "both runs were transactional");
    let copies = verify_outputs(&r.kafka(), codec, want).await;
    assert_eq!(copies, 0, "a graceful stop and restart reprocess nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_transaction_is_rolled_back_and_its_batch_decided_again() {
    let r = Run::start(4_000, 5).await;
    let Run { stack, want, want_total, codec, log, addr, .. } = &r;
    let want_total = *want_total;
    let extra = [&exactly_once(addr)[..], &["--delay", "5ms", "--max-batch", "100"]].concat();
    let mut w = spawn_worker_with(&stack.brokers, &stack.registry, "a", log, &extra);
    let mut tail = Tail::new(&stack.brokers, "loyalty", PARTITIONS);
    wait_ready(addr, log).await;
    // Abortable commit failures, one after another while outputs flow. Only
    // the commit (EndTxn) is failed: it comes after every record of the
    // transaction is acknowledged. A failure earlier in a transaction
    // (AddOffsetsToTxn, a produce) would leave part of it in the mock's log,
    // visible to every reader — on real Kafka the abort hides all of it.
    let faults = [
        (Api::EndTxn, RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID),
        (Api::EndTxn, RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED),
        (Api::EndTxn, RD_KAFKA_RESP_ERR_INVALID_PRODUCER_ID_MAPPING),
    ];
    for (i, (api, err)) in faults.iter().enumerate() {
        wait_outputs(&mut tail, codec, want_total * (i + 1) / 5, &mut w, log).await;
        stack.cluster.request_errors(*api, &[*err]);
    }
    wait_outputs(&mut tail, codec, want_total, &mut w, log).await;
    let page = metrics_page(addr).await;
    let (committed, aborted) = transactions(&page);
    kill_all([&mut w]);
    assert!(aborted >= faults.len() as f64, "each fault aborted a transaction ({aborted}):\n{}", log_tail(log));
    assert!(committed > aborted);
    // The first assignment restored empty tasks: whatever restores read came
    // from the rollbacks, which rebuild their tasks from the changelog.
    assert!(metric(&page, keyflow_schemas::metrics::WORKER_RESTORE_RECORDS) > 0.0, "rolled back from the changelog");
    let logs = std::fs::read_to_string(log).unwrap();
    assert!(logs.contains("rolled back to the last committed batch"), "{}", log_tail(log));
    // Per-key order, exact balances, one distinct output per input. (The mock
    // keeps an aborted transaction's records visible, so copies may show.)
    let copies = verify_outputs(&r.kafka(), codec, want).await;
    eprintln!("aborts: {aborted} aborted, {committed} committed, {copies} raw copies");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_instance_stops_with_a_clear_error_and_its_successor_loses_nothing() {
    let r = Run::start(3_000, 7).await;
    let Run { stack, want, want_total, codec, log, addr, .. } = &r;
    let want_total = *want_total;
    let mut w = r.spawn(&exactly_once(addr));
    let mut tail = Tail::new(&stack.brokers, "loyalty", PARTITIONS);
    wait_outputs(&mut tail, codec, want_total / 4, &mut w, log).await;
    // What a broker answers a producer whose transactional.id a newer
    // instance has taken over.
    stack.cluster.request_errors(Api::EndTxn, &[RD_KAFKA_RESP_ERR_PRODUCER_FENCED]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "a fenced worker kept running:\n{}", log_tail(log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "a fenced worker exits non-zero");
    let logs = std::fs::read_to_string(log).unwrap();
    let error = logs.lines().rfind(|l| l.starts_with("worker: error:")).unwrap_or_default();
    assert!(error.contains("fenced"), "one clear line says why: {error:?}\n{}", log_tail(log));

    let mut w = r.spawn(&exactly_once(addr));
    wait_outputs(&mut tail, codec, want_total, &mut w, log).await;
    kill_all([&mut w]);
    verify_outputs(&r.kafka(), codec, want).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_on_a_broker_without_transactions_is_refused_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_with_orders(dir.path(), 1, 100).await;
    let log = dir.path().join("worker.log");
    let mut w =
        spawn_worker_with(&stack.kafka.brokers, &stack.registry.registry, "a", &log, &["--guarantee", "exactly-once"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            kill_all([&mut w]);
            panic!("the worker neither refused nor stopped:\n{}", log_tail(&log));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success());
    let logs = std::fs::read_to_string(&log).unwrap();
    let error = logs.lines().rfind(|l| l.starts_with("worker: error:")).unwrap_or_default();
    assert!(
        error.contains("--guarantee exactly-once") && error.contains("Kafka transactions"),
        "names the setting and the missing feature: {error:?}\n{}",
        log_tail(&log)
    );
    stack.down().await;
}
