//! `worker <name>`: runs one of the pipeline's workers as a consumer-group
//! member.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keyflow_consumers::counter::Counter;
use keyflow_consumers::metrics::WorkerMetrics;
use keyflow_consumers::preflight;
use keyflow_consumers::runtime::{self, Assignor, Guarantee, RuntimeConfig};
use keyflow_consumers::store::{StoreConfig, StoreKind};
use keyflow_consumers::workers::fulfillment::Fulfillment;
use keyflow_consumers::workers::loyalty::Loyalty;
use keyflow_consumers::workers::payment::Payment;
use keyflow_consumers::workers::publication::Publication;
use keyflow_consumers::workers::{Retention, WorkerKind};
use keyflow_schemas::client::{parse_duration, KafkaArgs, RegistryArgs};
use keyflow_schemas::logging::{self, LogFormat};
use keyflow_schemas::rules::RuleArgs;
use keyflow_schemas::startup::STARTUP_PATIENCE;
use keyflow_schemas::topics::TopicNames;
use keyflow_schemas::Codec;

/// Runs a keyflow worker (payment, fulfillment, loyalty, publication).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Which worker to run.
    #[arg(value_enum)]
    worker: WorkerKind,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    topics: TopicNames,
    /// Records of different keys processed concurrently per partition.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Most inputs in one batch (one changelog commit); a batch also stops at
    /// 1 MiB of input.
    #[arg(long, default_value_t = 2000)]
    max_batch: usize,
    /// How long (event time) re-sent facts and copies are remembered per key.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    dedupe_retention: Duration,
    /// Static membership id (`group.instance.id`): a restart gets its partitions back.
    #[arg(long, env = "WORKER_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Partition assignment: `range` (required for joins and on the embedded
    /// broker) or `cooperative-sticky` (real Kafka, single-input workers).
    #[arg(long, value_enum, env = "WORKER_ASSIGNOR", default_value = "range")]
    assignor: Assignor,
    /// Snapshot a task's state after this many changelog bytes since its last
    /// snapshot (at least the snapshot's own size): bounds restore time.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    snapshot_interval_bytes: u64,
    /// Changelog records stay about this size; a key's state larger than
    /// one is written in pieces (tests use small records to see pieces).
    #[arg(long, default_value_t = runtime::CHANGELOG_RECORD_BYTES, hide = true)]
    changelog_record_bytes: usize,
    /// Keep the changelog's whole history: do not delete the records below a
    /// task's latest snapshot once it is written (DeleteRecords). By default
    /// the changelog stays about the size of the state.
    #[arg(long)]
    keep_changelog_history: bool,
    /// `effectively-once` works on any Kafka-API broker (a crash may leave
    /// byte-identical copies that consumers drop); `exactly-once` commits each
    /// batch's outputs, changelog and offsets in one Kafka transaction (needs
    /// a broker with transactions, e.g. Apache Kafka).
    #[arg(long, value_enum, env = "WORKER_GUARANTEE", default_value = "effectively-once")]
    guarantee: Guarantee,
    /// Write a batch's partition tasks one after the other instead of
    /// together (for A/B measurements of the overlapped writes).
    #[arg(long, hide = true)]
    serial_task_writes: bool,
    #[command(flatten)]
    state: StateArgs,
    /// Input records larger than this go to the DLQ (class `oversized`).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_record_bytes: usize,
    /// Serve /metrics, /health and /ready here (e.g. 0.0.0.0:9400).
    #[arg(long, env = "WORKER_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Test worker only: simulated dependency latency per record.
    #[arg(long, value_parser = parse_duration, default_value = "0ms", hide = true)]
    delay: Duration,
    #[command(flatten)]
    rules: WorkerRules,
    /// Log format (logs go to stderr).
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// Where the worker keeps its tasks' key states.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "State store")]
struct StateArgs {
    /// `disk`: a local store per partition task under --state-dir, with a
    /// bounded cache of hot keys (memory stays bounded; a restart reads only
    /// the changelog past the store). `memory`: every key in memory, rebuilt
    /// from the changelog at every start.
    #[arg(long, value_enum, env = "WORKER_STATE_STORE", default_value = "disk")]
    state_store: StoreKind,
    /// The worker's data directory; --state-dir defaults under it.
    #[arg(long, env = "WORKER_DATA_DIR", default_value = "keyflow-data")]
    data_dir: std::path::PathBuf,
    /// This instance's state directory (locked: never shared by two
    /// instances). Default: <data-dir>/<worker>[-<instance-id>].
    #[arg(long, env = "WORKER_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// Keys kept decoded in memory, over all of the instance's tasks (disk
    /// store); about 0.6 KB each (a decoded state with a few ids in its
    /// dedupe windows; about 30 bytes more per remembered id).
    #[arg(long, env = "WORKER_STATE_CACHE_KEYS", default_value_t = 10_000)]
    state_cache_keys: usize,
    /// Bytes of the disk store's block cache (disk store).
    #[arg(long, default_value_t = 8 * 1024 * 1024, hide = true)]
    state_block_cache_bytes: u64,
}

