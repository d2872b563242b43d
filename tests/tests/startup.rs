//! Start-up with a wrong address, as a new user makes it: every binary that
//! works on an existing cluster (the load generators, the worker, devstack's
//! cluster commands) exits non-zero within a bounded time with one line
//! naming the address and the flag or variable that sets it, and prints no
//! line twice (librdkafka's connection errors included).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use keyflow_e2e::{bin, free_port, options, start};

/// A replay file with one valid event.
const EVENT: &str = r#"{"type": "OrderCancelled", "order_id": "o-1", "customer_id": "c-1", "reason": "test", "metadata": {"event_id": "e-1"}}"#;

/// Every command that starts by reaching the cluster (and the registry, unless `registry` is false).
fn commands(replay: &str) -> Vec<(&'static str, Vec<String>, bool)> {
    let c = |bin: &'static str, args: &[&str], registry: bool| {
        (bin, args.iter().map(|a| a.to_string()).collect(), registry)
    };
    vec![
        c("producer", &["orders", "--count", "1"], true),
        c("producer", &["properties", "--count", "1"], true),
        c("producer", &["replay", replay], true),
        c("worker", &["payment"], true),
        c("devstack", &["init"], true),
        c("devstack", &["smoke"], true),
        c("devstack", &["verify"], true),
        c("devstack", &["tail", "orders", "-e"], true),
        c("devstack", &["peek", "orders"], true),
        c("devstack", &["topics"], false),
    ]
}

/// Runs every command against `brokers` and `registry` at once; returns
/// (command, exit code, seconds taken, stderr).
async fn run_all(
    commands: &[(&'static str, Vec<String>, bool)],
    brokers: &str,
    registry: &str,
) -> Vec<(String, Option<i32>, f64, String)> {
    let runs = commands.iter().map(|(name, args, _)| async move {
        let started = Instant::now();
        let child = tokio::process::Command::new(bin(name))
            .args(args)
            .args(["-b", brokers])
            .args(if *name == "devstack" && args[0] == "topics" { vec![] } else { vec!["--registry", registry] })
            .env_remove("KAFKA_BROKERS")
            .env_remove("SCHEMA_REGISTRY_URL")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), child)
            .await
            .unwrap_or_else(|_| panic!("{name} {args:?} still runs after 60 s"))
            .unwrap();
        let what = format!("{name} {}", args.join(" "));
        (what, out.status.code(), started.elapsed().as_secs_f64(), String::from_utf8_lossy(&out.stderr).into_owned())
    });
    futures::future::join_all(runs).await
}

/// The checks every run must pass: non-zero, bounded, one line with `want`, no repeats.
fn check(runs: &[(String, Option<i32>, f64, String)], want: &[&str]) {
    for (what, code, took, stderr) in runs {
        assert!(code.is_some_and(|c| c != 0), "{what}: exit {code:?}\n{stderr}");
        assert!(*took < 30.0, "{what}: took {took:.1} s\n{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let naming: Vec<&&str> = lines.iter().filter(|l| want.iter().all(|w| l.contains(w))).collect();
        assert_eq!(naming.len(), 1, "{what}: one line naming {want:?}:\n{stderr}");
        // A line repeated, timestamps aside, is noise a user must scroll past.
        let mut seen = HashSet::new();
        for l in &lines {
            let text = l.split_once(' ').filter(|(t, _)| t.starts_with("20")).map_or(*l, |(_, rest)| rest);
            assert!(seen.insert(text), "{what}: line printed twice: {text}\n{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_binary_exits_within_30_s_with_one_line_naming_an_unreachable_broker_and_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("events.jsonl");
    std::fs::write(&replay, format!("{EVENT}\n")).unwrap();
    // A registry that answers, so only the broker is wrong.
    let (registry, _stop, _task) = keyflow_devstack::stack::start_registry(dir.path(), free_port()).await.unwrap();
    let broker = format!("127.0.0.1:{}", free_port());
    let runs = run_all(&commands(replay.to_str().unwrap()), &broker, &registry).await;
    check(&runs, &["cannot reach the Kafka cluster", &broker, "-b/--brokers or KAFKA_BROKERS"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_binary_exits_within_30_s_with_one_line_naming_an_unreachable_registry_and_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("events.jsonl");
    std::fs::write(&replay, format!("{EVENT}\n")).unwrap();
    // A broker that answers (the real embedded one), so only the registry is wrong.
    let stack = start(&options(dir.path(), 1)).await;
    let registry = format!("http://127.0.0.1:{}", free_port());
    let with_registry: Vec<_> = commands(replay.to_str().unwrap()).into_iter().filter(|c| c.2).collect();
    let runs = run_all(&with_registry, &stack.kafka.brokers, &registry).await;
    check(&runs, &["cannot reach the schema registry", &registry, "--registry or SCHEMA_REGISTRY_URL"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refuses_a_changelog_that_expires_by_age_with_one_line_naming_retention_ms() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 2)).await;
    // An operator gave the changelog a retention: an idle partition's only
    // snapshot would one day be deleted with its keys' state.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &stack.kafka.brokers).create().unwrap();
    let expire = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("payment-state"))
        .set("cleanup.policy", "delete")
        .set("retention.ms", "604800000");
    let altered = admin.alter_configs(&[expire], &rdkafka::admin::AdminOptions::new()).await.unwrap();
    assert!(altered.iter().all(|r| r.is_ok()), "{altered:?}");
    let out = tokio::process::Command::new(bin("worker"))
        .args(["payment", "-b", &stack.kafka.brokers, "--registry", &stack.registry.registry])
        .env_remove("KAFKA_BROKERS")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("exits").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> =
        stderr.lines().filter(|l| l.contains("payment-state") && l.contains("retention.ms")).collect();
    assert_eq!(lines.len(), 1, "one line names the changelog and the setting:\n{stderr}");
    stack.down().await;
}
