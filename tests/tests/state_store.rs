//! The local state store (`--state-store disk`, the default) against the
//! real worker binary and the embedded broker: a clean restart reads nothing
//! past the store, a deleted, torn or foreign store is detected and rebuilt
//! from the changelog, and two instances never share a state directory.
//! Every test ends with the exact-output oracle: each order applied once,
//! per key in input order, balances 1..n.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use keyflow_devstack::pipeline::metric_sum;
use keyflow_devstack::stack::Stack;
use keyflow_e2e::counter::{expected, log_tail, spawn_worker_with, stack_with_orders, verify_outputs, Tail};
use keyflow_e2e::wait_ready;
use keyflow_schemas::metrics as m;
use keyflow_schemas::{Codec, RegistryConfig};

const PARTITIONS: i32 = 3;

/// One worker instance ("a") of a stack, with its log, metrics and state dir.
struct Instance {
    log: PathBuf,
    state: PathBuf,
    brokers: String,
    registry: String,
    /// Flags added to the test's own.
    extra: Vec<&'static str>,
}

impl Instance {
    fn new(stack: &Stack, dir: &Path) -> Self {
        Instance {
            log: dir.join("worker.log"),
            state: dir.join("state").join("a"),
            brokers: stack.kafka.brokers.clone(),
            registry: stack.registry.registry.clone(),
            extra: vec![],
        }
    }

    /// Starts it; returns the process and its metrics page once it is ready.
    async fn start(&self) -> (Child, String) {
        let addr = format!("127.0.0.1:{}", keyflow_e2e::free_port());
        let mut extra = vec!["--metrics-addr", &addr, "--snapshot-interval-bytes", "200000", "--max-batch", "100"];
        extra.extend(&self.extra);
        let child = spawn_worker_with(&self.brokers, &self.registry, "a", &self.log, &extra);
        let page = wait_ready(&addr, &self.log).await;
        (child, page)
    }
}

/// Waits until `loyalty` holds `n` distinct outputs.
async fn wait_outputs(tail: &mut Tail, codec: &Codec, n: usize, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while tail.distinct(codec).await < n {
        assert!(Instant::now() < deadline, "only {} of {n} outputs:\n{}", tail.distinct(codec).await, log_tail(log));
    }
}

fn sigterm(child: &mut Child) {
    let sent = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "a SIGTERM exits 0: {status}");
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn starts(page: &str, result: &str) -> f64 {
    metric_sum(page, m::WORKER_STORE_STARTS, Some(("result", result)))
}

struct Run {
    stack: Stack,
    codec: Codec,
    want: std::collections::BTreeMap<String, Vec<String>>,
    total: usize,
    tail: Tail,
    a: Instance,
}

async fn run(dir: &Path, count: u64) -> Run {
    let stack = stack_with_orders(dir, PARTITIONS, count).await;
    let codec = Codec::new(&RegistryConfig::new(&stack.registry.registry)).unwrap();
    let (want, _) = expected(count, 3);
    let total = want.values().map(Vec::len).sum();
    let tail = Tail::new(&stack.kafka.brokers, "loyalty", PARTITIONS);
    let a = Instance::new(&stack, dir);
    Run { stack, codec, want, total, tail, a }
}

