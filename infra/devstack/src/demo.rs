//! `devstack demo`: the product in one command. A fresh embedded stack, the
//! four workers (two instances each, separate processes), both load
//! generators for `--duration`, a live table, then drain, stop, verify, and a
//! report: invariants, throughput, latency per hop, and where to look next.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keyflow_schemas::metrics as m;
use keyflow_schemas::rules::RuleArgs;
use keyflow_schemas::topics::TopicNames;
use keyflow_schemas::Codec;
use serde::Serialize;
use tokio::process::Command;

use anyhow::Context;

use crate::pipeline::{free_port, get, metric_sum, Bins, Pipeline, WorkerTotals, WORKERS};
use crate::prometheus::LocalPrometheus;
use crate::stack::{Stack, StackOptions};
use crate::verify::{self, Report};

/// `devstack demo` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long the load generators run.
    #[arg(long, value_parser = keyflow_schemas::client::parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Orders per second.
    #[arg(long, default_value_t = 100.0)]
    pub order_rate: f64,
    /// Contract and property events per second.
    #[arg(long, default_value_t = 20.0)]
    pub property_rate: f64,
    /// Instances of each worker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub instances: u32,
    /// Partition count of the co-partitioned topics.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=64))]
    pub partitions: i32,
    /// Simulated payment-gateway latency per order.
    #[arg(long, value_parser = keyflow_schemas::client::parse_duration, default_value = "0ms")]
    pub gateway_latency: Duration,
    /// How long to wait for the workers to catch up after the load stops.
    #[arg(long, value_parser = keyflow_schemas::client::parse_duration, default_value = "180s")]
    pub drain_timeout: Duration,
    /// Keep the stack's data and the logs in this directory (default: a fresh temporary one, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Leave the stack and the workers running after the report, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Start a local Prometheus (the `prometheus` binary on PATH, or
    /// PROMETHEUS_BIN) scraping every worker and producer of the demo with
    /// the project's alert rules, and print its URL. With --keep it stays up.
    #[arg(long)]
    pub prometheus: bool,
}

/// One load generator's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ProducerReport {
    pub command: String,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub achieved_rate: f64,
    pub duplicates_injected: u64,
}

/// One worker's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    pub worker: String,
    pub instances: u32,
    pub consumed: u64,
    pub produced: u64,
    pub dlq: u64,
    pub duplicates: u64,
    /// Inputs consumed per second of the run (load + drain).
    pub events_per_s: f64,
    /// Exit statuses after SIGTERM (`0` each when the drain was clean).
    pub exit_codes: Vec<Option<i32>>,
}

/// The demo's report (`--summary-json`).
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub ok: bool,
    pub duration_s: f64,
    pub drained: bool,
    pub drain_s: f64,
    pub producers: Vec<ProducerReport>,
    pub workers: Vec<WorkerReport>,
    pub verify: Report,
    pub brokers: String,
    pub registry: String,
    pub data_dir: String,
    /// What the local Prometheus saw (`--prometheus`).
    pub prometheus: Option<PrometheusReport>,
}

/// The local Prometheus at the end of the run (`--prometheus`).
#[derive(Debug, Clone, Serialize)]
pub struct PrometheusReport {
    pub url: String,
    /// Worker instances Prometheus scraped successfully at the end.
    pub workers_up: u64,
    /// Alerts firing at the end (name and worker).
    pub alerts_firing: Vec<String>,
}

impl PrometheusReport {
    async fn read(p: &LocalPrometheus) -> anyhow::Result<PrometheusReport> {
        let up = p.query(&format!("sum(up{{job=\"{}\"}})", crate::prometheus::WORKERS_JOB)).await?;
        let alerts = p.api("alerts", &[]).await?;
        let alerts_firing = alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let l = &a["labels"];
                format!("{} {}", l["alertname"].as_str().unwrap_or("?"), l["worker"].as_str().unwrap_or(""))
                    .trim()
                    .to_string()
            })
            .collect();
        Ok(PrometheusReport { url: p.url.clone(), workers_up: up.first().map_or(0, |(_, v)| *v as u64), alerts_firing })
    }
}

