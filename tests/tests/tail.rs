//! `devstack tail` as a user runs it against the real embedded broker:
//! Avro decoded through the registry into JSON lines with key, partition,
//! offset, timestamp and headers; every start position (beginning, end and
//! follow, offset, last N, time); key and type filters; undecodable records
//! shown with their error; bad flags named.

use std::collections::BTreeMap;
use std::time::Duration;

use keyflow_e2e::{bin, options, run, start, text};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

async fn tail(brokers: &str, registry: &str, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["tail", "orders", "-b", brokers, "--registry", registry];
    argv.extend_from_slice(args);
    let out = run("devstack", &argv).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "devstack {argv:?}: {stderr}");
    assert!(stderr.contains("record(s) printed"), "summary on stderr: {stderr}");
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn positions(records: &[Value]) -> Vec<(i64, i64)> {
    records.iter().map(|r| (r["partition"].as_i64().unwrap(), r["offset"].as_i64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_decodes_filters_and_starts_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(&options(dir.path(), 3)).await;
    let (b, r) = (stack.kafka.brokers.clone(), stack.registry.registry.clone());
    let produced = run(
        "producer",
        &["orders", "-b", &b, "--registry", &r, "--count", "300", "--rate", "0", "--seed", "5", "--customers", "20"],
    )
    .await;
    assert!(produced.status.success(), "{}", text(&produced).1);
    // One record that is not Avro.
    let raw: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    raw.send(FutureRecord::to("orders").key("not-avro").payload("{}"), Duration::from_secs(10)).await.unwrap();

    // From the beginning to the end: everything, decoded, with metadata.
    let all = tail(&b, &r, &["--from", "beginning", "-e"]).await;
    assert_eq!(all.len(), 301);
    for rec in all.iter().filter(|r| r["key"] != "not-avro") {
        assert_eq!(rec["topic"], "orders");
        assert!(rec["timestamp"].as_i64().unwrap() > 0 && rec["time"].as_str().unwrap().ends_with('Z'), "{rec}");
        assert!(["OrderPlaced", "OrderCancelled"].contains(&rec["type"].as_str().unwrap()), "{rec}");
        assert_eq!(rec["key"], rec["value"]["customer_id"], "{rec}");
        assert!(rec["headers"]["traceparent"].as_str().is_some_and(|t| t.starts_with("00-")), "{rec}");
        assert!(rec["schema_id"].as_u64().is_some());
    }
    let bad: Vec<&Value> = all.iter().filter(|r| r["key"] == "not-avro").collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["error"].as_str().unwrap().contains("magic byte"), "{}", bad[0]);
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, o) in positions(&all) {
        let e = last.entry(p).or_insert(-1);
        assert!(o > *e, "per partition in offset order");
        *e = o;
    }

    // Key and type filters select exactly the matching records.
    let key = all[0]["key"].as_str().unwrap().to_string();
    let by_key = tail(&b, &r, &["--from", "beginning", "-e", "--key", &key]).await;
    assert_eq!(by_key.len(), all.iter().filter(|r| r["key"] == key.as_str()).count());
    assert!(by_key.iter().all(|r| r["key"] == key.as_str()));
    let cancels = tail(&b, &r, &["--from", "beginning", "-e", "--type", "OrderCancelled"]).await;
    let want = all.iter().filter(|r| r["type"] == "OrderCancelled").count();
    assert!(want > 0);
    assert_eq!(cancels.len(), want);

    // The last 2 of every partition; an offset in one partition; -n.
    let lasts = tail(&b, &r, &["--from", "-2", "-e"]).await;
    let want: Vec<(i64, i64)> = last.iter().flat_map(|(p, o)| [(*p, o - 1), (*p, *o)]).collect();
    let mut got = positions(&lasts);
    got.sort();
    assert_eq!(got, want);
    let from10 = tail(&b, &r, &["--from", "10", "-p", "1", "-e"]).await;
    assert_eq!(positions(&from10).first(), Some(&(1, 10)));
    assert_eq!(from10.len() as i64, last[&1] - 9);
    assert_eq!(tail(&b, &r, &["--from", "beginning", "-n", "7"]).await.len(), 7);

    // --since: only records at or after that time, per partition.
    let mut stamps: Vec<i64> = all.iter().map(|r| r["timestamp"].as_i64().unwrap()).collect();
    stamps.sort();
    let cut = stamps[stamps.len() / 2];
    let since = tail(&b, &r, &["--since", &cut.to_string(), "-e"]).await;
    assert!(!since.is_empty() && since.len() < all.len());
    assert!(since.iter().all(|r| r["timestamp"].as_i64().unwrap() >= cut));
    assert_eq!(since.len(), stamps.iter().filter(|t| **t >= cut).count());
    // A time after the newest record prints nothing (the broker answers such a time with offset 0).
    let future = (stamps.last().unwrap() + 60_000).to_string();
    assert!(tail(&b, &r, &["--since", &future, "-e"]).await.is_empty());

    // From the end (the default) it follows: records produced after the start appear.
    let follower = tokio::process::Command::new(bin("devstack"))
        .args(["tail", "orders", "-b", &b, "--registry", &r, "-n", "3", "--type", "OrderPlaced"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = run(
        "producer",
        &["orders", "-b", &b, "--registry", &r, "--count", "20", "--rate", "0", "--seed", "6", "--cancel-rate", "0"],
    )
    .await;
    assert!(more.status.success(), "{}", text(&more).1);
    let out = tokio::time::timeout(Duration::from_secs(60), follower.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success());
    let followed: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(followed.len(), 3);
    for rec in &followed {
        let (p, o) = (rec["partition"].as_i64().unwrap(), rec["offset"].as_i64().unwrap());
        assert!(o > last[&p], "only records produced after the start: {rec}");
    }

    // Bad flags name the flag.
    for (args, want) in [
        (vec!["--from", "soon"], "--from"),
        (vec!["--since", "yesterday"], "--since"),
        (vec!["-p", "9", "-e"], "--partition 9"),
    ] {
        let mut argv = vec!["tail", "orders", "-b", &b, "--registry", &r];
        argv.extend(args);
        let out = run("devstack", &argv).await;
        let (_, stderr) = text(&out);
        assert!(!out.status.success() && stderr.contains(want), "{argv:?}: {stderr}");
    }
    let out = run("devstack", &["tail", "no-such-topic", "-b", &b, "--registry", &r, "-e"]).await;
    assert!(!out.status.success() && text(&out).1.contains("no-such-topic"), "{}", text(&out).1);
    stack.down().await;
}
