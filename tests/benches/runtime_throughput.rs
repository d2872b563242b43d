//! Benchmark: the worker runtime's key-parallel processing ÷ partition-
//! sequential processing of the same worker, on 1 partition, ~10k keys,
//! 10k records, 5 ms simulated I/O per record (`worker counter --delay 5ms`),
//! with `--max-in-flight 1` as the sequential baseline. Both runs use the
//! real runtime (changelog, outbox, acks) on the embedded broker; the rate is
//! measured between the first and the last committed batch, so group join and
//! restore are left out. Progress is the group's committed input offset.
//!
//! Second: effectively-once ÷ plain at-least-once (no changelog) throughput
//! of the same worker with no simulated I/O, in interleaved rounds. Third:
//! exactly-once (Kafka transactions) ÷ effectively-once, the same way.
//!
//! Run: `cargo build --release --bins && cargo bench -p keyflow-e2e --bench runtime_throughput`
//! (`BENCH_RECORDS`, `BENCH_IN_FLIGHT`, `BENCH_ROUNDS` change the sizes;
//! `BENCH_ONLY=key-parallel|guarantee|exactly-once` runs one). Writes its sections of
//! BENCHMARKS.md.

use std::time::{Duration, Instant};

use keyflow_devstack::stack::Stack;
use keyflow_e2e::bench::{bin, counter_stack, env, produce_orders};

/// Inputs the worker has processed: its group's committed offset of
/// `orders` (output offsets would count exactly-once's commit markers too).
fn processed(stack: &Stack) -> i64 {
    let group = keyflow_devstack::pipeline::group_positions(&stack.kafka, "counter", &["orders".into()]).unwrap();
    group.iter().map(|g| g.committed.unwrap_or(g.low) - g.low).sum()
}

/// `--max-batch` of both runs (`BENCH_MAX_BATCH`, default the worker's default).
fn max_batch() -> u64 {
    env("BENCH_MAX_BATCH", 2000)
}

