//! Benchmark: worker state at scale with the local state store
//! (`--state-store disk`, the default) against the in-memory store.
//!
//! 1. 1M keys: `BENCH_KEYS` (1M) orders over ~1M distinct customers on one
//!    partition, processed by `worker counter` with the disk store. Then:
//!    its resident memory; a kill -9 and restart with new input waiting
//!    (start → first processed input, from the worker's own metric); the
//!    store deleted and the worker restarted, as when a partition moves to
//!    an instance without its store (the restore rate, keys/s).
//! 2. Key-parallel throughput, disk ÷ memory: `BENCH_RATIO_RECORDS` (300k)
//!    orders over `BENCH_RATIO_KEYS` (300k) customers, `BENCH_ROUNDS` (3)
//!    rounds of each store, alternating, each on a fresh stack.
//!
//! Run: `cargo build --release --bins && cargo bench -p keyflow-e2e --bench state_store`
//! (`BENCH_VERBOSE=1` also prints the worker's log of the restart after kill -9).
//! Writes its section of BENCHMARKS.md.

use std::time::{Duration, Instant};

use keyflow_devstack::pipeline::{get, metric_sum};
use keyflow_devstack::stack::Stack;
use keyflow_e2e::bench::{
    counter_stack, env, high_watermark, produce_orders, ready_metrics, rss_mib, spawn_counter, until_outputs, Worker,
};
use keyflow_schemas::metrics as m;

fn kill(w: &mut Worker) {
    let _ = w.child.kill();
    let _ = w.child.wait();
}