impl DemoReport {
    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::from("\n== keyflow demo report ==\n\n");
        s.push_str(&format!(
            "{:.0} s of load, drained in {:.1} s{}\n\n",
            self.duration_s,
            self.drain_s,
            if self.drained { "" } else { " (NOT drained: the workers did not catch up in time)" }
        ));
        for p in &self.producers {
            s.push_str(&format!(
                "producer {:<11} sent {:>7}  acknowledged {:>7}  failed {}  re-sent facts {}  {:.1} events/s\n",
                p.command, p.sent, p.acknowledged, p.failed, p.duplicates_injected, p.achieved_rate
            ));
        }
        s.push('\n');
        for w in &self.workers {
            let exits: Vec<String> =
                w.exit_codes.iter().map(|c| c.map_or("killed".into(), |c| c.to_string())).collect();
            s.push_str(&format!(
                "worker {:<12} ×{} consumed {:>7}  produced {:>7}  dlq {}  duplicates {}  {:.1} events/s  exit [{}]\n",
                w.worker,
                w.instances,
                w.consumed,
                w.produced,
                w.dlq,
                w.duplicates,
                w.events_per_s,
                exits.join(", ")
            ));
        }
        s.push_str("\n== invariants (devstack verify) ==\n\n");
        s.push_str(&self.verify.text());
        s.push_str("\n== where to look next ==\n\n");
        s.push_str(&format!(
            "  devstack up                                   # keep a stack running (localhost:9092, http://localhost:8081)\n\
             \x20 devstack demo --keep                          # this demo, left running: worker metrics stay up\n\
             \x20 devstack verify -b {b} --registry {r} --json\n\
             \x20 devstack peek payments -b {b} --registry {r} -n 5\n\
             \x20 kcat -b {b} -C -t payments -f '%p@%o key=%k %h\\n' -e   # kcat on librdkafka ≥ 2.x (README)\n\
             \x20 curl -s http://<worker --metrics-addr>/metrics | grep keyflow_worker\n",
            b = self.brokers,
            r = self.registry
        ));
        if let Some(p) = &self.prometheus {
            s.push_str(&format!(
                "  {}/graph?g0.expr=sum+by+(worker)+(rate(keyflow_worker_processed_total[1m]))   # Prometheus (--keep leaves it up)\n\
                 \x20   scraped {} worker instances; alerts firing at the end: {}\n",
                p.url,
                p.workers_up,
                if p.alerts_firing.is_empty() { "none".to_string() } else { p.alerts_firing.join(", ") }
            ));
        }
        s.push_str(&format!("\ndemo: {}\n", if self.ok { "OK — every invariant held" } else { "FAILED" }));
        s
    }
}

/// A live table of the run, redrawn in place on a terminal, one block every
/// 10 s otherwise.
struct Live {
    tty: bool,
    drawn: usize,
    last_print: Option<Instant>,
    last_acked: Vec<(f64, Instant)>,
}

impl Live {
    fn new() -> Self {
        Live { tty: std::io::stderr().is_terminal(), drawn: 0, last_print: None, last_acked: vec![] }
    }

    fn show(
        &mut self,
        phase: &str,
        elapsed: Duration,
        workers: &std::collections::BTreeMap<&str, WorkerTotals>,
        producers: &[(String, f64)],
    ) {
        if !self.tty && self.last_print.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        let mut lines = vec![format!("[{:>4}s] {phase}", elapsed.as_secs())];
        let now = Instant::now();
        let mut rates = vec![];
        for (i, (name, acked)) in producers.iter().enumerate() {
            let rate = match self.last_acked.get(i) {
                Some((prev, at)) if now > *at => (acked - prev) / (now - *at).as_secs_f64(),
                _ => 0.0,
            };
            rates.push(format!("{name} {rate:.0}/s ({acked:.0} acked)"));
        }
        self.last_acked = producers.iter().map(|(_, a)| (*a, now)).collect();
        lines.push(format!("  producers: {}", if rates.is_empty() { "done".into() } else { rates.join(", ") }));
        lines.push(format!(
            "  {:<12}{:>6}{:>10}{:>10}{:>8}{:>6}{:>6}{:>8}",
            "worker", "up", "consumed", "produced", "lag", "dlq", "dup", "pending"
        ));
        for (w, t) in workers {
            lines.push(format!(
                "  {:<12}{:>6}{:>10}{:>10}{:>8}{:>6}{:>6}{:>8}",
                w, t.instances_up, t.consumed, t.produced, t.lag, t.dlq, t.duplicates, t.pending
            ));
        }
        let mut err = std::io::stderr().lock();
        if self.tty && self.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", self.drawn);
        }
        for l in &lines {
            let _ = writeln!(err, "{l}{}", if self.tty { "\x1b[K" } else { "" });
        }
        self.drawn = lines.len();
        self.last_print = Some(now);
    }
}

