//! Test harness: starts the real embedded stack (broker + registry) on random
//! free ports in a temporary directory, finds the workspace's binaries, and
//! runs them. Each test gets its own stack, so tests run in parallel.

use std::path::PathBuf;
use std::process::Output;

use keyflow_devstack::stack::{Stack, StackOptions};

pub mod counter;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Options for a fresh stack on free ports in `dir`.
pub fn options(dir: &std::path::Path, partitions: i32) -> StackOptions {
    StackOptions { data_dir: dir.to_path_buf(), broker_port: free_port(), registry_port: free_port(), partitions }
}

/// Starts a stack; panics with the reason when it cannot.
pub async fn start(opts: &StackOptions) -> Stack {
    match Stack::up(opts).await {
        Ok(s) => s,
        Err(e) => panic!("devstack up failed: {e:#}"),
    }
}

/// Path of a workspace binary (built by `cargo test`/`nextest` alongside the tests).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not built: run `cargo build --workspace --bins` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// Runs a workspace binary with args and returns its output.
pub async fn run(name: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(bin(name))
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("SCHEMA_REGISTRY_URL")
        .output()
        .await
        .expect("binary runs")
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Value of an unlabelled (or first-labelled) metric sample in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in:\n{page}"))
}

/// Waits (120 s at most) until the worker serving metrics on `addr` is
/// ready; returns its metrics page.
pub async fn wait_ready(addr: &str, log: &std::path::Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/ready")).await {
            if r.status().is_success() {
                return reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready in 120 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Helpers the benchmarks share: machine description, BENCHMARKS.md
/// sections, sizes from the environment, a stack with the counter worker's
/// topics, and order load.
pub mod bench {
    use keyflow_devstack::stack::{Stack, StackOptions};
    use keyflow_schemas::topics::TopicSpec;

    /// A size from the environment (`BENCH_*`), or `default`.
    pub fn env(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    /// A binary of the same build as the running benchmark (`cargo build --release --bins`).
    pub fn bin(name: &str) -> std::path::PathBuf {
        let exe = std::env::current_exe().expect("benchmark path");
        let path = exe.parent().and_then(|d| d.parent()).expect("target dir").join(name);
        assert!(path.is_file(), "{} missing: run `cargo build --release --bins` first", path.display());
        path
    }

    /// A fresh embedded stack with `partitions` partitions and the counter
    /// worker's changelog and DLQ.
    pub async fn counter_stack(dir: &std::path::Path, partitions: i32) -> Stack {
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = StackOptions { data_dir: dir.into(), broker_port: port(), registry_port: port(), partitions };
        let stack = Stack::up(&opts).await.expect("stack");
        let specs = [crate::counter::changelog_spec(partitions), TopicSpec::new("counter.dlq", 1)];
        keyflow_devstack::kafka::create_topics(&stack.kafka, &specs, None).await.unwrap();
        stack
    }

    /// Produces `count` valid, distinct orders (no cancels, resends or
    /// invalid amounts) over `customers` keys, as fast as the broker takes them.
    pub fn produce_orders(stack: &Stack, count: u64, seed: u64, customers: u64) {
        let out = std::process::Command::new(bin("producer"))
            .args(["orders", "-b", &stack.kafka.brokers, "--registry", &stack.registry.registry])
            .args(["--rate", "0", "--count", &count.to_string(), "--seed", &seed.to_string()])
            .args(["--customers", &customers.to_string(), "--event-step-ms", "1"])
            .args(["--invalid-amount-rate", "0", "--resend-rate", "0", "--cancel-rate", "0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn machine() -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        format!("{cores} cores, {cpu}")
    }

    /// The machine's CPU time so far, in ticks: (stolen by the hypervisor, total).
    /// On a shared VM, steal is what makes one run twice as slow as the next.
    pub fn cpu_ticks() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> =
            stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        (fields.get(7).copied().unwrap_or(0), fields.iter().take(8).sum())
    }

    /// Percent of the CPU time between two [`cpu_ticks`] readings that the
    /// hypervisor took.
    pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
        let total = after.1.saturating_sub(before.1);
        if total == 0 {
            return 0.0;
        }
        100.0 * after.0.saturating_sub(before.0) as f64 / total as f64
    }

    /// A `worker counter` process started by a benchmark, with its metrics
    /// address and the log its stderr goes to.
    pub struct Worker {
        pub child: std::process::Child,
        pub metrics: std::net::SocketAddr,
        pub log: std::path::PathBuf,
    }

    impl Worker {
        /// Panics, naming its log, if the worker has exited.
        pub fn check_running(&mut self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!("the worker exited ({status}); {}:\n{}", self.log.display(), tail.join("\n"));
            }
        }
    }

    /// Starts `worker counter` as static member `bench` (its state under the
    /// stack's data dir, its log in `worker.log` there), serving metrics on a
    /// free port; `--max-in-flight` is 64 unless `extra` sets it.
    pub fn spawn_counter(stack: &Stack, extra: &[&str]) -> Worker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let log = stack.data_dir.join("worker.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let in_flight: &[&str] = if extra.contains(&"--max-in-flight") { &[] } else { &["--max-in-flight", "64"] };
        let child = std::process::Command::new(bin("worker"))
            .args(["counter", "-b", &stack.kafka.brokers, "--registry", &stack.registry.registry])
            .args(["--instance-id", "bench", "--metrics-addr", &metrics.to_string()])
            .args(in_flight)
            .arg("--data-dir")
            .arg(stack.data_dir.join("workers"))
            .args(extra)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Worker { child, metrics, log }
    }

    /// Partition 0's high watermark (one client per stack, kept between
    /// calls: creating one costs more CPU than the query).
    pub fn high_watermark(stack: &Stack, topic: &str) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        static CLIENT: std::sync::Mutex<Option<(String, BaseConsumer)>> = std::sync::Mutex::new(None);
        let mut client = CLIENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if client.as_ref().is_none_or(|(brokers, _)| *brokers != stack.kafka.brokers) {
            let c = keyflow_schemas::kafka::client_config(&stack.kafka, &[("group.id", "bench")]).unwrap();
            *client = Some((stack.kafka.brokers.clone(), c.create().unwrap()));
        }
        let (_, c) = client.as_ref().expect("set above");
        c.fetch_watermarks(topic, 0, std::time::Duration::from_secs(10)).unwrap().1
    }

    /// Waits until the worker has produced `outputs` records in all.
    pub async fn until_outputs(stack: &Stack, w: &mut Worker, outputs: i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        while high_watermark(stack, "loyalty") < outputs {
            w.check_running();
            assert!(std::time::Instant::now() < deadline, "the worker did not finish");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The worker's metrics page once it is ready.
    pub async fn ready_metrics(w: &mut Worker) -> String {
        use keyflow_devstack::pipeline::get;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
        loop {
            w.check_running();
            assert!(std::time::Instant::now() < deadline, "the worker did not get ready");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if get(w.metrics, "/ready").await.is_some_and(|(c, _)| c == 200) {
                return get(w.metrics, "/metrics").await.unwrap().1;
            }
        }
    }

    /// Resident memory of process `pid`, MiB.
    pub fn rss_mib(pid: u32) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }

    /// Replaces (or appends) the section between `<!-- name -->` markers.
    pub fn write_section(name: &str, body: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            "# Benchmarks\n\nFigures from `cargo bench`; each ratio is measured against a baseline in the same run.\n"
                .into()
        });
        let (open, close) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
        let section = format!("{open}\n{body}\n{close}");
        match (text.find(&open), text.find(&close)) {
            (Some(a), Some(b)) => text.replace_range(a..b + close.len(), &section),
            _ => text = format!("{}\n{section}\n", text.trim_end()),
        }
        std::fs::write(&path, text).unwrap();
    }
}

