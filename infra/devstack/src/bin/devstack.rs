//! `devstack`: the pipeline on a laptop with no Docker — an embedded Kafka-API
//! broker (keyflow's own, `infra/broker`), the project's schema registry, topics and schemas — plus
//! setup and inspection commands that work against any cluster.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use keyflow_devstack::stack::{self, Stack, StackOptions};
use keyflow_devstack::{demo, inspect, kafka, smoke, tail, verify};
use keyflow_schemas::client::{KafkaArgs, RegistryArgs};
use keyflow_schemas::logging::{self, LogFormat};
use keyflow_schemas::rules::RuleArgs;
use keyflow_schemas::startup::STARTUP_PATIENCE;
use keyflow_schemas::topics::TopicNames;
use keyflow_schemas::Codec;

#[derive(Debug, Parser)]
#[command(version, about = "The keyflow pipeline's dev stack and inspection tools")]
struct Cli {
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Directory for the broker's database and the registry's log (kept across restarts).
    #[arg(long, env = "DEVSTACK_DATA_DIR", default_value = ".devstack")]
    data_dir: PathBuf,
    /// Kafka port on localhost.
    #[arg(long, default_value_t = 9092)]
    broker_port: u16,
    /// Schema registry port on localhost.
    #[arg(long, default_value_t = 8081)]
    registry_port: u16,
    /// Partition count of the co-partitioned topics.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1000))]
    partitions: i32,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the embedded broker and registry, create topics, register schemas; Ctrl-C stops.
    Up(UpArgs),
    /// The whole pipeline in one command: a fresh embedded stack, the four
    /// workers (two instances each), both load generators for --duration with
    /// a live table, then drain, verify the invariants and print a report.
    /// Exit status 2 when an invariant is broken.
    Demo(demo::DemoArgs),
    /// Create the topics and register the schemas on any cluster and registry.
    Init {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Partition count of the co-partitioned topics.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replication factor (3 on a production cluster).
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Produce one Avro event of every type and read each back.
    Smoke {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List topics with their partition counts.
    Topics {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the invariants of docs/domain.md over the topics (any cluster): counts per
    /// invariant, raw copies, each violation with key, topic and offset.
    /// Exit status 2 when an invariant is broken.
    Verify {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        topics: TopicNames,
        #[command(flatten)]
        rules: RuleArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a topic's records as JSON lines (key, partition, offset,
    /// timestamp, headers, decoded value), following new ones: from the end
    /// (default), the beginning, an offset, the last N or a time; filtered by
    /// key and event type. For kcat without Avro support.
    Tail {
        #[command(flatten)]
        args: tail::TailArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print records of a topic from the beginning, decoded through the registry.
    Peek {
        /// Topic to read.
        topic: String,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Stop after this many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn print_stack(stack: &Stack) {
    let created = stack.report.topics.iter().filter(|t| t.status == "created").count();
    println!("devstack ready: broker={} registry={}", stack.kafka.brokers, stack.registry.registry);
    println!(
        "  topics: {} ({} created now), schemas: {} subjects, data: {}",
        stack.report.topics.len(),
        created,
        stack.report.subjects.len(),
        stack.data_dir.display()
    );
    println!("  inspect: devstack topics -b {}", stack.kafka.brokers);
    println!("           devstack peek orders -b {} --registry {}", stack.kafka.brokers, stack.registry.registry);
    println!("           curl {}/subjects", stack.registry.registry);
    println!("  broker log: {}", stack.broker_log().display());
}

/// The start-up check of the commands that work on an existing cluster.
async fn reachable(kafka: &KafkaArgs, registry: Option<&RegistryArgs>) -> anyhow::Result<()> {
    Ok(keyflow_schemas::startup::check_reachable(kafka, registry, STARTUP_PATIENCE).await?)
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Up(a) => {
            let opts = StackOptions {
                data_dir: a.data_dir,
                broker_port: a.broker_port,
                registry_port: a.registry_port,
                partitions: a.partitions,
            };
            let stack = Stack::up(&opts).await?;
            print_stack(&stack);
            println!("  Ctrl-C stops the stack; data stays in {}", opts.data_dir.display());
            keyflow_schemas::process::shutdown_signal().await;
            eprintln!("devstack: stopping");
            stack.down().await;
        }
        Cmd::Demo(args) => {
            let report = demo::run(&args, |report| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                write!(out, "{}", report.text())?;
                out.flush()?;
                if let Some(path) = &args.summary_json {
                    std::fs::write(path, serde_json::to_string_pretty(report)?)
                        .map_err(|e| anyhow::anyhow!("--summary-json {}: {e}", path.display()))?;
                }
                Ok(())
            })
            .await?;
            if !report.ok {
                std::process::exit(2);
            }
        }
        Cmd::Init { kafka, registry, partitions, replication_factor, json } => {
            reachable(&kafka, Some(&registry)).await?;
            let report = stack::init(&kafka, &registry, Some(partitions), Some(replication_factor)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for t in &report.topics {
                    println!("topic   {:<28} {:>3} partitions  {}", t.name, t.partitions, t.status);
                }
                for s in &report.subjects {
                    println!("subject {:<60} id {}", s.subject, s.id);
                }
            }
        }
        Cmd::Smoke { kafka, registry, json } => {
            reachable(&kafka, Some(&registry)).await?;
            let report = smoke::run(&kafka, &registry).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            anyhow::ensure!(report.ok, "some events did not read back identical");
        }
        Cmd::Topics { kafka, json } => {
            let topics = kafka::list_topics(&kafka, STARTUP_PATIENCE)?;
            if json {
                let list: Vec<_> =
                    topics.iter().map(|(n, p)| serde_json::json!({"name": n, "partitions": p})).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (n, p) in &topics {
                    println!("{n:<32} {p:>3} partitions");
                }
            }
        }
        Cmd::Verify { kafka, registry, topics, rules, json } => {
            reachable(&kafka, Some(&registry)).await?;
            let codec = Codec::new(&registry.config().map_err(anyhow::Error::msg)?)?;
            let settings = verify::Settings { names: topics, rules, latency_from_ms: None };
            let report = verify::verify(&kafka, &codec, &settings, |p| eprintln!("verify: {p}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            if !report.ok {
                std::process::exit(2);
            }
        }
        Cmd::Tail { args, kafka, registry } => {
            reachable(&kafka, Some(&registry)).await?;
            let codec = Codec::new(&registry.config().map_err(anyhow::Error::msg)?)?;
            let mut stdout = std::io::stdout().lock();
            let summary = tail::tail(&kafka, &codec, &args, keyflow_schemas::process::shutdown_signal(), |v| {
                use std::io::Write;
                writeln!(stdout, "{v}")?;
                Ok(stdout.flush()?)
            })
            .await?;
            eprintln!(
                "tail: {} record(s) printed of {} read from {} partition(s) of {}",
                summary.printed, summary.read, summary.partitions, args.topic
            );
        }
        Cmd::Peek { topic, kafka, registry, count, json } => {
            reachable(&kafka, Some(&registry)).await?;
            let codec = Codec::new(&registry.config().map_err(anyhow::Error::msg)?)?;
            for r in inspect::peek(&kafka, &codec, &topic, count).await? {
                if json {
                    println!("{r}");
                } else {
                    println!(
                        "{}[{}]@{} key={} {}",
                        r["topic"].as_str().unwrap_or(""),
                        r["partition"],
                        r["offset"],
                        r["key"].as_str().unwrap_or("∅"),
                        r.get("value").map(|v| v.to_string()).unwrap_or_else(|| format!("ERROR {}", r["error"]))
                    );
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    keyflow_schemas::process::die_on_sigpipe();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    if let Err(e) = run(cli.cmd).await {
        eprintln!("devstack: error: {e:#}");
        std::process::exit(1);
    }
}