/// Runs the demo; the report's `ok` says whether every invariant held.
/// Runs the demo; `publish` gets the report as soon as the run is verified
/// (with `--keep`, before the stack is left running until Ctrl-C).
pub async fn run(
    args: &DemoArgs,
    publish: impl FnOnce(&DemoReport) -> anyhow::Result<()>,
) -> anyhow::Result<DemoReport> {
    let bins = Bins::beside_current_exe()?;
    let temp = args.data_dir.is_none();
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("keyflow-demo-{}", uuid::Uuid::new_v4())),
    };
    std::fs::create_dir_all(&dir)?;
    let opts = StackOptions {
        data_dir: dir.join("stack"),
        broker_port: free_port()?,
        registry_port: free_port()?,
        partitions: args.partitions,
    };
    if args.prometheus {
        crate::prometheus::locate().context("--prometheus")?;
    }
    eprintln!("demo: starting the embedded broker and schema registry…");
    let stack = Stack::up(&opts).await?;
    let prometheus = if args.prometheus {
        match LocalPrometheus::start(&dir.join("prometheus"), Duration::from_secs(2)).await {
            Ok(p) => {
                eprintln!("demo: Prometheus {} scrapes the workers and producers (alert rules loaded)", p.url);
                Some(p)
            }
            Err(e) => {
                stack.down().await;
                return Err(e.context("--prometheus"));
            }
        }
    } else {
        None
    };
    let result = run_on(args, &bins, &stack, &dir, prometheus.as_ref()).await;
    let keep = args.keep && result.as_ref().is_ok_and(|(r, _)| r.drained);
    let report = match result {
        Ok((report, mut pipeline)) => {
            let published = publish(&report);
            if keep && published.is_ok() {
                eprintln!("\ndemo: --keep: the stack and workers keep running; Ctrl-C stops them");
                for p in &pipeline.workers {
                    eprintln!("  {:<16} http://{}/metrics   log {}", p.instance, p.metrics, p.log.display());
                }
                if let Some(p) = &prometheus {
                    eprintln!("  prometheus       {}", p.url);
                }
                keyflow_schemas::process::shutdown_signal().await;
            }
            pipeline.stop(Duration::from_secs(10)).await;
            published.map(|()| report)
        }
        Err(e) => Err(e),
    };
    stack.down().await;
    if temp && !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report
}