impl Run {
    /// Lets the instance finish every order, then checks the oracle.
    async fn finish(mut self, mut child: Child) {
        wait_outputs(&mut self.tail, &self.codec, self.total, &self.a.log).await;
        sigterm(&mut child);
        let copies = verify_outputs(&self.stack.kafka, &self.codec, &self.want).await;
        eprintln!("{} outputs, {copies} raw copies", self.total);
        self.stack.down().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_restart_reads_no_changelog_record_past_the_store_and_resumes_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), 6_000).await;
    let (mut w, page) = r.a.start().await;
    assert_eq!(starts(&page, "rebuilt"), PARTITIONS as f64, "a new store is built from the changelog");
    wait_outputs(&mut r.tail, &r.codec, r.total / 2, &r.a.log).await;
    sigterm(&mut w);
    let (w, page) = r.a.start().await;
    let read = metric_sum(&page, m::WORKER_RESTORE_RECORDS, None);
    assert_eq!(starts(&page, "resumed"), PARTITIONS as f64, "every task continues its store:\n{page}");
    assert_eq!(read, 0.0, "a clean restart reads no changelog record before its claims");
    assert!(metric_sum(&page, m::WORKER_STORE_BYTES, None) > 0.0, "the store's size is exported");
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_store_is_rebuilt_from_the_changelog_with_exact_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), 6_000).await;
    let (mut w, _) = r.a.start().await;
    wait_outputs(&mut r.tail, &r.codec, r.total / 2, &r.a.log).await;
    kill_9(&mut w);
    std::fs::remove_dir_all(&r.a.state).unwrap();
    let (w, page) = r.a.start().await;
    assert_eq!(starts(&page, "rebuilt"), PARTITIONS as f64, "a missing store is rebuilt:\n{page}");
    assert_eq!(starts(&page, "resumed"), 0.0);
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_larger_than_a_changelog_record_are_written_in_pieces_and_rebuilt_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), 6_000).await;
    // Records of 2 KiB (snapshot parts of 1 KiB): a key with more than ~15
    // orders in its dedupe window outgrows one, as a key with thousands does
    // at the default size.
    r.a.extra = vec!["--changelog-record-bytes", "2048"];
    let (mut w, _) = r.a.start().await;
    wait_outputs(&mut r.tail, &r.codec, r.total * 2 / 3, &r.a.log).await;
    kill_9(&mut w);
    let changelog = keyflow_devstack::inspect::read_raw(&r.stack.kafka, "counter-state", usize::MAX).await.unwrap();
    let pieces = changelog.iter().filter(|c| c.payload.as_ref().is_some_and(|v| contains(v, b"{\"more\":"))).count();
    let largest = changelog.iter().filter_map(|c| c.payload.as_ref().map(Vec::len)).max().unwrap_or(0);
    eprintln!("{} changelog records, {pieces} pieces, the largest {largest} bytes", changelog.len());
    assert!(pieces > 0, "some key's state was written in pieces");
    assert!(largest < 2048 + 1024, "no record much larger than --changelog-record-bytes: {largest}");
    // Rebuilt from the snapshot (pieces joined), then every order once.
    std::fs::remove_dir_all(&r.a.state).unwrap();
    let (w, page) = r.a.start().await;
    assert_eq!(starts(&page, "rebuilt"), PARTITIONS as f64, "a missing store is rebuilt:\n{page}");
    r.finish(w).await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_store_after_kill_9_during_its_writes_recovers_with_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), 8_000).await;
    let (mut w, _) = r.a.start().await;
    wait_outputs(&mut r.tail, &r.codec, r.total / 3, &r.a.log).await;
    // Killed while it writes a batch's states every few milliseconds; then
    // the last bytes written to its newest journal are lost, as a torn write
    // leaves them (the journal is preallocated: its data ends at its last
    // non-zero byte).
    kill_9(&mut w);
    let journal = newest_file(&r.a.state.join("db")).expect("the store has files");
    let mut bytes = std::fs::read(&journal).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).expect("the journal holds data") + 1;
    let torn = end.saturating_sub(700);
    bytes[torn..end].fill(0);
    std::fs::write(&journal, &bytes).unwrap();
    eprintln!("tore {}: bytes {torn}..{end} zeroed", journal.display());
    let (w, page) = r.a.start().await;
    let (resumed, rebuilt) = (starts(&page, "resumed"), starts(&page, "rebuilt"));
    assert_eq!(resumed + rebuilt, PARTITIONS as f64, "every task started: {resumed} resumed, {rebuilt} rebuilt");
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_written_from_another_cluster_is_detected_and_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    // The first cluster: its store ends with every order applied.
    let first = dir.path().join("first");
    let mut r = run(&first, 3_000).await;
    let (w, _) = r.a.start().await;
    wait_outputs(&mut r.tail, &r.codec, r.total, &r.a.log).await;
    let old_state = r.a.state.clone();
    r.finish(w).await;
    // A second cluster with the same topics and keys: the store must not
    // be taken for its state (every balance would start where the first ended).
    let second = dir.path().join("second");
    let r = run(&second, 3_000).await;
    copy_dir(&old_state, &r.a.state);
    std::fs::remove_file(r.a.state.join("keyflow.lock")).unwrap();
    let (w, page) = r.a.start().await;
    assert_eq!(starts(&page, "rebuilt"), PARTITIONS as f64, "a foreign store is rebuilt:\n{page}");
    let logs = std::fs::read_to_string(&r.a.log).unwrap();
    assert!(logs.contains("of cluster"), "the log says why:\n{}", log_tail(&r.a.log));
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_on_the_same_state_dir_is_refused_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), 100).await;
    let (mut w, _) = r.a.start().await;
    let out = tokio::process::Command::new(keyflow_e2e::bin("worker"))
        .args(["counter", "-b", &r.a.brokers, "--registry", &r.a.registry, "--instance-id", "b"])
        .arg("--state-dir")
        .arg(&r.a.state)
        .env_remove("KAFKA_BROKERS")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("exits").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("worker: error:")).unwrap_or_default();
    assert!(line.contains("--state-dir") && line.contains("in use by another worker instance"), "{stderr}");
    assert!(line.contains(&format!("pid {}", w.id())), "names the holder: {line}");
    sigterm(&mut w);
    r.stack.down().await;
}

/// The most recently written file under `dir`.
fn newest_file(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                stack.push(p);
            } else if let Ok(at) = meta.modified() {
                if meta.len() > 0 && best.as_ref().is_none_or(|(t, _)| at > *t) {
                    best = Some((at, p));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
