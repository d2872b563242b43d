//! Benchmark: events/s through our `producer` pipeline (order generator,
//! Avro encoding through the registry, idempotent produce) ÷ events/s of a
//! bare rdkafka producer sending the same payload bytes with the same
//! settings to the same broker, in the same run, rounds alternating. Also a
//! paced run to report how steadily the target rate is held.
//!
//! Run: `cargo bench -p keyflow-e2e --bench producer_throughput` (starts its
//! own embedded stack; `BENCH_COUNT`, `BENCH_ROUNDS`, `BENCH_PACED_SECS`
//! change the sizes). Writes its section of BENCHMARKS.md.

use std::time::{Duration, Instant};

use clap::Parser;
use keyflow_devstack::stack::{Stack, StackOptions};
use keyflow_producers::gen::Generator;
use keyflow_producers::orders::{OrderGen, OrderMix};
use keyflow_producers::run::{self, RunArgs};
use keyflow_schemas::kafka::{client_config, PRODUCER_DEFAULTS};
use keyflow_schemas::topics::TopicSpec;
use keyflow_schemas::{Codec, RegistryConfig};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    run: RunArgs,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn avro_round(stack: &Stack, topic: &str, count: u64, seed: u64) -> f64 {
    let args = Wrap::parse_from([
        "bench",
        "-b",
        &stack.kafka.brokers,
        "--registry",
        &stack.registry.registry,
        "--rate",
        "0",
        "--count",
        &count.to_string(),
        "--topic",
        &format!("orders={topic}"),
        "--event-step-ms",
        "1",
    ])
    .run;
    let mut g = OrderGen::new(OrderMix::default(), seed, 1_767_225_600_000, 1.0);
    let s = run::run("bench-avro", &mut g, &args, seed, 1_767_225_600_000).await.expect("avro run");
    assert_eq!(s.failed, 0);
    s.acked_rate
}

/// The baseline sends the same bytes: key, payload and a W3C `traceparent` header of the same size.
async fn raw_round(stack: &Stack, topic: &str, payloads: &[(String, Vec<u8>)]) -> f64 {
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut settings: Vec<(&str, &str)> = PRODUCER_DEFAULTS.to_vec();
    settings.push(("compression.type", "lz4"));
    let producer: FutureProducer = client_config(&stack.kafka, &settings).unwrap().create().unwrap();
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(payloads.len());
    for (key, payload) in payloads {
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: "traceparent", value: Some(traceparent) });
        let mut record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    deliveries.push(d);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("raw produce: {e}"),
            }
        }
    }
    tokio::task::block_in_place(|| producer.flush(Duration::from_secs(120))).unwrap();
    for d in futures::future::join_all(deliveries).await {
        d.expect("delivered").expect("acked");
    }
    payloads.len() as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let count = env("BENCH_COUNT", 100_000);
    let rounds = env("BENCH_ROUNDS", 3);
    let paced_secs = env("BENCH_PACED_SECS", 30);
    let dir = tempfile::tempdir().unwrap();
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = StackOptions { data_dir: dir.path().into(), broker_port: port(), registry_port: port(), partitions: 6 };
    let stack = Stack::up(&opts).await.expect("stack");

    let mut specs = Vec::new();
    for r in 0..rounds {
        for kind in ["avro", "raw"] {
            specs.push(TopicSpec::new(&format!("bench-{kind}-{r}"), 6));
        }
    }
    specs.push(TopicSpec::new("bench-paced", 6));
    keyflow_devstack::kafka::create_topics(&stack.kafka, &specs, None).await.unwrap();

    // The same events, encoded once, for the raw baseline (identical sizes and keys).
    let codec = Codec::new(&RegistryConfig::new(&stack.registry.registry)).unwrap();
    let mut g = OrderGen::new(OrderMix::default(), 1, 1_767_225_600_000, 1.0);
    let mut payloads = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let p = g.next_event();
        payloads.push((p.event.key().to_string(), codec.encode_any("orders", &p.event).await.unwrap()));
    }
    let avg_bytes = payloads.iter().map(|(_, p)| p.len()).sum::<usize>() / payloads.len();

    let mut rows = Vec::new();
    for r in 0..rounds {
        let avro = avro_round(&stack, &format!("bench-avro-{r}"), count, 1).await;
        let raw = raw_round(&stack, &format!("bench-raw-{r}"), &payloads).await;
        eprintln!("round {r}: avro {avro:.0}/s raw {raw:.0}/s ratio {:.3}", avro / raw);
        rows.push((avro, raw));
    }
    let mut ratios: Vec<f64> = rows.iter().map(|(a, b)| a / b).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];

    let paced = Wrap::parse_from([
        "bench",
        "-b",
        &stack.kafka.brokers,
        "--registry",
        &stack.registry.registry,
        "--rate",
        "2000",
        "--duration",
        &format!("{paced_secs}s"),
        "--topic",
        "orders=bench-paced",
    ])
    .run;
    let mut g = OrderGen::new(OrderMix::default(), 2, 1_767_225_600_000, 0.5);
    let s = run::run("bench-paced", &mut g, &paced, 2, 1_767_225_600_000).await.expect("paced run");
    stack.down().await;

    let mut body = format!(
        "## Producer: Avro pipeline ÷ raw rdkafka producer\n\n\
         `cargo bench -p keyflow-e2e --bench producer_throughput` (BENCH_COUNT={count}, BENCH_ROUNDS={rounds}), \
         release build; both sides time until the last acknowledgement and send the same key, payload and header bytes; embedded broker (keyflow-broker) on localhost, 6 partitions, idempotent producer, acks=all, lz4, \
         {avg_bytes} B average payload. Machine: {}.\n\n\
         | round | our producer (Avro via registry) events/s | bare rdkafka, same bytes, events/s | ratio |\n|---|---|---|---|\n",
        keyflow_e2e::bench::machine()
    );
    for (i, (a, b)) in rows.iter().enumerate() {
        body += &format!("| {i} | {a:.0} | {b:.0} | {:.3} |\n", a / b);
    }
    body += &format!("\n**Median ratio: {median:.3}** (target ≥ 0.90).\n\n");
    match &s.pacing {
        Some(p) => {
            body += &format!(
                "Pacing at --rate 2000 for {paced_secs} s: every 10 s window between {:.1} and {:.1} events/s, \
                 worst deviation {:.2}% (target ±2%); delivery latency p50 {:.1} ms, p99 {:.1} ms.\n",
                p.min_10s_rate, p.max_10s_rate, p.worst_deviation_pct, s.latency_ms.p50, s.latency_ms.p99
            )
        }
        None => body += "Pacing: run too short to judge.\n",
    }
    keyflow_e2e::bench::write_section("producer-throughput", &body);
    println!("{body}");
}
