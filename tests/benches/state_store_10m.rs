//! Benchmark: worker memory with state far larger than its budget.
//! `BENCH_KEYS` (10M) orders over as many distinct customers on one
//! partition, processed by `worker counter` with the disk store and its
//! default cache (`--state-cache-keys` 10,000): the worker's resident
//! memory is sampled every 5 s while it loads them, and its peak reported
//! with the store's size on disk.
//!
//! The producer's default mix sends 3% of the orders to five "whale"
//! customers: at 10M orders each holds about 60,000 orders in its 24 h
//! dedupe windows, a state of megabytes that snapshots write in pieces
//! (see docs/operations.md, "Limits").
//!
//! Run: `cargo build --release --bins && cargo bench -p keyflow-e2e --bench state_store_10m`
//! (about 25 minutes and 20 GB of disk on 2 cores). Writes its section of BENCHMARKS.md.

use std::time::{Duration, Instant};

use keyflow_devstack::pipeline::{get, metric_sum};
use keyflow_e2e::bench::{counter_stack, env, high_watermark, produce_orders, rss_mib, spawn_counter};
use keyflow_schemas::metrics as m;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let keys = env("BENCH_KEYS", 10_000_000);
    let machine = keyflow_e2e::bench::machine();
    let dir = tempfile::tempdir().unwrap();
    let stack = counter_stack(dir.path(), 1).await;
    let started = Instant::now();
    produce_orders(&stack, keys, 17, keys * 100);
    eprintln!("{keys} orders produced in {:.0} s", started.elapsed().as_secs_f64());
    let mut w = spawn_counter(&stack, &[]);
    let started = Instant::now();
    let (mut peak, mut samples) = (0f64, vec![]);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        w.check_running();
        let rss = rss_mib(w.child.id());
        peak = peak.max(rss);
        let done = high_watermark(&stack, "loyalty");
        samples.push((done, rss));
        if samples.len() % 24 == 0 {
            eprintln!("{done} inputs processed, RSS {rss:.0} MiB (peak {peak:.0})");
        }
        if done >= keys as i64 {
            break;
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let page = get(w.metrics, "/metrics").await.unwrap().1;
    let held = metric_sum(&page, m::WORKER_STATE_KEYS, None);
    let store_mib = metric_sum(&page, m::WORKER_STORE_BYTES, None) / 1048576.0;
    let hits = metric_sum(&page, m::WORKER_STORE_CACHE, Some(("result", "hit")));
    let misses = metric_sum(&page, m::WORKER_STORE_CACHE, Some(("result", "miss")));
    let rss = rss_mib(w.child.id());
    let _ = w.child.kill();
    let _ = w.child.wait();
    stack.down().await;
    // RSS at each tenth of the load: flat, not growing with the keys.
    let tenths: Vec<String> = (1..=10)
        .filter_map(|t| samples.iter().find(|(done, _)| *done >= keys as i64 * t / 10))
        .map(|(done, rss)| format!("{:.0}M keys {rss:.0}", *done as f64 / 1e6))
        .collect();
    let body = format!(
        "## State at scale: 10M keys in a bounded memory\n\n\
         `cargo build --release --bins && cargo bench -p keyflow-e2e --bench state_store_10m` (BENCH_KEYS={keys}), release \
         build on {machine}, `worker counter` on 1 partition, the embedded broker, default settings: `--state-store disk`, \
         `--state-cache-keys` 10000 (the decoded keys kept in memory), an 8 MiB block cache, 16 MiB memtables; the producer's default \
         order mix (five whale customers with 3% of the orders: ~60,000 each in their dedupe windows).\n\n\
         | benchmark | result | target |\n|---|---|---|\n\
         | worker RSS with {held:.0} keys ({store_mib:.0} MiB on disk, cache 10,000 keys) | **{rss:.0} MiB** at the end, \
         **{peak:.0} MiB** peak while loading | ≤ 512 MiB |\n\
         | baseline: the in-memory store at 1,270 B/key | ~{:.0} MiB (extrapolated) | |\n\n\
         RSS (MiB) as the keys grew: {}. Loading ran at {:.0} inputs/s; cache hit ratio {:.1}% (almost every input a new key).\n",
        held * 1270.0 / 1048576.0,
        tenths.join(", "),
        keys as f64 / load_s,
        100.0 * hits / (hits + misses).max(1.0),
    );
    keyflow_e2e::bench::write_section("state-store-10m", &body);
    println!("{body}");
}
