//! The `producer` binary against the real broker and registry: what it
//! writes decodes, keeps generation order per key, is byte-identical for the
//! same seed, and bad input is refused before anything is sent.

use std::collections::HashMap;

use keyflow_devstack::inspect::read_raw;
use keyflow_e2e::{free_port, options, run, start, text};
use keyflow_producers::gen::Generator;
use keyflow_producers::orders::{OrderGen, OrderMix};
use keyflow_schemas::events::{AnyEvent, OrderEvent};
use keyflow_schemas::topics::TopicSpec;
use keyflow_schemas::{Codec, RegistryConfig};

const START: &str = "1767225600000";

fn summary(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn orders_decode_and_each_key_sees_events_in_generation_order() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 3)).await;
    let sum = dir.path().join("summary.json");
    let out = run(
        "producer",
        &[
            "orders",
            "-b",
            &stack.kafka.brokers,
            "--registry",
            &stack.registry.registry,
            "--rate",
            "0",
            "--count",
            "3000",
            "--seed",
            "42",
            "--start-time",
            START,
            "--event-step-ms",
            "1",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    )
    .await;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let s = summary(&sum);
    assert_eq!(
        (s["sent"].as_u64(), s["acknowledged"].as_u64(), s["failed"].as_u64()),
        (Some(3000), Some(3000), Some(0))
    );
    assert!(s["duplicates_injected"].as_u64().unwrap() > 0);

    let codec = Codec::new(&RegistryConfig::new(&stack.registry.registry)).unwrap();
    let records = read_raw(&stack.kafka, "orders", usize::MAX).await.unwrap();
    assert_eq!(records.len(), 3000);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for r in &records {
        let e: OrderEvent = codec.decode("orders", r.payload.as_deref()).await.expect("every record decodes");
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert_eq!(key, keyflow_schemas::events::TopicEvent::key(&e));
        assert!(r.headers.iter().any(|(k, _)| k == "traceparent"), "trace context on every record");
        seen.entry(key).or_default().push(keyflow_schemas::events::TopicEvent::metadata(&e).event_id.clone());
    }
    // Regenerate the same stream: per key, the topic holds exactly the generation order.
    let mut g = OrderGen::new(OrderMix::default(), 42, START.parse().unwrap(), 1.0);
    let mut want: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..3000 {
        let p = g.next_event();
        let AnyEvent::Order(e) = p.event else { panic!("orders only") };
        want.entry(keyflow_schemas::events::TopicEvent::key(&e).to_string())
            .or_default()
            .push(keyflow_schemas::events::TopicEvent::metadata(&e).event_id.clone());
    }
    assert_eq!(seen, want);
    stack.down().await;
}

#[tokio::test]
async fn same_seed_and_start_time_write_byte_identical_records() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 2)).await;
    let specs: Vec<TopicSpec> =
        ["contracts-a", "contracts-b", "properties-a", "properties-b"].iter().map(|n| TopicSpec::new(n, 2)).collect();
    keyflow_devstack::kafka::create_topics(&stack.kafka, &specs, None).await.unwrap();
    for suffix in ["a", "b"] {
        let out = run(
            "producer",
            &[
                "properties",
                "-b",
                &stack.kafka.brokers,
                "--registry",
                &stack.registry.registry,
                "--rate",
                "0",
                "--count",
                "1500",
                "--seed",
                "7",
                "--start-time",
                START,
                "--topic",
                &format!("contracts=contracts-{suffix}"),
                "--topic",
                &format!("properties=properties-{suffix}"),
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    for t in ["contracts", "properties"] {
        let a = read_raw(&stack.kafka, &format!("{t}-a"), usize::MAX).await.unwrap();
        let b = read_raw(&stack.kafka, &format!("{t}-b"), usize::MAX).await.unwrap();
        assert!(!a.is_empty());
        let strip = |v: &[keyflow_devstack::inspect::RawRecord]| -> Vec<_> {
            v.iter().map(|r| (r.partition, r.offset, r.key.clone(), r.payload.clone(), r.headers.clone())).collect()
        };
        assert_eq!(strip(&a), strip(&b), "{t}");
    }
    stack.down().await;
}

#[tokio::test]
async fn replay_refuses_a_file_with_a_bad_line_and_sends_nothing_then_sends_a_good_one_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 1)).await;
    let good = r#"{"type": "OrderPlaced", "order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "A", "quantity": 2, "unit_price_minor": 500}], "total_minor": 1000, "currency": "EUR", "shipping_address": {"country": "NL", "city": "Utrecht", "street": "Main", "number": "1", "postal_code": "1234"}, "payment_method_token": "tok_visa", "metadata": {"event_id": "e-1"}}"#;
    let cancel = r#"{"type": "OrderCancelled", "order_id": "o-1", "customer_id": "c-1", "reason": "oops", "metadata": {"event_id": "e-2"}}"#;
    let bad = cancel.replace(r#""reason": "oops""#, r#""reason": 5"#);
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, format!("{good}\n{cancel}\n{bad}\n")).unwrap();
    let args = |f: &str| {
        vec![
            "replay".to_string(),
            f.to_string(),
            "-b".into(),
            stack.kafka.brokers.clone(),
            "--registry".into(),
            stack.registry.registry.clone(),
        ]
    };
    let a = args(file.to_str().unwrap());
    let out = run("producer", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("line 3") && stderr.contains("reason") && stderr.contains("nothing was sent"), "{stderr}");
    assert!(read_raw(&stack.kafka, "orders", usize::MAX).await.unwrap().is_empty(), "nothing was sent");

    std::fs::write(&file, format!("{good}\n{cancel}\n")).unwrap();
    let out = run("producer", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    let codec = Codec::new(&RegistryConfig::new(&stack.registry.registry)).unwrap();
    let mut ids = Vec::new();
    for r in read_raw(&stack.kafka, "orders", usize::MAX).await.unwrap() {
        let e: OrderEvent = codec.decode("orders", r.payload.as_deref()).await.unwrap();
        ids.push(keyflow_schemas::events::TopicEvent::metadata(&e).event_id.clone());
    }
    assert_eq!(ids, vec!["e-1", "e-2"]);
    stack.down().await;
}