/// Outputs per second from the first output to the last.
async fn rate(stack: &Stack, w: &mut Worker, total: i64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while high_watermark(stack, "loyalty") == 0 {
        w.check_running();
        assert!(Instant::now() < deadline, "no output");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (t0, n0) = (Instant::now(), high_watermark(stack, "loyalty"));
    until_outputs(stack, w, total).await;
    (total - n0) as f64 / t0.elapsed().as_secs_f64()
}

/// One throughput run of `store` over a fresh stack.
async fn throughput(store: &str, records: u64, keys: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let stack = counter_stack(dir.path(), 1).await;
    produce_orders(&stack, records, 11, keys);
    let mut w = spawn_counter(&stack, &["--state-store", store, "--max-in-flight", "256"]);
    let r = rate(&stack, &mut w, records as i64).await;
    kill(&mut w);
    stack.down().await;
    r
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let keys = env("BENCH_KEYS", 1_000_000);
    let ratio_records = env("BENCH_RATIO_RECORDS", 300_000);
    let ratio_keys = env("BENCH_RATIO_KEYS", 300_000);
    let rounds = env("BENCH_ROUNDS", 3);
    let cache = 10_000;
    let machine = keyflow_e2e::bench::machine();

    // 1. 1M keys on the disk store.
    let dir = tempfile::tempdir().unwrap();
    let stack = counter_stack(dir.path(), 1).await;
    produce_orders(&stack, keys, 7, 100_000_000);
    let mut w = spawn_counter(&stack, &[]);
    let load_rate = rate(&stack, &mut w, keys as i64).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let page = get(w.metrics, "/metrics").await.unwrap().1;
    let held = metric_sum(&page, m::WORKER_STATE_KEYS, None);
    let store_mib = metric_sum(&page, m::WORKER_STORE_BYTES, None) / 1048576.0;
    let rss = rss_mib(w.child.id());
    eprintln!("{held} keys, RSS {rss:.0} MiB, store {store_mib:.0} MiB, {load_rate:.0} inputs/s");
    // kill -9, new input waiting, restart: start → first processed input.
    kill(&mut w);
    produce_orders(&stack, 1_000, 8, 100_000_000);
    let log_at = std::fs::metadata(&w.log).map(|m| m.len()).unwrap_or(0) as usize;
    let started = Instant::now();
    let mut w = spawn_counter(&stack, &[]);
    until_outputs(&stack, &mut w, keys as i64 + 1).await;
    if std::env::var("BENCH_VERBOSE").is_ok() {
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        eprintln!("{}", &log[log_at.min(log.len())..]);
    }
    let first_seen = started.elapsed().as_secs_f64();
    let page = ready_metrics(&mut w).await;
    let first = metric_sum(&page, m::WORKER_FIRST_RECORD_SECONDS, None);
    let tail_records = metric_sum(&page, m::WORKER_RESTORE_RECORDS, None);
    let resumed = metric_sum(&page, m::WORKER_STORE_STARTS, Some(("result", "resumed")));
    let resume_s = metric_sum(&page, &format!("{}_sum", m::WORKER_RESTORE_SECONDS), None);
    eprintln!(
        "kill -9 → first input {first:.2} s (first output seen {first_seen:.2} s), {tail_records} records read, \
         restore {resume_s:.2} s"
    );
    until_outputs(&stack, &mut w, keys as i64 + 1_000).await;
    // The partition moves to an instance without its store: rebuilt from the snapshot.
    kill(&mut w);
    std::fs::remove_dir_all(stack.data_dir.join("workers")).unwrap();
    let mut w = spawn_counter(&stack, &[]);
    let page = ready_metrics(&mut w).await;
    let restore_s = metric_sum(&page, &format!("{}_sum", m::WORKER_RESTORE_SECONDS), None);
    let restored = metric_sum(&page, m::WORKER_STATE_KEYS, None);
    let (read_records, read_mb) =
        (metric_sum(&page, m::WORKER_RESTORE_RECORDS, None), metric_sum(&page, m::WORKER_RESTORE_BYTES, None) / 1e6);
    let rebuilt = metric_sum(&page, m::WORKER_STORE_STARTS, Some(("result", "rebuilt")));
    let rss_restored = rss_mib(w.child.id());
    eprintln!("rebuilt {restored} keys in {restore_s:.2} s ({read_records} records, {read_mb:.0} MB), RSS {rss_restored:.0} MiB");
    kill(&mut w);
    stack.down().await;

    // 2. Throughput, disk ÷ memory, alternating.
    let (mut disk, mut memory) = (vec![], vec![]);
    for _ in 0..rounds {
        memory.push(throughput("memory", ratio_records, ratio_keys).await);
        disk.push(throughput("disk", ratio_records, ratio_keys).await);
        eprintln!("throughput memory {:.0}/s, disk {:.0}/s", memory.last().unwrap(), disk.last().unwrap());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rounds_text: Vec<String> = disk.iter().zip(&memory).map(|(d, m)| format!("{d:.0} / {m:.0}")).collect();
    let (d, mm) = (median(&mut disk.clone()), median(&mut memory.clone()));

    let body = format!(
        "## State at scale: the local state store\n\n\
         `cargo build --release --bins && cargo bench -p keyflow-e2e --bench state_store` (BENCH_KEYS={keys}, \
         BENCH_RATIO_RECORDS={ratio_records}, BENCH_RATIO_KEYS={ratio_keys}, BENCH_ROUNDS={rounds}), release build on {machine}, \
         `worker counter` on 1 partition, the embedded broker, default settings: `--state-store disk`, `--state-cache-keys` {cache} \
         (decoded keys in memory over the instance), an 8 MiB block cache, 16 MiB memtables, default snapshots and dedupe windows (24 h).\n\n\
         | benchmark | result | target |\n|---|---|---|\n\
         | worker RSS with {held:.0} keys (disk store, {store_mib:.0} MiB on disk) | **{rss:.0} MiB** ({:.0} B/key) | ≤ 256 MiB |\n\
         | baseline: in-memory store, 965,238 keys (runtime-restore section) | 1,169 MiB (1,270 B/key) | |\n\
         | kill -9 → first processed input, {held:.0} keys (worker start → first input, `{}`) | **{first:.2} s** ({tail_records:.0} changelog records read, {resumed:.0} task resumed; first output seen {first_seen:.2} s after the restart) | ≤ 5 s |\n\
         | baseline: in-memory restore of 965,238 keys | 12.89 s | |\n\
         | a moved partition's restore (store deleted, rebuilt from the snapshot; {rebuilt:.0} rebuilt) | **{:.0} keys/s** ({restored:.0} keys in {restore_s:.2} s, reading {read_records:.0} changelog records, {read_mb:.0} MB; RSS {rss_restored:.0} MiB after) | ≥ 200k keys/s |\n\
         | key-parallel throughput, disk ÷ memory ({ratio_records} inputs over {ratio_keys} keys; rounds disk / memory inputs/s: {}) | **{:.2}** ({d:.0} / {mm:.0} inputs/s, medians) | ≥ 0.8 |\n\n\
         Loading {held:.0} new keys ran at {load_rate:.0} inputs/s.\n",
        rss * 1048576.0 / held.max(1.0),
        m::WORKER_FIRST_RECORD_SECONDS,
        restored / restore_s.max(1e-9),
        rounds_text.join(", "),
        d / mm.max(1e-9),
    );
    keyflow_e2e::bench::write_section("state-store", &body);
    println!("{body}");
}
