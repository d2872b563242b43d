//! The whole pipeline — the four workers, two instances each, as separate
//! processes on the real embedded broker — checked by the verifier
//! (`devstack verify`'s invariants) after kill -9 chaos, and the one-command
//! demo as a user runs it.

use std::time::{Duration, Instant};

use keyflow_e2e::{bin, options, start, text};
use keyflow_infra::pipeline::{Bins, Pipeline, WORKERS};
use keyflow_infra::verify::{self, Report};
use keyflow_schemas::rules::RuleArgs;
use keyflow_schemas::topics::TopicNames;
use keyflow_schemas::{Codec, RegistryConfig};

/// Every record type of DOMAIN.md.
const EVENT_TYPES: [&str; 12] = [
    "OrderPlaced",
    "OrderCancelled",
    "PaymentAuthorized",
    "PaymentDeclined",
    "PaymentVoided",
    "OrderFulfilled",
    "FulfillmentCancelled",
    "PointsAwarded",
    "PointsRevoked",
    "ContractStatusChanged",
    "PublicationApprovalRequested",
    "PublicationEvaluationCompleted",
];

fn assert_every_event_type(report: &Report) {
    for t in EVENT_TYPES {
        assert!(report.events.get(t).copied().unwrap_or(0) > 0, "no {t} in the run: {:?}", report.events);
    }
}

fn producer(
    brokers: &str,
    registry: &str,
    command: &str,
    rate: &str,
    count: &str,
    seed: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(bin("producer"))
        .args([command, "-b", brokers, "--registry", registry, "--rate", rate, "--count", count, "--seed", seed])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn log_tails(pipeline: &Pipeline) -> String {
    pipeline
        .workers
        .iter()
        .map(|w| format!("--- {}\n{}", w.instance, keyflow_e2e::counter::log_tail(&w.log)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_random_workers_under_load_leaves_every_invariant_holding() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 3)).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let bins = Bins::in_dir(bin("worker").parent().unwrap());
    // Small snapshots, so kills land during snapshot writes and restores start from one.
    let mut pipeline = Pipeline::new(
        bins,
        &stack.kafka,
        &stack.registry,
        &dir.path().join("logs"),
        &["--snapshot-interval-bytes", "500000"],
    );
    pipeline.start(&WORKERS, 2).unwrap();
    pipeline.wait_ready(Duration::from_secs(120)).await.unwrap();
    let mut orders = producer(&brokers, &registry, "orders", "500", "20000", "21");
    let mut properties = producer(&brokers, &registry, "properties", "100", "4000", "22");

    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut orders_done, mut properties_done) = (None, None);
    while orders_done.is_none() || properties_done.is_none() {
        assert!(Instant::now() < deadline, "the producers did not finish in time");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(1500 + rng % 2000)).await;
        // SIGKILL a random instance at a random moment and bring it back.
        let victim = (rng >> 8) as usize % pipeline.workers.len();
        pipeline.kill9_and_restart(victim).await.unwrap();
        kills += 1;
        orders_done = orders_done.or(orders.try_wait().unwrap());
        properties_done = properties_done.or(properties.try_wait().unwrap());
        let exited = pipeline.exited();
        assert!(exited.is_empty(), "a worker exited by itself: {exited:?}\n{}", log_tails(&pipeline));
    }
    for (name, status) in [("orders", orders_done), ("properties", properties_done)] {
        assert!(status.unwrap().success(), "producer {name} failed");
    }
    let drained = pipeline.wait_drained(&TopicNames::default(), Duration::from_secs(300)).await.unwrap();
    assert!(drained, "the workers caught up after the chaos\n{}", log_tails(&pipeline));
    let stopped = pipeline.stop(Duration::from_secs(10)).await;
    assert!(stopped.iter().all(|(_, s)| s.is_some_and(|s| s.success())), "clean exits after SIGTERM: {stopped:?}");

    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let settings = verify::Settings { names: TopicNames::default(), rules: RuleArgs::default(), latency_from_ms: None };
    let report = verify::verify(&stack.kafka, &codec, &settings, |_| {}).await.unwrap();
    eprintln!("{}\nkills: {kills}, raw copies: {}", report.text(), report.raw_copies_total);
    assert!(kills >= 8, "the run was interrupted by kill -9 ({kills} times)");
    assert!(report.ok, "invariants hold after {kills} kills:\n{}", report.text());
    assert_eq!(report.violation_count, 0);
    assert_every_event_type(&report);
    let logs: String = pipeline.workers.iter().map(|w| std::fs::read_to_string(&w.log).unwrap_or_default()).collect();
    assert!(logs.contains("state snapshot written"), "snapshots were written and restored from");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn devstack_demo_ends_with_every_invariant_holding_no_copies_and_every_event_type() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("demo.json");
    let out = tokio::process::Command::new(bin("devstack"))
        .args(["demo", "--duration", "15s", "--no-install", "--summary-json", summary.to_str().unwrap()])
        .args(["--data-dir", dir.path().join("demo").to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for want in
        ["== keyflow demo report ==", "demo: OK", "verify: OK", "where to look next", "OrderPlaced → PointsAwarded"]
    {
        assert!(stdout.contains(want), "report lacks '{want}':\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["verify"]["raw_copies_total"], 0, "a run without crashes leaves no copies");
    assert_eq!(report["verify"]["violation_count"], 0);
    for t in EVENT_TYPES {
        assert!(report["verify"]["events"][t].as_u64().unwrap_or(0) > 0, "no {t}: {}", report["verify"]["events"]);
    }
    // Every rule branch the default mix is built to exercise.
    let branches = &report["verify"]["branches"];
    for b in [
        "payment: PaymentDeclined INVALID_AMOUNT",
        "payment: PaymentDeclined UNSUPPORTED_CURRENCY",
        "payment: PaymentDeclined CARD_DECLINED",
        "payment: PaymentDeclined SPEND_LIMIT_EXCEEDED",
        "fulfillment: FulfillmentCancelled PAYMENT_DECLINED",
        "publication: APPROVED",
        "publication: DECLINED MODERATED_DESCRIPTION",
        "publication: DECLINED MODERATED_IMAGE",
        "publication: stale contract update ignored",
    ] {
        assert!(branches[b].as_u64().unwrap_or(0) > 0, "branch '{b}' not exercised: {branches}");
    }
    for w in report["workers"].as_array().unwrap() {
        assert_eq!(w["exit_codes"], serde_json::json!([0, 0]), "{w}");
        assert!(w["consumed"].as_u64().unwrap() > 0, "{w}");
    }
}
