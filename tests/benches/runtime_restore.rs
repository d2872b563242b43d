//! Benchmark: how long a worker takes to restore its state, and how much
//! memory the state takes.
//!
//! 1. History grows, keys stay: `worker counter` on 1 partition over 10k
//!    customers processes `BENCH_SHORT` (200k) inputs, is restarted and its
//!    restore measured; then `BENCH_LONG` − `BENCH_SHORT` more (to 1M in
//!    all), restarted and measured again. With snapshots a restore reads the
//!    latest snapshot and what follows, so the second restore should cost
//!    about what the first did although the changelog is five times longer;
//!    the same 1M-input history restored without snapshots (a full scan) is
//!    the baseline measured in the same run.
//! 2. 1M keys: `BENCH_LONG` inputs over ~1M distinct customers on 1
//!    partition; the worker's resident memory once they are processed, and
//!    the restore of that state.
//!
//! Run: `cargo build --release --bins && cargo bench -p keyflow-e2e --bench runtime_restore`.
//! Writes its section of BENCHMARKS.md.

use keyflow_devstack::pipeline::{get, metric_sum};
use keyflow_devstack::stack::Stack;
use keyflow_e2e::bench::{
    counter_stack, env, high_watermark, produce_orders, ready_metrics, rss_mib, spawn_counter, until_outputs, Worker,
};
use keyflow_schemas::metrics as m;

/// The in-memory store: this benchmark is its baseline (see `state_store`).
fn spawn(stack: &Stack, extra: &[&str]) -> Worker {
    spawn_counter(stack, &[extra, &["--state-store", "memory"]].concat())
}

/// A restore as the worker reports it: seconds, changelog records and bytes read, keys restored.
struct Restore {
    seconds: f64,
    records: f64,
    bytes: f64,
    keys: f64,
    changelog_records: i64,
}

/// Restarts the worker (SIGKILL, then a new process) and measures the restore.
async fn restart(stack: &Stack, w: &mut Worker, extra: &[&str]) -> Restore {
    let _ = w.child.kill();
    let _ = w.child.wait();
    *w = spawn(stack, extra);
    let text = ready_metrics(w).await;
    Restore {
        seconds: metric_sum(&text, &format!("{}_sum", m::WORKER_RESTORE_SECONDS), None),
        records: metric_sum(&text, m::WORKER_RESTORE_RECORDS, None),
        bytes: metric_sum(&text, m::WORKER_RESTORE_BYTES, None),
        keys: metric_sum(&text, m::WORKER_STATE_KEYS, None),
        changelog_records: high_watermark(stack, "counter-state"),
    }
}

fn row(name: &str, r: &Restore) -> String {
    let mib = r.bytes / (1024.0 * 1024.0);
    format!(
        "| {name} | {} | {:.0} | {mib:.1} | {:.0} | {:.2} | {:.1} | {:.0} |\n",
        r.changelog_records,
        r.records,
        r.keys,
        r.seconds,
        mib / r.seconds.max(1e-9),
        r.keys / r.seconds.max(1e-9)
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let short = env("BENCH_SHORT", 200_000);
    let long = env("BENCH_LONG", 1_000_000);
    let machine = keyflow_e2e::bench::machine();

    // 1. History grows over 10k keys.
    let dir = tempfile::tempdir().unwrap();
    let stack = counter_stack(dir.path(), 1).await;
    produce_orders(&stack, short, 5, 10_000);
    // A short dedupe retention, so the state (keys and remembered ids) stays
    // the same size while the history grows.
    let phase1 = ["--dedupe-retention", "1m"];
    let mut w = spawn(&stack, &phase1);
    until_outputs(&stack, &mut w, short as i64).await;
    let first = restart(&stack, &mut w, &phase1).await;
    eprintln!("restore after {short}: {:.2} s, {} records", first.seconds, first.records);
    produce_orders(&stack, long - short, 6, 10_000);
    until_outputs(&stack, &mut w, long as i64).await;
    let second = restart(&stack, &mut w, &phase1).await;
    eprintln!("restore after {long}: {:.2} s, {} records", second.seconds, second.records);
    // The same history without snapshots: a restore that must scan it all.
    let _ = w.child.kill();
    let _ = w.child.wait();
    let stack_full = {
        let dir2 = tempfile::tempdir().unwrap();
        let s = counter_stack(dir2.path(), 1).await;
        produce_orders(&s, long, 5, 10_000);
        let huge = ["--snapshot-interval-bytes", "1000000000000", "--dedupe-retention", "1m"];
        let mut w2 = spawn(&s, &huge);
        until_outputs(&s, &mut w2, long as i64).await;
        let full = restart(&s, &mut w2, &huge).await;
        let _ = w2.child.kill();
        let _ = w2.child.wait();
        s.down().await;
        drop(dir2);
        full
    };
    eprintln!("full scan after {long}: {:.2} s, {} records", stack_full.seconds, stack_full.records);
    stack.down().await;

    // 2. 1M keys.
    let dir3 = tempfile::tempdir().unwrap();
    let big = counter_stack(dir3.path(), 1).await;
    produce_orders(&big, long, 7, 100_000_000);
    let mut w3 = spawn(&big, &[]);
    until_outputs(&big, &mut w3, long as i64).await;
    let text = get(w3.metrics, "/metrics").await.unwrap().1;
    let keys = metric_sum(&text, m::WORKER_STATE_KEYS, None);
    let rss = rss_mib(w3.child.id());
    let big_restore = restart(&big, &mut w3, &[]).await;
    let rss_restored = rss_mib(w3.child.id());
    let _ = w3.child.kill();
    let _ = w3.child.wait();
    big.down().await;

    let body = format!(
        "## Runtime: restore time and state memory\n\n\
         `cargo build --release --bins && cargo bench -p keyflow-e2e --bench runtime_restore` (BENCH_SHORT={short}, BENCH_LONG={long}), \
         release build on {machine}, `worker counter` on 1 partition, default snapshots (`--snapshot-interval-bytes` 16 MiB), \
         orders 1 ms apart in event time; the 10k-key runs remember ids for `--dedupe-retention 1m` (so the state stays the same size as history grows), the 1M-key run for the default 24 h; \
         the embedded broker (keyflow-broker). A restore is measured from the worker's own metrics (`{}`, `{}`) after a SIGKILL and restart.\n\n\
         | restore of | changelog records | records read | MiB read | keys | seconds | MiB/s | keys/s |\n|---|---|---|---|---|---|---|---|\n{}{}{}{}\n\
         History ×{:.0} over the same 10k keys: restore time ×{:.2}; a full scan of the {long}-input history takes {:.1}× as long as the snapshot restore.\n\n\
         State memory: {keys:.0} keys held, worker RSS {rss:.0} MiB after processing ({:.0} bytes per key, dedupe windows included), {rss_restored:.0} MiB right after restoring them.\n",
        m::WORKER_RESTORE_SECONDS,
        m::WORKER_RESTORE_RECORDS,
        row(&format!("{short} inputs, 10k keys, snapshots"), &first),
        row(&format!("{long} inputs, 10k keys, snapshots"), &second),
        row(&format!("{long} inputs, 10k keys, no snapshots (baseline)"), &stack_full),
        row(&format!("{long} inputs, {keys:.0} keys, snapshots"), &big_restore),
        long as f64 / short as f64,
        second.seconds / first.seconds.max(1e-9),
        stack_full.seconds / second.seconds.max(1e-9),
        rss * 1024.0 * 1024.0 / keys.max(1.0),
    );
    keyflow_e2e::bench::write_section("runtime-restore", &body);
    println!("{body}");
}
