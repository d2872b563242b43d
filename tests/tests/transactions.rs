//! `--guarantee exactly-once` on keyflow's broker, which applies Kafka
//! transactions as Kafka does (commit and abort markers, read_committed
//! fetches stopping at the last stable offset, transactional offsets,
//! epoch fencing). Each batch's outputs, changelog records and input offsets
//! are one transaction; these tests pin what readers of the outputs see
//! (they read read_committed, librdkafka's default):
//! - committed batches and the group's transactional offsets, across a restart;
//! - no copy after kill -9 in the middle of a transaction, though the killed
//!   transaction's records stay in the log (read_uncommitted shows them);
//! - nothing of a fenced zombie's open transaction, and the zombie stops;
//! - after an aborted transaction, exactly the last committed state.
//!
//! librdkafka's mock cluster fakes transactions (aborted records stay
//! visible, offsets are not stored): it is used for fault injection only
//! (broker_faults.rs).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keyflow_devstack::inspect::read_raw;
use keyflow_devstack::stack::Stack;
use keyflow_e2e::counter::{expected, kill_all, log_tail, spawn_worker_with, stack_with_orders, Tail};
use keyflow_e2e::counter::{outputs, verify_outputs};
use keyflow_e2e::{free_port, metric, wait_ready};
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::kafka::client_config;
use keyflow_schemas::metrics::WORKER_TRANSACTIONS;
use keyflow_schemas::Codec;
use rdkafka::consumer::{BaseConsumer, Consumer};

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

fn signal(w: &std::process::Child, sig: &str) {
    assert!(std::process::Command::new("kill").args([sig, &w.id().to_string()]).status().unwrap().success());
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

/// An embedded stack with `count` orders and what the counter must make of
/// them, a registry client, and a worker log and metrics address.
struct Run {
    _dir: tempfile::TempDir,
    stack: Stack,
    want: std::collections::BTreeMap<String, Vec<String>>,
    want_total: usize,
    codec: Codec,
    log: std::path::PathBuf,
    addr: String,
}

impl Run {
    async fn start(count: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stack = stack_with_orders(dir.path(), PARTITIONS, count).await;
        let (want, _) = expected(count, 3);
        let want_total = want.values().map(Vec::len).sum();
        let codec = Codec::new(&stack.registry.config().unwrap()).unwrap();
        let log = dir.path().join("worker.log");
        let addr = format!("127.0.0.1:{}", free_port());
        Run { _dir: dir, stack, want, want_total, codec, log, addr }
    }

    /// A `worker counter` (static member `instance`, or dynamic when empty).
    fn spawn(&self, instance: &str, extra: &[&str]) -> std::process::Child {
        spawn_worker_with(&self.stack.kafka.brokers, &self.stack.registry.registry, instance, &self.log, extra)
    }

    fn tail(&self) -> Tail {
        Tail::new(&self.stack.kafka.brokers, "loyalty", PARTITIONS)
    }

    /// A reader that also sees open and aborted transactions' records.
    fn uncommitted(&self) -> KafkaArgs {
        let mut k = self.stack.kafka.clone();
        k.props.push(("isolation.level".into(), "read_uncommitted".into()));
        k
    }

    /// Records of `topic` (partition, offset) that read_uncommitted readers
    /// see and read_committed ones do not: records of open or aborted transactions.
    async fn hidden_records(&self, topic: &str) -> BTreeSet<(i32, i64)> {
        let at = |records: Vec<keyflow_devstack::inspect::RawRecord>| -> BTreeSet<(i32, i64)> {
            records.iter().map(|r| (r.partition, r.offset)).collect()
        };
        let all = at(read_raw(&self.uncommitted(), topic, usize::MAX).await.unwrap());
        let committed = at(read_raw(&self.stack.kafka, topic, usize::MAX).await.unwrap());
        all.difference(&committed).copied().collect()
    }

    async fn hidden(&self, topic: &str) -> usize {
        self.hidden_records(topic).await.len()
    }

    /// Whether a transaction is open with records in `loyalty`: some
    /// partition's last stable offset (the end for read_committed readers)
    /// is below its high watermark.
    fn open_transaction(&self) -> bool {
        let watermarks = |kafka: &KafkaArgs| -> Vec<i64> {
            let c: BaseConsumer = client_config(kafka, &[("group.id", "probe")]).unwrap().create().unwrap();
            (0..PARTITIONS).map(|p| c.fetch_watermarks("loyalty", p, Duration::from_secs(10)).unwrap().1).collect()
        };
        let (stable, high) = (watermarks(&self.stack.kafka), watermarks(&self.uncommitted()));
        stable.iter().zip(&high).any(|(s, h)| s < h)
    }

    /// Freezes `w` (SIGSTOP) at a moment its transaction is open with
    /// records in `loyalty`, resuming and retrying briefly otherwise.
    async fn freeze_mid_transaction(&self, w: &mut std::process::Child) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pause = 5;
        loop {
            signal(w, "-STOP");
            // A commit it sent just before the stop may still land: the
            // transaction is open if it still is a second later.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if self.open_transaction() {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                if self.open_transaction() {
                    return;
                }
            }
            signal(w, "-CONT");
            assert!(w.try_wait().unwrap().is_none(), "the worker exited:\n{}", log_tail(&self.log));
            assert!(Instant::now() < deadline, "never caught a transaction open:\n{}", log_tail(&self.log));
            tokio::time::sleep(Duration::from_millis(pause)).await;
            pause = pause * 7 % 97 + 3;
        }
    }

    async fn down(self) {
        self.stack.down().await;
    }
}

