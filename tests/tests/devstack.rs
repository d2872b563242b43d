//! The embedded dev stack against the real embedded broker: topics, schemas and
//! records round-trip; a restart keeps topics, records, offsets and schema
//! ids; bad input gets a clear error.

use std::time::Duration;

use keyflow_e2e::{free_port, options, run, start, text};
use keyflow_schemas::topics::catalog;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn ids(subjects: &[keyflow_schemas::registry_admin::Registered]) -> Vec<(String, u32)> {
    let mut v: Vec<_> = subjects.iter().map(|s| (s.subject.clone(), s.id)).collect();
    v.sort();
    v
}

#[tokio::test]
async fn up_creates_every_topic_and_every_event_type_reads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 3)).await;
    let topics = keyflow_schemas::kafka::list_topics(&stack.kafka, Duration::from_secs(10)).unwrap();
    for spec in catalog().specs(Some(3)) {
        assert_eq!(topics.get(&spec.name), Some(&spec.partitions), "{}", spec.name);
    }
    let report = keyflow_devstack::smoke::run(&stack.kafka, &stack.registry).await.unwrap();
    assert_eq!(report.events.len(), keyflow_schemas::contracts::all().len());
    assert!(report.ok, "{}", report.table());

    // The CLI prints the same, and peek decodes what smoke wrote.
    let out = run(
        "devstack",
        &["peek", "orders", "-b", &stack.kafka.brokers, "--registry", &stack.registry.registry, "--json"],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["record"], "keyflow.events.OrderPlaced");
    stack.down().await;
}

#[tokio::test]
async fn restart_keeps_topics_records_committed_offsets_and_schema_ids() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 2);
    let stack = start(&opts).await;
    let before = ids(&stack.report.subjects);
    let report = keyflow_devstack::smoke::run(&stack.kafka, &stack.registry).await.unwrap();
    let group = format!("restart-{}", uuid::Uuid::new_v4());
    let commit_at = {
        let c: BaseConsumer =
            keyflow_schemas::kafka::client_config(&stack.kafka, &[("group.id", &group)]).unwrap().create().unwrap();
        let mut tpl = TopicPartitionList::new();
        let e = &report.events[0];
        tpl.add_partition_offset(&e.topic, e.partition, Offset::Offset(e.offset + 1)).unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
        (e.topic.clone(), e.partition, e.offset + 1)
    };
    stack.down().await;

    let stack = start(&opts).await;
    assert!(stack.report.topics.iter().all(|t| t.status == "exists"), "{:?}", stack.report.topics);
    assert_eq!(ids(&stack.report.subjects), before, "schema ids survive a restart");
    let out = run(
        "devstack",
        &[
            "peek",
            "payments",
            "-b",
            &stack.kafka.brokers,
            "--registry",
            &stack.registry.registry,
            "--json",
            "-n",
            "100",
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), report.events.iter().filter(|e| e.topic == "payments").count());
    let c: BaseConsumer =
        keyflow_schemas::kafka::client_config(&stack.kafka, &[("group.id", &group)]).unwrap().create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&commit_at.0, commit_at.1);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let got = committed.find_partition(&commit_at.0, commit_at.1).unwrap().offset();
    assert_eq!(got, Offset::Offset(commit_at.2), "committed offset survives a restart");
    // And a new schema after the restart gets a fresh id, never an old one.
    let report2 = keyflow_devstack::smoke::run(&stack.kafka, &stack.registry).await.unwrap();
    assert!(report2.ok);
    stack.down().await;
}

#[tokio::test]
async fn worker_refuses_to_start_when_co_partitioned_topics_differ() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 2)).await;
    // Point the join at a payments topic with another partition count.
    let spec = keyflow_schemas::topics::TopicSpec::new("payments-3", 3);
    keyflow_devstack::kafka::create_topics(&stack.kafka, &[spec], None).await.unwrap();
    let out = run("worker", &["fulfillment", "-b", &stack.kafka.brokers, "--topic", "payments=payments-3"]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("orders has 2") && stderr.contains("payments-3 has 3"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    stack.down().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 1)).await;
    let b = stack.kafka.brokers.clone();
    let r = stack.registry.registry.clone();

    let out = run("devstack", &["peek", "no-such-topic", "-b", &b, "--registry", &r]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("no-such-topic") && err.contains("does not exist"), "{err}");

    let dead = format!("127.0.0.1:{}", free_port());
    let out = run("devstack", &["topics", "-b", &dead]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains(&dead), "{err}");

    let out = run("devstack", &["topics", "-b", "not-a-broker-list"]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("--brokers"), "{err}");

    let dead_registry = format!("http://127.0.0.1:{}", free_port());
    let out = run("devstack", &["init", "-b", &b, "--registry", &dead_registry]).await;
    let (_, err) = text(&out);
    assert!(
        !out.status.success() && err.contains(&dead_registry) && err.contains("--registry or SCHEMA_REGISTRY_URL"),
        "{err}"
    );

    let busy = stack.broker_port();
    let out = run(
        "devstack",
        &[
            "up",
            "--data-dir",
            dir.path().join("other").to_str().unwrap(),
            "--broker-port",
            &busy.to_string(),
            "--registry-port",
            &free_port().to_string(),
        ],
    )
    .await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains(&format!("port {busy}")) && err.contains("--broker-port"), "{err}");

    let out = run("devstack", &["smoke", "-b", &b, "--registry", &r, "-X", "message.max.bytes=99999999"]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("message.max.bytes"), "{err}");
    stack.down().await;
}
