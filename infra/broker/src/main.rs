//! `broker`: keyflow's single-node Kafka-API broker for development and tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use keyflow_broker::{group::GroupConfig, Broker, Config};

#[derive(Clone, Copy, ValueEnum)]
enum Fsync {
    /// Answer once a write is in the OS page cache (survives kill -9 of the broker).
    Never,
    /// Also sync to disk before answering (survives a machine crash; slower).
    Always,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A single-node Kafka-API broker for development and tests: topics,
/// idempotent produce, long-poll fetch, consumer groups and committed
/// offsets, stored in --data-dir and kept across restarts and kill -9.
///
/// When it is ready it prints one JSON line to stdout:
/// {"event":"listening","kafka":"HOST:PORT","metrics":"HOST:PORT"|null}.
#[derive(Parser)]
#[command(name = "broker", version)]
struct Args {
    /// Directory holding topics, logs and committed offsets.
    #[arg(long, env = "KEYFLOW_BROKER_DATA_DIR", default_value = "keyflow-broker-data")]
    data_dir: PathBuf,
    /// Address clients connect to (port 0: a free port, printed when ready).
    #[arg(long, env = "KEYFLOW_BROKER_LISTEN", default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Host name given to clients in metadata (default: the listen address,
    /// or localhost when listening on 0.0.0.0).
    #[arg(long, env = "KEYFLOW_BROKER_ADVERTISED_HOST")]
    advertised_host: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "KEYFLOW_BROKER_METRICS")]
    metrics: Option<SocketAddr>,
    /// When writes reach the disk before they are acknowledged.
    #[arg(long, value_enum, default_value = "never")]
    fsync: Fsync,
    /// Create a topic when a producer's metadata request names one that does
    /// not exist (Kafka's auto.create.topics.enable).
    #[arg(long)]
    auto_create_topics: bool,
    /// Partitions of a topic created without a count (Kafka's num.partitions).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10000))]
    default_partitions: i32,
    /// How long the first rebalance of an empty group waits for more members
    /// (Kafka's group.initial.rebalance.delay.ms; 3000 there).
    #[arg(long, default_value_t = 0)]
    group_initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a group member may ask for.
    #[arg(long, default_value_t = 1000)]
    group_min_session_timeout_ms: u64,
    /// How often retention.ms and retention.bytes, and compaction
    /// (cleanup.policy=compact), are applied.
    #[arg(
        long,
        env = "KEYFLOW_BROKER_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..)
    )]
    retention_check_interval_ms: u64,
    /// Require SASL/PLAIN (SASL_PLAINTEXT) with this user, USER:PASSWORD;
    /// repeatable, or comma-separated in the environment variable. Without
    /// it the listener is PLAINTEXT.
    #[arg(long, env = "KEYFLOW_BROKER_SASL_PLAIN_USERS", value_delimiter = ',', value_parser = parse_user)]
    sasl_plain_user: Vec<(String, String)>,
    /// Log lines as text or JSON (stderr; level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn parse_user(v: &str) -> Result<(String, String), String> {
    match v.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err("expected USER:PASSWORD".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.with_ansi(false).init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let mut cfg = Config::new(&args.data_dir);
        cfg.listen = args.listen;
        cfg.advertised_host = args.advertised_host;
        cfg.metrics = args.metrics;
        cfg.fsync = matches!(args.fsync, Fsync::Always);
        cfg.auto_create_topics = args.auto_create_topics;
        cfg.default_partitions = args.default_partitions;
        cfg.groups = GroupConfig {
            initial_delay: Duration::from_millis(args.group_initial_rebalance_delay_ms),
            min_session: Duration::from_millis(args.group_min_session_timeout_ms),
            ..GroupConfig::default()
        };
        cfg.retention_check = Duration::from_millis(args.retention_check_interval_ms);
        if !args.sasl_plain_user.is_empty() {
            cfg.sasl_plain = Some(args.sasl_plain_user.into_iter().collect());
        }
        let broker = match Broker::start(cfg).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("broker: {e:#}");
                return ExitCode::from(2);
            }
        };
        let ready = serde_json::json!({
            "event": "listening",
            "kafka": format!("{}:{}", broker.state.advertised.0, broker.addr.port()),
            "metrics": broker.metrics_addr.map(|a| a.to_string()),
        });
        println!("{ready}");
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        broker.stop().await;
        ExitCode::SUCCESS
    })
}