/// Outputs per second of one worker run over `records` inputs.
async fn run(records: u64, in_flight: u64, delay: &str, guarantee: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let stack = counter_stack(dir.path(), 1).await;
    produce_orders(&stack, records, 11, 100_000_000);
    let mut worker = std::process::Command::new(bin("worker"))
        .args([
            "counter",
            "-b",
            &stack.kafka.brokers,
            "--registry",
            &stack.registry.registry,
            "--delay",
            delay,
            "--max-in-flight",
            &in_flight.to_string(),
            "--max-batch",
            &max_batch().to_string(),
            "--guarantee",
            guarantee,
        ])
        .arg("--data-dir")
        .arg(stack.data_dir.join("workers"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut t0, mut n0) = (None, 0);
    let mut n = 0;
    while (n as u64) < records && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = processed(&stack);
        if t0.is_none() && n > 0 {
            t0 = Some(Instant::now());
            n0 = n;
        }
    }
    let elapsed = t0.expect("outputs appeared").elapsed().as_secs_f64();
    let _ = worker.kill();
    let _ = worker.wait();
    stack.down().await;
    assert_eq!(n as u64, records, "every record processed");
    (n - n0) as f64 / elapsed
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records = env("BENCH_RECORDS", 10_000);
    let in_flight = env("BENCH_IN_FLIGHT", 256);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let machine = keyflow_e2e::bench::machine();
    if only.is_empty() || only == "key-parallel" {
        let sequential = run(records, 1, "5ms", "effectively-once").await;
        eprintln!("sequential: {sequential:.0} records/s");
        let parallel = run(records, in_flight, "5ms", "effectively-once").await;
        eprintln!("key-parallel: {parallel:.0} records/s");
        let ratio = parallel / sequential;
        let body = format!(
            "## Runtime: key-parallel ÷ partition-sequential\n\n\
             `cargo build --release --bins && cargo bench -p keyflow-e2e --bench runtime_throughput` (BENCH_RECORDS={records}, BENCH_IN_FLIGHT={in_flight}), \
             release build on {machine}, `worker counter --delay 5ms` (5 ms simulated I/O per record) on 1 partition, ~{records} distinct keys, \
             the full effectively-once path (changelog commit, outbox publish, marker) per batch of ≤ {} (`--max-batch`), the embedded broker (keyflow-broker). \
             Rates are measured from the first to the last committed batch (the group's input offsets).\n\n\
             | mode | records/s |\n|---|---|\n| partition-sequential (`--max-in-flight 1`) | {sequential:.0} |\n\
             | key-parallel (`--max-in-flight {in_flight}`) | {parallel:.0} |\n\n**Ratio: {ratio:.1}×** (target ≥ 25×).\n",
            max_batch(),
        );
        keyflow_e2e::bench::write_section("runtime-key-parallel", &body);
        println!("{body}");
    }
    if only.is_empty() || only == "guarantee" {
        // Same worker, no simulated I/O: what the changelog costs.
        let (rows, rounds, median) = rounds_of(records, in_flight, "effectively-once", "at-least-once").await;
        let body = format!(
            "## Runtime: effectively-once ÷ at-least-once\n\n\
             `cargo build --release --bins && BENCH_ONLY=guarantee cargo bench -p keyflow-e2e --bench runtime_throughput` (BENCH_RECORDS={records}, BENCH_ROUNDS={rounds}), \
             release build on {machine}, `worker counter --delay 0ms --max-in-flight {in_flight}` on 1 partition, ~{records} distinct keys, batches of ≤ {} (`--max-batch`), the embedded broker (keyflow-broker). \
             Both hand a batch's outputs to the producer and commit its offsets once they are acknowledged, \
             waiting for that while the next batch is decided; at-least-once (`--guarantee at-least-once`, hidden flag) has no changelog; \
             effectively-once also records each batch's decision (commit record with outbox and state deltas) before publishing it, \
             concurrently with the previous batch's acknowledgement, and its published marker after.\n\n\
             | round | effectively-once records/s | at-least-once records/s | ratio |\n|---|---|---|---|\n{rows}\n\
             **Median ratio: {median:.3}** (target ≥ 0.85).\n",
            max_batch(),
        );
        keyflow_e2e::bench::write_section("runtime-guarantee", &body);
        println!("{body}");
    }
    if only.is_empty() || only == "exactly-once" {
        let (rows, rounds, median) = rounds_of(records, in_flight, "exactly-once", "effectively-once").await;
        let body = format!(
            "## Runtime: exactly-once ÷ effectively-once\n\n\
             `cargo build --release --bins && BENCH_ONLY=exactly-once cargo bench -p keyflow-e2e --bench runtime_throughput` (BENCH_RECORDS={records}, BENCH_ROUNDS={rounds}), \
             release build on {machine}, `worker counter --delay 0ms --max-in-flight {in_flight}` on 1 partition, ~{records} distinct keys, batches of ≤ {} (`--max-batch`), \
             keyflow's broker applying the transactions. Exactly-once writes each batch's outputs, changelog records and input offsets in one Kafka \
             transaction (AddPartitionsToTxn, produce, AddOffsetsToTxn, TxnOffsetCommit, EndTxn with its markers) and waits for the commit before \
             the next batch; effectively-once overlaps a batch's changelog write with the previous batch's acknowledgement.\n\n\
             | round | exactly-once records/s | effectively-once records/s | ratio |\n|---|---|---|---|\n{rows}\n\
             **Median ratio: {median:.3}**. Above 1 means exactly-once is the faster: its changelog carries no outbox \
             (each output is written once, inside the transaction) and no published markers, where effectively-once writes \
             every output twice (in the changelog's outbox, then to its topic) and a marker per batch.\n",
            max_batch(),
        );
        keyflow_e2e::bench::write_section("runtime-exactly-once", &body);
        println!("{body}");
    }
}

/// Interleaved rounds of `a` and `b` (`BENCH_ROUNDS`, default 3) with no
/// simulated I/O: table rows, the round count, and the median ratio a ÷ b.
async fn rounds_of(records: u64, in_flight: u64, a: &str, b: &str) -> (String, u64, f64) {
    let rounds = env("BENCH_ROUNDS", 3);
    let mut rows = String::new();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let rb = run(records, in_flight, "0ms", b).await;
        let ra = run(records, in_flight, "0ms", a).await;
        eprintln!("round {round}: {b} {rb:.0}/s, {a} {ra:.0}/s");
        rows.push_str(&format!("| {round} | {ra:.0} | {rb:.0} | {:.3} |\n", ra / rb));
        ratios.push(ra / rb);
    }
    ratios.sort_by(f64::total_cmp);
    (rows, rounds, ratios[ratios.len() / 2])
}
