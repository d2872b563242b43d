//! Benchmark: `<worker>-state` bytes on disk after 1M inputs over 10k keys,
//! with the changelog trimmed below each snapshot (the default) and with its
//! whole history kept (`--keep-changelog-history`, the baseline), against
//! the state's size (the latest snapshot's bytes).
//!
//! `worker counter` on 1 partition of the embedded broker (keyflow-broker),
//! the changelog created as the catalog creates every `<worker>-state`
//! (16 MiB segments, no age retention); bytes on disk are the partition's
//! segment files. Run: `cargo build --release --bins && cargo bench -p
//! keyflow-e2e --bench changelog_size` (`BENCH_RECORDS`, `BENCH_KEYS`,
//! `BENCH_GUARANTEE` change the run). Writes its section of BENCHMARKS.md.

use std::io::BufRead;
use std::time::{Duration, Instant};

use keyflow_e2e::bench::{bin, counter_stack, env, produce_orders};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// What one run left: changelog bytes on disk, the state's size, changelog
/// records below which everything was deleted.
struct Sizes {
    disk: u64,
    state: u64,
    log_start: i64,
    snapshots: usize,
}

async fn run(records: u64, keys: u64, guarantee: &str, keep_history: bool) -> Sizes {
    let dir = tempfile::tempdir().unwrap();
    let stack = counter_stack(dir.path(), 1).await;
    produce_orders(&stack, records, 17, keys);
    let log = dir.path().join("worker.log");
    let mut args = vec!["--max-in-flight", "256", "--guarantee", guarantee];
    if keep_history {
        args.push("--keep-changelog-history");
    }
    let mut worker = std::process::Command::new(bin("worker"))
        .args(["counter", "-b", &stack.kafka.brokers, "--registry", &stack.registry.registry, "--delay", "0ms"])
        .args(&args)
        .arg("--data-dir")
        .arg(stack.data_dir.join("workers"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let c: BaseConsumer =
        keyflow_schemas::kafka::client_config(&stack.kafka, &[("group.id", "bench")]).unwrap().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let (lo, hi) = c.fetch_watermarks("loyalty", 0, Duration::from_secs(10)).unwrap();
        if (hi - lo) as u64 >= records {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not finish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the last snapshot's trim land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = worker.kill();
    let _ = worker.wait();
    let part = stack.data_dir.join("broker/topics/counter-state-0");
    let disk = std::fs::read_dir(&part)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let log_start = c.fetch_watermarks("counter-state", 0, Duration::from_secs(10)).unwrap().0;
    // The state's size: the latest snapshot's bytes, as the worker logs it.
    let snapshots: Vec<u64> = std::io::BufReader::new(std::fs::File::open(&log).unwrap())
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("state snapshot written"))
        .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("bytes=")?.parse().ok()))
        .collect();
    stack.down().await;
    Sizes { disk, state: snapshots.last().copied().unwrap_or(0), log_start, snapshots: snapshots.len() }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records = env("BENCH_RECORDS", 1_000_000);
    let keys = env("BENCH_KEYS", 10_000);
    let guarantee = std::env::var("BENCH_GUARANTEE").unwrap_or_else(|_| "effectively-once".into());
    let machine = keyflow_e2e::bench::machine();
    let kept = run(records, keys, &guarantee, true).await;
    eprintln!("kept: {} on disk, state {}", mib(kept.disk), mib(kept.state));
    let trimmed = run(records, keys, &guarantee, false).await;
    eprintln!("trimmed: {} on disk, state {}", mib(trimmed.disk), mib(trimmed.state));
    let row = |name: &str, s: &Sizes| {
        format!(
            "| {name} | {} | {} | {:.1}× | {} | {} |\n",
            mib(s.disk),
            mib(s.state),
            s.disk as f64 / s.state.max(1) as f64,
            s.log_start,
            s.snapshots
        )
    };
    let body = format!(
        "## Changelog size: trimmed below each snapshot ÷ whole history\n\n\
         `cargo build --release --bins && cargo bench -p keyflow-e2e --bench changelog_size` (BENCH_RECORDS={records}, BENCH_KEYS={keys}, BENCH_GUARANTEE={guarantee}), \
         release build on {machine}, `worker counter --guarantee {guarantee}` on 1 partition of the embedded broker, {records} orders over {keys} customers, \
         snapshots every 16 MiB of changelog (the default, at least the state's size), `counter-state` with the catalog's 16 MiB segments. \
         State = the latest snapshot's bytes; disk = the partition's segment files after the last output.\n\n\
         | changelog | bytes on disk | state | disk ÷ state | log start offset | snapshots |\n|---|---|---|---|---|---|\n{}{}\n\
         **Trimmed ÷ whole history: {:.2}** of the bytes; trimmed disk ÷ state {:.1}× (target ≤ 3×).\n",
        row("whole history (`--keep-changelog-history`)", &kept),
        row("trimmed (default)", &trimmed),
        trimmed.disk as f64 / kept.disk.max(1) as f64,
        trimmed.disk as f64 / trimmed.state.max(1) as f64,
    );
    keyflow_e2e::bench::write_section("changelog-size", &body);
    println!("{body}");
}
