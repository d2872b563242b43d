//! The embedded broker (`broker` binary) under crashes, with librdkafka as
//! the client: an idempotent acks=all producer and a consumer group keep
//! running while the broker is killed with SIGKILL and restarted on the same
//! data dir and port.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyflow_devstack::broker::{self, Broker};
use keyflow_e2e::free_port;
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::topics::TopicSpec;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 3;
const GROUP: &str = "crash-group";

async fn start(dir: &std::path::Path, port: u16) -> Broker {
    let bin = broker::locate().expect("broker binary");
    Broker::start(&bin, dir, port).await.expect("broker starts")
}

fn committed(brokers: &str) -> BTreeMap<i32, i64> {
    let c: StreamConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", GROUP).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(30)).expect("committed offsets");
    got.elements().iter().map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { -1 })).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_broker_ten_times_under_load_loses_no_acknowledged_record_duplicates_none_and_keeps_committed_offsets(
) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut b = start(dir.path(), port).await;
    let brokers = b.bootstrap.clone();
    keyflow_devstack::kafka::create_topics(
        &KafkaArgs::new(brokers.clone()),
        &[TopicSpec::new(TOPIC, PARTITIONS)],
        None,
    )
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "300000")
        .create()
        .unwrap();
    let produce = {
        let (stop, acked, producer) = (stop.clone(), acked.clone(), producer.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut inflight = futures::stream::FuturesUnordered::new();
            use futures::StreamExt;
            while !stop.load(Ordering::Relaxed) {
                let p = producer.clone();
                let id = i;
                inflight.push(async move {
                    let key = format!("k{}", id % 40);
                    let payload = id.to_string();
                    let r = p.send(FutureRecord::to(TOPIC).key(&key).payload(&payload), Duration::from_secs(0)).await;
                    (id, r.is_ok())
                });
                i += 1;
                while inflight.len() >= 500 {
                    if let Some((id, ok)) = inflight.next().await {
                        if ok {
                            acked.lock().unwrap().push(id);
                        }
                    }
                }
                if i.is_multiple_of(100) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            while let Some((id, ok)) = inflight.next().await {
                if ok {
                    acked.lock().unwrap().push(id);
                }
            }
            i
        })
    };

    // A consumer group member committing what it read, synchronously, every 200 records.
    let commits = Arc::new(Mutex::new(BTreeMap::<i32, i64>::new()));
    let consume = {
        let (stop, commits, brokers) = (stop.clone(), commits.clone(), brokers.clone());
        tokio::spawn(async move {
            let c: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", GROUP)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "30000")
                .create()
                .unwrap();
            c.subscribe(&[TOPIC]).unwrap();
            let mut n = 0u64;
            let mut next: HashMap<i32, i64> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await else { continue };
                next.insert(m.partition(), m.offset() + 1);
                n += 1;
                if n.is_multiple_of(200) {
                    let mut tpl = TopicPartitionList::new();
                    for (p, o) in &next {
                        tpl.add_partition_offset(TOPIC, *p, Offset::Offset(*o)).unwrap();
                    }
                    if c.commit(&tpl, CommitMode::Sync).is_ok() {
                        commits.lock().unwrap().extend(next.iter().map(|(p, o)| (*p, *o)));
                    }
                }
            }
        })
    };

    let mut kills = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    while kills < 10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(700 + rng % 1300)).await;
        let before = commits.lock().unwrap().clone();
        b.kill9().await;
        kills += 1;
        b = start(dir.path(), port).await;
        // Every commit acknowledged before the kill is still there.
        let after = committed(&brokers);
        for (p, o) in &before {
            assert!(after[p] >= *o, "kill {kills}: partition {p} committed {o} before the kill, {} after", after[p]);
        }
    }
    let started = Instant::now();
    while acked.lock().unwrap().len() < 1000 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = produce.await.unwrap();
    consume.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let log: Vec<String> = keyflow_devstack::inspect::read_raw(&KafkaArgs::new(brokers.clone()), TOPIC, usize::MAX)
        .await
        .expect("reading the topic back")
        .iter()
        .map(|r| String::from_utf8(r.payload.clone().unwrap_or_default()).unwrap())
        .collect();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for p in &log {
        *seen.entry(p.parse().unwrap()).or_default() += 1;
    }
    let lost: Vec<&u64> = acked.iter().filter(|id| !seen.contains_key(id)).collect();
    let duplicated: Vec<(&u64, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(acked.len() > 1000, "the producer kept producing through the kills ({} acknowledged)", acked.len());
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(duplicated.is_empty(), "records written twice: {:?}", &duplicated[..duplicated.len().min(10)]);
    eprintln!("{kills} kills: {sent} sent, {} acknowledged, {} in the log", acked.len(), log.len());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_sasl_plain_on_the_project_tools_authenticate_with_their_x_settings_and_a_wrong_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b =
        Broker::start_with(&broker::locate().unwrap(), dir.path(), free_port(), &["--sasl-plain-user", "alice:s3cret"])
            .await
            .expect("broker starts");
    let brokers = b.bootstrap.clone();
    let sasl = |password: &str| -> Vec<String> {
        ["security.protocol=SASL_PLAINTEXT", "sasl.mechanism=PLAIN", "sasl.username=alice"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("sasl.password={password}")])
            .flat_map(|kv| ["-X".to_string(), kv])
            .collect()
    };
    let mut args = KafkaArgs::new(brokers.clone());
    args.props = sasl("s3cret")
        .chunks(2)
        .filter_map(|c| c[1].split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    keyflow_devstack::kafka::create_topics(&args, &[TopicSpec::new("secured", 2)], None)
        .await
        .expect("authenticated admin");

    let run = |password: &str| {
        let mut cmd = std::process::Command::new(keyflow_e2e::bin("devstack"));
        cmd.args(["topics", "-b", &brokers, "--json"]).args(sasl(password));
        cmd.output().unwrap()
    };
    let ok = run("s3cret");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success() && stdout.contains("secured"), "{stdout}\n{}", String::from_utf8_lossy(&ok.stderr));

    let bad = run("wrong");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "a wrong password is refused: {stderr}");
    assert!(
        stderr.contains("refused authentication")
            && stderr.contains("sasl.password")
            && stderr.trim().lines().count() == 1,
        "one line saying authentication failed and naming the setting: {stderr}"
    );

    // A client without SASL gets nothing from this listener.
    use rdkafka::producer::Producer;
    let plain: rdkafka::producer::BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    assert!(plain.client().fetch_metadata(None, Duration::from_secs(3)).is_err(), "a PLAINTEXT client is not served");
    b.stop().await;
}