/// Waits for a worker to exit; its status and last error line.
async fn exit_of(w: &mut std::process::Child, log: &std::path::Path) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the worker kept running:\n{}", log_tail(log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logs = std::fs::read_to_string(log).unwrap();
    (status, logs.lines().rfind(|l| l.starts_with("worker: error:")).unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_commits_batches_and_group_offsets_in_transactions_and_a_restart_resumes_without_copies() {
    let r = Run::start(4_000).await;
    let want_total = r.want_total;
    // 10 ms per record keeps the run going until the stop comes.
    let slow = [&exactly_once(&r.addr)[..], &["--delay", "10ms"]].concat();
    let mut w = r.spawn("", &slow);
    let mut tail = r.tail();
    wait_ready(&r.addr, &r.log).await;
    wait_outputs(&mut tail, &r.codec, want_total / 3, &mut w, &r.log).await;
    let (committed, aborted) = transactions(&metrics_page(&r.addr).await);
    assert!(committed > 0.0, "batches were committed in transactions");
    assert_eq!(aborted, 0.0, "no transaction failed:\n{}", log_tail(&r.log));

    // A graceful stop mid-run, then a new instance.
    signal(&w, "-TERM");
    let status = w.wait().unwrap();
    assert!(status.success(), "exit status {status}:\n{}", log_tail(&r.log));
    let (before, copies) = outputs(&r.stack.kafka, &r.codec).await;
    assert!(before.len() < want_total, "stopped mid-run ({} of {want_total})", before.len());
    assert_eq!(copies, 0);
    // The input offsets went through TxnOffsetCommit and are the group's now.
    let group = keyflow_devstack::pipeline::group_positions(&r.stack.kafka, "counter", &["orders".into()]).unwrap();
    let consumed: i64 = group.iter().map(|g| g.committed.unwrap_or(0) - g.low).sum();
    assert!(consumed > 0, "the transactions committed the group's offsets: {group:?}");

    let mut w = r.spawn("", &exactly_once(&r.addr));
    wait_outputs(&mut tail, &r.codec, want_total, &mut w, &r.log).await;
    kill_all([&mut w]);
    let logs = std::fs::read_to_string(&r.log).unwrap();
    assert_eq!(logs.matches("transactions initialized").count(), 2, "both runs were transactional");
    let copies = verify_outputs(&r.stack.kafka, &r.codec, &r.want).await;
    assert_eq!(copies, 0, "a graceful stop and restart show read_committed readers no copy");
    r.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_in_the_middle_of_a_transaction_leaves_no_copy_visible_to_read_committed_readers() {
    let r = Run::start(3_000).await;
    let want_total = r.want_total;
    let flags = [&exactly_once(&r.addr)[..], &["--delay", "1ms", "--max-batch", "100"]].concat();
    let mut tail = r.tail();
    // A static member: its successor has its transactional.id and aborts the
    // killed instance's open transaction at once.
    let mut w = r.spawn("a", &flags);
    for kill in 1..=3 {
        wait_outputs(&mut tail, &r.codec, want_total * kill / 5, &mut w, &r.log).await;
        r.freeze_mid_transaction(&mut w).await;
        kill_all([&mut w]);
        w = r.spawn("a", &flags);
    }
    wait_outputs(&mut tail, &r.codec, want_total, &mut w, &r.log).await;
    kill_all([&mut w]);
    let copies = verify_outputs(&r.stack.kafka, &r.codec, &r.want).await;
    assert_eq!(copies, 0, "read_committed readers see each output once");
    let hidden = r.hidden("loyalty").await;
    assert!(hidden > 0, "the killed transactions' records are in the log, aborted");
    eprintln!("3 kills mid-transaction: {hidden} aborted output records hidden from read_committed readers");
    r.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_zombie_stops_and_none_of_its_open_transaction_becomes_visible() {
    let r = Run::start(3_000).await;
    let want_total = r.want_total;
    let flags = [&exactly_once(&r.addr)[..], &["--delay", "1ms", "--max-batch", "100"]].concat();
    let mut tail = r.tail();
    let mut zombie = r.spawn("a", &flags);
    wait_outputs(&mut tail, &r.codec, want_total / 4, &mut zombie, &r.log).await;
    // Frozen with records written in an open transaction, it is replaced by
    // an instance with its transactional.id and group.instance.id.
    r.freeze_mid_transaction(&mut zombie).await;
    let frozen = r.hidden_records("loyalty").await;
    let other = format!("127.0.0.1:{}", free_port());
    // On another machine: a state directory of its own (the zombie holds its lock).
    let elsewhere = r.log.with_file_name("successor-state");
    let elsewhere = elsewhere.to_str().unwrap();
    let successor_flags =
        [&exactly_once(&other)[..], &["--delay", "1ms", "--max-batch", "100", "--state-dir", elsewhere]].concat();
    let mut successor = r.spawn("a", &successor_flags);
    // Ready means its transactions are initialized: the zombie's open
    // transaction is aborted and its epoch fenced before it wakes (woken
    // earlier, it could still commit that transaction, legitimately).
    wait_ready(&other, &r.log).await;
    wait_outputs(&mut tail, &r.codec, want_total / 2, &mut successor, &r.log).await;
    signal(&zombie, "-CONT");
    let (status, error) = exit_of(&mut zombie, &r.log).await;
    assert!(!status.success(), "a fenced zombie exits non-zero");
    assert!(error.contains("fenced"), "one line says why: {error:?}\n{}", log_tail(&r.log));
    wait_outputs(&mut tail, &r.codec, want_total, &mut successor, &r.log).await;
    kill_all([&mut successor]);
    let copies = verify_outputs(&r.stack.kafka, &r.codec, &r.want).await;
    assert_eq!(copies, 0, "nothing of the zombie's transaction is visible");
    let hidden = r.hidden_records("loyalty").await;
    let shown: Vec<_> = frozen.difference(&hidden).collect();
    assert!(shown.is_empty(), "records of the zombie's open transaction became visible: {shown:?}");
    r.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_transaction_rolls_back_to_exactly_the_last_committed_state() {
    let r = Run::start(4_000).await;
    let want_total = r.want_total;
    let flags = [&exactly_once(&r.addr)[..], &["--delay", "2ms", "--max-batch", "100"]].concat();
    let mut w = r.spawn("a", &flags);
    let mut tail = r.tail();
    wait_ready(&r.addr, &r.log).await;
    wait_outputs(&mut tail, &r.codec, want_total / 3, &mut w, &r.log).await;
    // For a moment `loyalty` refuses every batch (max.message.bytes below a
    // record): the transactions holding them fail and are aborted, their
    // changelog records and inputs with them, and their tasks roll back.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &r.stack.kafka.brokers).create().unwrap();
    let set = |v: &'static str| {
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("loyalty"))
            .set("max.message.bytes", v)
    };
    let opts = rdkafka::admin::AdminOptions::new();
    assert!(admin.alter_configs(&[set("64")], &opts).await.unwrap().iter().all(|r| r.is_ok()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while transactions(&metrics_page(&r.addr).await).1 < 1.0 {
        assert!(Instant::now() < deadline, "no transaction was aborted:\n{}", log_tail(&r.log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admin.alter_configs(&[set("1048588")], &opts).await.unwrap().iter().all(|r| r.is_ok()));
    wait_outputs(&mut tail, &r.codec, want_total, &mut w, &r.log).await;
    let page = metrics_page(&r.addr).await;
    kill_all([&mut w]);
    let (committed, aborted) = transactions(&page);
    assert!(aborted >= 1.0 && committed > aborted, "{committed} committed, {aborted} aborted");
    // Each task rolled back started again from its store (its last committed
    // batch: nothing to read) or from the changelog.
    let starts = keyflow_devstack::pipeline::metric_sum(&page, keyflow_schemas::metrics::WORKER_STORE_STARTS, None);
    assert!(starts > 3.0, "tasks restarted from the committed state: {starts} starts for 3 partitions");
    let logs = std::fs::read_to_string(&r.log).unwrap();
    assert!(logs.contains("rolled back to the last committed batch"), "{}", log_tail(&r.log));
    // Per-key order and exact balances, one record per output: the redone
    // batches continued from the committed state, not the aborted one.
    let copies = verify_outputs(&r.stack.kafka, &r.codec, &r.want).await;
    assert_eq!(copies, 0, "read_committed readers see no copy");
    let hidden = r.hidden("counter-state").await;
    assert!(hidden > 0, "the aborted transactions' changelog records are in the log, aborted");
    r.down().await;
}