async fn producer(
    bins: &Bins,
    stack: &Stack,
    command: &str,
    rate: f64,
    args: &DemoArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(tokio::process::Child, std::net::SocketAddr, PathBuf)> {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let summary = dir.join(format!("producer-{command}.json"));
    let log = std::fs::File::create(dir.join(format!("producer-{command}.log")))?;
    let child = Command::new(&bins.producer)
        .arg(command)
        .args(["-b", &stack.kafka.brokers, "--registry", &stack.registry.registry])
        .args(["--rate", &rate.to_string(), "--duration", &format!("{}ms", args.duration.as_millis())])
        .args(["--metrics-addr", &metrics.to_string(), "--summary-json", &summary.display().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bins.producer.display()))?;
    Ok((child, metrics, summary))
}

async fn run_on(
    args: &DemoArgs,
    bins: &Bins,
    stack: &Stack,
    dir: &std::path::Path,
    prometheus: Option<&LocalPrometheus>,
) -> anyhow::Result<(DemoReport, Pipeline)> {
    let logs = dir.join("logs");
    let latency = format!("{}ms", args.gateway_latency.as_millis());
    let mut pipeline =
        Pipeline::new(bins.clone(), &stack.kafka, &stack.registry, &logs, &["--gateway-latency", &latency]);
    eprintln!(
        "demo: broker {} registry {}; starting {} × {} worker processes (logs in {})…",
        stack.kafka.brokers,
        stack.registry.registry,
        WORKERS.len(),
        args.instances,
        logs.display()
    );
    pipeline.start(&WORKERS, args.instances as usize)?;
    if let Some(p) = prometheus {
        p.set_targets(crate::prometheus::WORKERS_JOB, &pipeline.workers.iter().map(|w| w.metrics).collect::<Vec<_>>())?;
    }
    pipeline.wait_ready(Duration::from_secs(120)).await?;
    eprintln!("demo: every worker is ready; producing for {:?}…\n", args.duration);
    let started = Instant::now();
    let mut producers = vec![];
    for (cmd, rate) in [("orders", args.order_rate), ("properties", args.property_rate)] {
        producers.push((cmd, producer(bins, stack, cmd, rate, args, &logs).await?));
    }
    if let Some(p) = prometheus {
        let targets: Vec<_> = producers.iter().map(|(_, (_, m, _))| *m).collect();
        p.set_targets(crate::prometheus::PRODUCERS_JOB, &targets)?;
    }
    let mut live = Live::new();
    // Load phase: until both generators exit.
    let mut statuses = vec![None; producers.len()];
    while statuses.iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut acked = vec![];
        for (i, (cmd, (child, metrics, _))) in producers.iter_mut().enumerate() {
            if statuses[i].is_none() {
                statuses[i] = child.try_wait()?;
            }
            if let Some((_, text)) = get(*metrics, "/metrics").await {
                acked.push((cmd.to_string(), metric_sum(&text, m::PRODUCER_ACKED, None)));
            }
        }
        if let Some((instance, status)) = pipeline.exited().into_iter().next() {
            anyhow::bail!("worker {instance} exited during the run ({status}); see {}", logs.display());
        }
        live.show("producing", started.elapsed(), &pipeline.totals().await, &acked);
    }
    let load_s = started.elapsed().as_secs_f64();
    for ((cmd, _), status) in producers.iter().zip(&statuses) {
        anyhow::ensure!(
            status.is_some_and(|s| s.success()),
            "producer {cmd} failed; see {}",
            logs.join(format!("producer-{cmd}.log")).display()
        );
    }
    // Drain: until every group has committed the end of its inputs.
    let drain_started = Instant::now();
    let names = TopicNames::default();
    let drained = loop {
        if pipeline.wait_drained(&names, Duration::from_secs(3)).await? {
            break true;
        }
        if drain_started.elapsed() > args.drain_timeout {
            break false;
        }
        live.show("draining", started.elapsed(), &pipeline.totals().await, &[]);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let drain_s = drain_started.elapsed().as_secs_f64();
    let totals = pipeline.totals().await;
    live.show(if drained { "drained" } else { "drain timed out" }, started.elapsed(), &totals, &[]);
    let run_s = started.elapsed().as_secs_f64();
    let prometheus = match prometheus {
        Some(p) => Some(PrometheusReport::read(p).await.context("reading the local Prometheus")?),
        None => None,
    };
    // Stop the workers (unless --keep) before verifying, so nothing moves under the verifier.
    let exits = if args.keep { vec![] } else { pipeline.stop(Duration::from_secs(10)).await };
    eprintln!("\ndemo: verifying the invariants over every topic…");
    let codec = Codec::new(&stack.registry.config().map_err(anyhow::Error::msg)?)?;
    let settings = verify::Settings { names, rules: RuleArgs::default(), latency_from_ms: None };
    let report = verify::verify(&stack.kafka, &codec, &settings, |_| {}).await?;
    let mut producer_reports = vec![];
    for (cmd, (_, _, summary)) in &producers {
        let text = std::fs::read_to_string(summary)?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        producer_reports.push(ProducerReport {
            command: cmd.to_string(),
            sent: n("sent"),
            acknowledged: n("acknowledged"),
            failed: n("failed"),
            achieved_rate: v["achieved_rate"].as_f64().unwrap_or(0.0),
            duplicates_injected: n("duplicates_injected"),
        });
    }
    let workers = WORKERS
        .iter()
        .map(|w| {
            let t = totals.get(w.name()).cloned().unwrap_or_default();
            WorkerReport {
                worker: w.name().to_string(),
                instances: args.instances,
                consumed: t.consumed as u64,
                produced: t.produced as u64,
                dlq: t.dlq as u64,
                duplicates: t.duplicates as u64,
                events_per_s: t.consumed / run_s,
                exit_codes: exits
                    .iter()
                    .filter(|(i, _)| i.starts_with(&format!("{}-", w.name())))
                    .map(|(_, s)| s.and_then(|s| s.code()))
                    .collect(),
            }
        })
        .collect::<Vec<_>>();
    let clean_exits = workers.iter().all(|w| w.exit_codes.iter().all(|c| *c == Some(0)));
    let ok = report.ok && drained && clean_exits && producer_reports.iter().all(|p| p.failed == 0);
    let demo = DemoReport {
        ok,
        duration_s: load_s,
        drained,
        drain_s,
        producers: producer_reports,
        workers,
        verify: report,
        brokers: stack.kafka.brokers.clone(),
        registry: stack.registry.registry.clone(),
        data_dir: dir.display().to_string(),
        prometheus,
    };
    Ok((demo, pipeline))
}