/// Copies a test's directory (logs, dumps) to `$KEYFLOW_TEST_ARTIFACTS/<name>-<pid>`
/// when the test panics, so a failure can be read afterwards.
pub struct KeepOnPanic(pub PathBuf);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        let Ok(to) = std::env::var("KEYFLOW_TEST_ARTIFACTS") else { return };
        if !std::thread::panicking() {
            return;
        }
        let to = std::path::Path::new(&to).join(format!("run-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&to);
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if e.path().is_file() {
                let _ = std::fs::copy(e.path(), to.join(e.file_name()));
            }
        }
        eprintln!("test artifacts kept in {}", to.display());
    }
}

/// Writes every record of `topic` (offset, headers, payload as text) to `path`.
pub async fn dump_topic(kafka: &keyflow_schemas::client::KafkaArgs, topic: &str, path: &std::path::Path) {
    use std::fmt::Write as _;
    let mut out = String::new();
    for r in keyflow_devstack::inspect::read_raw(kafka, topic, usize::MAX).await.unwrap_or_default() {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_deref().unwrap_or_default())))
            .collect();
        let payload = String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned();
        let _ = writeln!(out, "{} {} [{}] {}", r.partition, r.offset, headers.join(","), payload);
    }
    let _ = std::fs::write(path, out);
}