#[tokio::test]
async fn bad_flags_are_refused_and_undeliverable_events_are_counted_and_fail_the_run() {
    let out = run("producer", &["orders", "--rate=-5", "--count", "1"]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("--rate"), "{err}");
    let out = run("producer", &["orders", "--cancel-rate", "2"]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("--cancel-rate"), "{err}");
    let out = run("producer", &["orders", "--registry", "localhost:8081"]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("SCHEMA_REGISTRY_URL"), "{err}");

    // A broker that answers at start-up, then refuses every produce (fault
    // injection on librdkafka's mock cluster): events are retried until
    // delivery.timeout.ms, then counted as failed.
    let dir = tempfile::tempdir().unwrap();
    let stack = keyflow_e2e::counter::MockStack::start(dir.path(), 1).await;
    let refusals = [rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 1000];
    stack.cluster.request_errors(rdkafka::types::RDKafkaApiKey::Produce, &refusals);
    let sum = dir.path().join("s.json");
    let out = run(
        "producer",
        &[
            "orders",
            "-b",
            &stack.brokers,
            "--registry",
            &stack.registry,
            "--count",
            "5",
            "--rate",
            "0",
            "-X",
            "delivery.timeout.ms=2000",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    )
    .await;
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let s = summary(&sum);
    assert_eq!(
        (s["sent"].as_u64(), s["failed"].as_u64(), s["acknowledged"].as_u64()),
        (Some(5), Some(5), Some(0)),
        "{s}"
    );
    assert!(err.contains("delivery failed"), "{err}");
}

#[tokio::test]
async fn ctrl_c_stops_flushes_and_summarizes_while_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 1)).await;
    let sum = dir.path().join("s.json");
    let metrics = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(keyflow_e2e::bin("producer"))
        .args([
            "orders",
            "-b",
            &stack.kafka.brokers,
            "--registry",
            &stack.registry.registry,
            "--rate",
            "200",
            "--metrics-addr",
            &metrics,
            "--summary-json",
            sum.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the producer has sent something, reading its live metrics.
    let url = format!("http://{metrics}/metrics");
    let mut body = String::new();
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(r) = reqwest::get(&url).await {
            body = r.text().await.unwrap_or_default();
            if body.contains("keyflow_producer_events_acked_total{") {
                break;
            }
        }
    }
    assert!(body.contains(keyflow_schemas::metrics::PRODUCER_SENT), "{body}");
    assert!(body.contains(keyflow_schemas::metrics::PRODUCER_DELIVERY_SECONDS), "{body}");
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted") && err.contains("acknowledged"), "{err}");
    let s = summary(&sum);
    assert_eq!(s["run"]["interrupted"], true);
    assert!(s["sent"].as_u64().unwrap() > 0);
    assert_eq!(s["sent"], s["acknowledged"], "everything in flight was flushed: {s}");
    stack.down().await;
}