impl StateArgs {
    fn config(&self, worker: &str, instance: Option<&str>) -> StoreConfig {
        let dir = self.state_dir.clone().unwrap_or_else(|| {
            self.data_dir.join(match instance {
                Some(id) => format!("{worker}-{id}"),
                None => worker.to_string(),
            })
        });
        StoreConfig {
            kind: self.state_store,
            dir,
            cache_keys: self.state_cache_keys,
            block_cache_bytes: self.state_block_cache_bytes,
        }
    }
}

/// Settings of the workers' own state.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Business rules")]
struct WorkerRules {
    #[command(flatten)]
    rules: RuleArgs,
    /// payment: simulated payment-gateway latency per order.
    #[arg(long, value_parser = parse_duration, default_value = "0ms", env = "PAYMENT_GATEWAY_LATENCY")]
    gateway_latency: Duration,
    /// How long (event time) finished orders, awards and evaluated requests are
    /// remembered per key for late events about them (a cancellation, a void).
    #[arg(long, value_parser = parse_duration, default_value = "30d")]
    state_retention: Duration,
}

impl WorkerRules {
    fn retention(&self) -> Retention {
        Retention { ms: self.state_retention.as_millis() as i64 }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let name = args.worker.name();
    let cfg = RuntimeConfig {
        kafka: args.kafka.clone(),
        names: args.topics.clone(),
        inputs: args.worker.inputs(),
        max_in_flight: args.max_in_flight,
        max_batch: args.max_batch,
        dedupe_retention_ms: args.dedupe_retention.as_millis() as i64,
        instance_id: args.instance_id.clone(),
        max_record_bytes: args.max_record_bytes,
        assignor: args.assignor,
        snapshot_interval_bytes: args.snapshot_interval_bytes,
        changelog_record_bytes: args.changelog_record_bytes,
        trim_changelog: !args.keep_changelog_history,
        guarantee: args.guarantee,
        serial_task_writes: args.serial_task_writes,
        store: args.state.config(name, args.instance_id.as_deref()),
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    args.rules.rules.validate().map_err(anyhow::Error::msg)?;
    // The cluster and its topics first (a topic problem is reported whatever
    // the registry does; this is the cluster's start-up check), then the registry.
    let partitions = preflight::check_topics(&args.kafka, &args.topics, args.worker, STARTUP_PATIENCE)?;
    if cfg.guarantee != Guarantee::AtLeastOnce {
        let changelog = args.topics.get(&keyflow_schemas::topics::state_topic(name));
        preflight::check_changelog_retention(&args.kafka, &changelog).await?;
    }
    keyflow_schemas::startup::check_registry(&args.registry, STARTUP_PATIENCE).await?;
    tracing::info!(worker = name, partitions, "topics checked");
    let codec = Arc::new(Codec::new(&args.registry.config().map_err(anyhow::Error::msg)?)?);

    let metrics = WorkerMetrics::new(name);
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.metrics_addr {
        let kafka = args.kafka.clone();
        // /health asks the broker for metadata: a real request, not a socket check.
        let health = move || {
            let kafka = kafka.clone();
            async move {
                tokio::task::spawn_blocking(move || keyflow_schemas::kafka::list_topics(&kafka, Duration::from_secs(3)))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        keyflow_schemas::metrics::serve(addr, metrics.registry.clone(), health, ready.clone())
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let shutdown = keyflow_schemas::process::shutdown_signal();
    let r = &args.rules;
    match args.worker {
        WorkerKind::Payment => {
            let w = Payment {
                currencies: r.rules.currencies.clone(),
                spend_limit_minor: r.rules.spend_limit_minor,
                window_ms: r.rules.window_ms(),
                gateway_latency: r.gateway_latency,
                retention: r.retention(),
            };
            runtime::run(w, cfg, codec, metrics, ready, shutdown).await
        }
        WorkerKind::Fulfillment => {
            runtime::run(Fulfillment { retention: r.retention() }, cfg, codec, metrics, ready, shutdown).await
        }
        WorkerKind::Loyalty => {
            runtime::run(Loyalty { retention: r.retention() }, cfg, codec, metrics, ready, shutdown).await
        }
        WorkerKind::Publication => {
            let w = Publication {
                moderated_terms: r.rules.moderated_terms.clone(),
                moderated_image_patterns: r.rules.moderated_image_patterns.clone(),
                retention: r.retention(),
            };
            runtime::run(w, cfg, codec, metrics, ready, shutdown).await
        }
        WorkerKind::Counter => runtime::run(Counter { delay: args.delay }, cfg, codec, metrics, ready, shutdown).await,
    }
}

/// mimalloc, not glibc's malloc: a restore allocates and frees millions of
/// small states, which it does 1.4× as fast (measured: 1M keys rebuilt in
/// 5.5 s instead of 7.2–8.8 s), and its memory does not pile up in
/// per-thread arenas.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    logging::init(args.log_format);
    if let Err(e) = run(args).await {
        eprintln!("worker: error: {e:#}");
        std::process::exit(1);
    }
}
