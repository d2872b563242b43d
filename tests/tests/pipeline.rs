//! The whole pipeline — the four workers, two instances each, as separate
//! processes on the real embedded broker — checked by the verifier
//! (`devstack verify`'s invariants) after kill -9 chaos, and the one-command
//! demo as a user runs it.

use std::time::{Duration, Instant};

use keyflow_devstack::pipeline::{group_positions, Bins, GroupPosition, Pipeline, WORKERS};
use keyflow_devstack::verify::{self, Report};
use keyflow_e2e::{bin, options, start, text};
use keyflow_schemas::rules::RuleArgs;
use keyflow_schemas::topics::TopicNames;
use keyflow_schemas::{Codec, RegistryConfig};

/// Every record type of docs/domain.md.
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

/// Each group's lag (records not committed past), for failure messages.
fn lag_report(kafka: &keyflow_schemas::client::KafkaArgs) -> String {
    let names = TopicNames::default();
    WORKERS
        .iter()
        .map(|w| {
            let topics: Vec<String> = w.inputs().into_iter().map(|t| names.get(t)).collect();
            match group_positions(kafka, w.name(), &topics) {
                Ok(ps) => format!("{} lag {:?}", w.name(), ps.iter().map(GroupPosition::lag).collect::<Vec<_>>()),
                Err(e) => format!("{}: {e}", w.name()),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

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
    chaos(&[]).await;
}

/// The same chaos with every worker in exactly-once mode: the verifier reads
/// read_committed (librdkafka's default), so not one raw copy may show.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_random_exactly_once_workers_under_load_leaves_no_copy_and_every_invariant_holding() {
    let report = chaos(&["--guarantee", "exactly-once"]).await;
    assert_eq!(report.raw_copies_total, 0, "read_committed readers see no copy:\n{}", report.text());
}

/// kill -9 of random instances, two of each worker (with `extra` flags),
/// while the producers run; then the verifier's report, every invariant held.
async fn chaos(extra: &[&str]) -> Report {
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
        &[&["--snapshot-interval-bytes", "500000"], extra].concat(),
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
    assert!(drained, "the workers caught up after the chaos ({})\n{}", lag_report(&stack.kafka), log_tails(&pipeline));
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
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn devstack_demo_ends_with_every_invariant_holding_no_copies_and_every_event_type() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("demo.json");
    let out = tokio::process::Command::new(bin("devstack"))
        .args(["demo", "--duration", "15s", "--prometheus", "--summary-json", summary.to_str().unwrap()])
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
    // --prometheus: a local Prometheus scraped all 8 worker instances; a clean run fires no alert.
    assert_eq!(report["prometheus"]["workers_up"], 8, "{}", report["prometheus"]);
    assert_eq!(report["prometheus"]["alerts_firing"], serde_json::json!([]), "{}", report["prometheus"]);
    assert!(stdout.contains(report["prometheus"]["url"].as_str().unwrap()), "the URL is printed");
    for w in report["workers"].as_array().unwrap() {
        assert_eq!(w["exit_codes"], serde_json::json!([0, 0]), "{w}");
        assert!(w["consumed"].as_u64().unwrap() > 0, "{w}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verifier_reports_forged_duplicated_and_missing_outputs_with_key_topic_and_offset() {
    use keyflow_schemas::events::*;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 2)).await;
    let (brokers, registry) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let mut orders = producer(&brokers, &registry, "orders", "0", "400", "5");
    assert!(orders.wait().await.unwrap().success());
    let bins = Bins::in_dir(bin("worker").parent().unwrap());
    let order_workers = [WORKERS[0], WORKERS[1], WORKERS[2]];
    let mut pipeline = Pipeline::new(bins, &stack.kafka, &stack.registry, &dir.path().join("logs"), &[]);
    pipeline.start(&order_workers, 1).unwrap();
    assert!(
        pipeline.wait_drained(&TopicNames::default(), Duration::from_secs(180)).await.unwrap(),
        "{}",
        log_tails(&pipeline)
    );
    pipeline.stop(Duration::from_secs(10)).await;

    let verify_json = || async {
        let out = tokio::process::Command::new(bin("devstack"))
            .args(["verify", "-b", &brokers, "--registry", &registry, "--json"])
            .output()
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report)
    };
    let (code, clean) = verify_json().await;
    assert_eq!(code, Some(0), "a clean run verifies: {clean}");
    assert_eq!(clean["raw_copies_total"], 0);

    // Forge: a second, different decision for an authorized order; a loyalty
    // event for a payment that owes none; a byte copy; an order nobody decided.
    let codec = Codec::new(&RegistryConfig::new(&registry)).unwrap();
    let payments = keyflow_devstack::inspect::read_raw(&stack.kafka, "payments", usize::MAX).await.unwrap();
    let mut authorized = None;
    let mut declined = None;
    for r in &payments {
        match codec.decode::<PaymentEvent>("payments", r.payload.as_deref()).await.unwrap() {
            PaymentEvent::PaymentAuthorized(a) if authorized.is_none() => authorized = Some((r.clone(), a)),
            PaymentEvent::PaymentDeclined(d) if declined.is_none() => declined = Some(d),
            _ => {}
        }
    }
    let (copy_of, a) = authorized.expect("an authorized order");
    let d = declined.expect("a declined order");
    let mut second = PaymentDeclined {
        metadata: a.metadata.clone(),
        order_id: a.order_id.clone(),
        customer_id: a.customer_id.clone(),
        reason: DeclineReason::CardDeclined,
        amount_minor: a.amount_minor,
        currency: a.currency.clone(),
    };
    second.metadata.event_id = uuid::Uuid::new_v4().to_string();
    let points = PointsAwarded {
        metadata: EventMetadata {
            event_id: uuid::Uuid::new_v4().to_string(),
            causation_id: Some(d.metadata.event_id.clone()),
            ..d.metadata.clone()
        },
        order_id: d.order_id.clone(),
        customer_id: d.customer_id.clone(),
        points: 10,
        balance: 10,
    };
    let mut stray = match keyflow_schemas::samples::samples("verify").orders[0].clone() {
        OrderEvent::OrderPlaced(o) => o,
        _ => unreachable!("the first sample is an OrderPlaced"),
    };
    stray.customer_id = "customer-stray".into();
    let producer: FutureProducer =
        keyflow_schemas::kafka::client_config(&stack.kafka, keyflow_schemas::kafka::PRODUCER_DEFAULTS)
            .unwrap()
            .create()
            .unwrap();
    let send = |topic: &'static str, key: String, value: Vec<u8>| {
        let producer = producer.clone();
        async move {
            producer
                .send(FutureRecord::to(topic).key(&key).payload(&value), Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }
    };
    let forged =
        send("payments", a.customer_id.clone(), codec.encode("payments", &PaymentEvent::from(second)).await.unwrap())
            .await;
    send("loyalty", d.customer_id.clone(), codec.encode("loyalty", &LoyaltyEvent::from(points)).await.unwrap()).await;
    send("payments", copy_of.key_text(), copy_of.payload.clone().unwrap()).await;
    send("orders", "customer-stray".into(), codec.encode("orders", &OrderEvent::from(stray)).await.unwrap()).await;

    let (code, report) = verify_json().await;
    assert_eq!(code, Some(2), "violations exit with status 2: {report}");
    assert_eq!(report["raw_copies_total"], 1, "the byte copy is counted, not a violation");
    let violations = report["violations"].as_array().unwrap();
    let has = |inv: u64, topic: &str, key: &str, text: &str| {
        violations.iter().any(|v| {
            v["invariant"] == inv
                && v["topic"] == topic
                && v["key"] == key
                && v["message"].as_str().unwrap().contains(text)
        })
    };
    assert!(has(6, "payments", &a.customer_id, "second payment decision"), "{violations:#?}");
    assert!(
        violations.iter().any(|v| v["offset"] == forged.offset && v["partition"] == forged.partition),
        "the forged record is named by partition and offset: {violations:#?}"
    );
    assert!(has(4, "loyalty", &d.customer_id, "owes no loyalty event"), "{violations:#?}");
    assert!(has(1, "orders", "customer-stray", "no payment decision"), "{violations:#?}");
    assert!(has(2, "orders", "customer-stray", "no fulfillment outcome"), "{violations:#?}");
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn devstack_demo_keep_prints_its_report_and_summary_json_while_the_stack_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("demo.json");
    let stdout = dir.path().join("stdout.txt");
    let mut demo = std::process::Command::new(bin("devstack"))
        .args(["demo", "--duration", "5s", "--keep", "--summary-json", summary.to_str().unwrap()])
        .args(["--data-dir", dir.path().join("demo").to_str().unwrap()])
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !summary.exists() {
        if let Some(status) = demo.try_wait().unwrap() {
            panic!("demo --keep exited ({status}) before writing its summary");
        }
        assert!(std::time::Instant::now() < deadline, "no summary JSON after 300 s");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(demo.try_wait().unwrap().is_none(), "the stack still runs once the report is out");
    let report = std::fs::read_to_string(&stdout).unwrap();
    assert!(report.contains("== keyflow demo report =="), "the report is printed before Ctrl-C:\n{report}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    // Ctrl-C stops it cleanly.
    std::process::Command::new("kill").args(["-INT", &demo.id().to_string()]).status().unwrap();
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(s) = demo.try_wait().unwrap() {
            break s;
        }
        assert!(stopped.elapsed() < std::time::Duration::from_secs(60), "demo --keep still runs 60 s after Ctrl-C");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(status.success(), "demo --keep after Ctrl-C: {status}");
}
