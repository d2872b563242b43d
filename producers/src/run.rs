//! A producer run: pacing, stop conditions (count, duration, Ctrl-C),
//! progress, metrics endpoint and the final summary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyflow_schemas::client::{parse_duration, KafkaArgs, RegistryArgs};
use keyflow_schemas::kafka::{client_config, Quiet, PRODUCER_DEFAULTS};
use keyflow_schemas::startup::STARTUP_PATIENCE;
use keyflow_schemas::topics::TopicNames;
use keyflow_schemas::Codec;
use rdkafka::producer::FutureProducer;

use crate::gen::Generator;
use crate::sink::Sink;
use crate::stats::{RunInfo, Stats, Summary};

/// Compression codecs librdkafka offers.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Flags every producer command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub topics: TopicNames,
    /// Target events per second; 0 = as fast as the broker takes them.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Seed of the generator: the same seed and --start-time give a byte-identical stream (ids included).
    /// Default: random (printed in the summary).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Event time of the first event, ms since the epoch (default: now).
    #[arg(long)]
    pub start_time: Option<i64>,
    /// Event time between two events, ms (default: 1000 / --rate, so event time follows the clock).
    #[arg(long)]
    pub event_step_ms: Option<f64>,
    /// Compression of produced batches.
    #[arg(long, value_enum, default_value = "lz4")]
    pub compression: Compression,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (/metrics, /health).
    #[arg(long, env = "PRODUCER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl RunArgs {
    /// Checks the flags; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        self.registry.config()?;
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(format!("--rate {}: must be ≥ 0 (0 = unlimited)", self.rate));
        }
        if self.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if let Some(step) = self.event_step_ms {
            if !(step.is_finite() && step >= 0.0) {
                return Err(format!("--event-step-ms {step}: must be ≥ 0"));
            }
        }
        Ok(())
    }

    /// The seed, start time and event step this run uses.
    pub fn resolved(&self) -> (u64, i64, f64) {
        let seed = self.seed.unwrap_or_else(rand::random);
        let start = self.start_time.unwrap_or_else(now_ms);
        let step = self.event_step_ms.unwrap_or(if self.rate > 0.0 { 1000.0 / self.rate } else { 1.0 });
        (seed, start, step)
    }
}

pub use keyflow_schemas::process::now_ms;

fn progress(stats: Arc<Stats>, target: Option<u64>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tokio::spawn(async move {
        let bar = tty.then(|| {
            let bar = match target {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let start = Instant::now();
        let mut last_log = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let sent = stats.sent.load(Ordering::Relaxed);
            let acked = stats.acked.load(Ordering::Relaxed);
            let failed = stats.failed.load(Ordering::Relaxed);
            let rate = sent as f64 / start.elapsed().as_secs_f64().max(0.001);
            match &bar {
                Some(b) => {
                    b.set_position(sent);
                    b.set_message(format!("acked {acked} failed {failed} {rate:.0}/s"));
                }
                None if last_log.elapsed() >= Duration::from_secs(5) => {
                    last_log = Instant::now();
                    tracing::info!(sent, acked, failed, rate = format!("{rate:.0}/s"), "progress");
                }
                None => {}
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    })
}

/// Runs `generator` until a stop condition; returns the summary (also
/// printed and written to `--summary-json`). `Err` only for setup failures
/// and fatal send errors; failed deliveries are in the summary.
pub async fn run(
    command: &str,
    generator: &mut (dyn Generator + Send),
    args: &RunArgs,
    seed: u64,
    start_ms: i64,
) -> anyhow::Result<Summary> {
    args.validate().map_err(anyhow::Error::msg)?;
    keyflow_schemas::startup::check_reachable(&args.kafka, Some(&args.registry), STARTUP_PATIENCE).await?;
    let codec = Arc::new(Codec::new(&args.registry.config().map_err(anyhow::Error::msg)?)?);
    let compression = format!("{:?}", args.compression).to_lowercase();
    let mut defaults: Vec<(&str, &str)> = PRODUCER_DEFAULTS.to_vec();
    defaults.push(("compression.type", &compression));
    let producer: FutureProducer<Quiet> = client_config(&args.kafka, &defaults)?.create_with_context(Quiet)?;
    let stats = Arc::new(Stats::default());
    if let Some(addr) = args.metrics_addr {
        let ready = Arc::new(AtomicBool::new(true));
        let health = || async { Ok(()) };
        keyflow_schemas::metrics::serve(addr, stats.registry().clone(), health, ready)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let (sink, tracker) = Sink::new(producer, codec, args.topics.clone(), stats.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (stop, interrupted) = (stop.clone(), interrupted.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
                eprintln!("\nproducer: interrupted, flushing what is in flight…");
            }
        });
    }
    let progress_stop = Arc::new(AtomicBool::new(false));
    let progress_task = progress(stats.clone(), args.count, progress_stop.clone());
    tracing::info!(command, seed, start_ms, rate = args.rate, brokers = %args.kafka.brokers, settings = ?args.kafka.redacted(), "producing");

    let start = Instant::now();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut fatal = None;
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if args.count.is_some_and(|n| i >= n) || args.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if let Some(iv) = interval {
            let due = start + iv.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        } else if i.is_multiple_of(1024) {
            tokio::task::yield_now().await;
        }
        let planned = generator.next_event();
        if let Err(e) = sink.send(&planned).await {
            fatal = Some(e);
            break;
        }
        i += 1;
    }
    let elapsed = start.elapsed();
    tokio::task::block_in_place(|| sink.close(Duration::from_secs(60)));
    let _ = tracker.await;
    let drained = start.elapsed();
    progress_stop.store(true, Ordering::Relaxed);
    let _ = progress_task.await;

    let info = RunInfo {
        command: command.to_string(),
        seed,
        start_time_ms: start_ms,
        target_rate: (args.rate > 0.0).then_some(args.rate),
        brokers: args.kafka.brokers.clone(),
        interrupted: interrupted.load(Ordering::Relaxed),
    };
    let summary = stats.summary(info, elapsed, drained);
    eprint!("{}", summary.render());
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .map_err(|e| anyhow::anyhow!("--summary-json {}: {e}", path.display()))?;
    }
    if let Some(e) = fatal {
        return Err(e.into());
    }
    Ok(summary)
}
