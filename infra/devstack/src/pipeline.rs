//! The pipeline's processes on one machine: worker instances and load
//! generators as child processes of their real binaries, with their metrics
//! endpoints, logs, kill -9 and restart, and the drain check (every group has
//! committed the end of its inputs). `devstack demo` and the end-to-end tests
//! both run the pipeline through this.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keyflow_consumers::workers::WorkerKind;
use keyflow_schemas::client::{KafkaArgs, RegistryArgs};
use keyflow_schemas::kafka::Quiet;
use keyflow_schemas::kafka::{client_config, position, reader_config};
use keyflow_schemas::metrics as m;
use keyflow_schemas::topics::TopicNames;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::process::{Child, Command};

/// The four workers, in pipeline order.
pub const WORKERS: [WorkerKind; 4] =
    [WorkerKind::Payment, WorkerKind::Fulfillment, WorkerKind::Loyalty, WorkerKind::Publication];

/// Where the `worker` and `producer` binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub worker: PathBuf,
    pub producer: PathBuf,
}

impl Bins {
    /// The binaries in `dir`.
    pub fn in_dir(dir: &Path) -> Bins {
        Bins { worker: dir.join("worker"), producer: dir.join("producer") }
    }

    /// The binaries beside the running executable, built first when they
    /// are missing under `cargo run` (the broker with them: the demo runs it).
    pub fn beside_current_exe() -> anyhow::Result<Bins> {
        Ok(Bins::in_dir(&crate::bins::beside_current_exe(&["worker", "producer", "broker"])?))
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One worker instance.
pub struct WorkerProc {
    pub worker: WorkerKind,
    /// Its static membership id (`group.instance.id`), also its log name.
    pub instance: String,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
    /// How often it was killed with SIGKILL.
    pub kills: u32,
}

/// A worker's metrics at one moment, summed over its instances.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerTotals {
    pub consumed: f64,
    pub produced: f64,
    pub lag: f64,
    pub dlq: f64,
    pub duplicates: f64,
    pub copies_dropped: f64,
    pub pending: f64,
    pub instances_up: usize,
}

/// The worker processes of a pipeline on one stack.
pub struct Pipeline {
    bins: Bins,
    kafka: KafkaArgs,
    registry: RegistryArgs,
    log_dir: PathBuf,
    /// Extra flags for every worker (e.g. `--gateway-latency 5ms`).
    worker_args: Vec<String>,
    pub workers: Vec<WorkerProc>,
}

impl Pipeline {
    pub fn new(bins: Bins, kafka: &KafkaArgs, registry: &RegistryArgs, log_dir: &Path, worker_args: &[&str]) -> Self {
        Pipeline {
            bins,
            kafka: kafka.clone(),
            registry: registry.clone(),
            log_dir: log_dir.to_path_buf(),
            worker_args: worker_args.iter().map(|s| s.to_string()).collect(),
            workers: vec![],
        }
    }

    /// Starts `instances` instances of each of `workers`.
    pub fn start(&mut self, workers: &[WorkerKind], instances: usize) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.log_dir)?;
        for w in workers {
            for i in 1..=instances {
                let p = WorkerProc {
                    worker: *w,
                    instance: format!("{}-{i}", w.name()),
                    metrics: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                    log: self.log_dir.join(format!("{}-{i}.log", w.name())),
                    child: None,
                    kills: 0,
                };
                self.workers.push(p);
                let idx = self.workers.len() - 1;
                self.spawn(idx)?;
            }
        }
        Ok(())
    }

    fn spawn(&mut self, idx: usize) -> anyhow::Result<()> {
        let p = &mut self.workers[idx];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&p.log)?;
        let mut cmd = Command::new(&self.bins.worker);
        cmd.arg(p.worker.name())
            .args(self.kafka.to_flags())
            .args(["--registry", &self.registry.registry])
            .args(["--instance-id", &p.instance, "--metrics-addr", &p.metrics.to_string()])
            // Each instance's state dir is <data-dir>/<worker>-<instance-id>.
            .arg("--data-dir")
            .arg(p.log.parent().unwrap_or(std::path::Path::new(".")).join("state"))
            .args(&self.worker_args)
            .env_remove("KAFKA_BROKERS")
            .env_remove("KAFKA_CONFIG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        p.child = Some(cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.bins.worker.display()))?);
        Ok(())
    }

    /// SIGKILLs instance `idx` (no drain, no goodbye) and starts it again
    /// with the same membership id.
    pub async fn kill9_and_restart(&mut self, idx: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.workers[idx].child.take() {
            let _ = c.kill().await;
        }
        self.workers[idx].kills += 1;
        self.spawn(idx)
    }

    /// Instances that exited on their own: (instance, status).
    pub fn exited(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let mut out = vec![];
        for p in &mut self.workers {
            if let Some(c) = &mut p.child {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((p.instance.clone(), status));
                    p.child = None;
                }
            }
        }
        out
    }

    /// Waits until every instance answers `/ready` with 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for p in &self.workers {
            loop {
                if get(p.metrics, "/ready").await.is_some_and(|(code, _)| code == 200) {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "worker {} was not ready within {timeout:?}; its log is {}",
                    p.instance,
                    p.log.display()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// Current metrics per worker, summed over its instances that answer.
    pub async fn totals(&self) -> BTreeMap<&'static str, WorkerTotals> {
        let mut out: BTreeMap<&'static str, WorkerTotals> = BTreeMap::new();
        for p in &self.workers {
            let t = out.entry(p.worker.name()).or_default();
            let Some((_, text)) = get(p.metrics, "/metrics").await else { continue };
            t.instances_up += 1;
            t.consumed += metric_sum(&text, m::WORKER_CONSUMED, None);
            t.produced += metric_sum(&text, m::WORKER_PRODUCED, None)
                - metric_sum(&text, m::WORKER_PRODUCED, Some(("type", "dlq")));
            t.lag += metric_sum(&text, m::WORKER_LAG, None);
            t.dlq += metric_sum(&text, m::WORKER_PROCESSED, Some(("outcome", "dlq")));
            t.duplicates += metric_sum(&text, m::WORKER_PROCESSED, Some(("outcome", "duplicate")));
            t.copies_dropped += metric_sum(&text, m::WORKER_PROCESSED, Some(("outcome", "copy_dropped")));
            t.pending += metric_sum(&text, m::WORKER_PENDING, None);
        }
        out
    }

    /// Whether every worker group has committed the end of every input
    /// partition (the group offsets the workers commit after each batch).
    pub async fn drained(&self, names: &TopicNames) -> anyhow::Result<bool> {
        let (kafka, names) = (self.kafka.clone(), names.clone());
        let mut groups: Vec<WorkerKind> = self.workers.iter().map(|p| p.worker).collect();
        groups.dedup();
        tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            for g in groups {
                let topics: Vec<String> = g.inputs().into_iter().map(|t| names.get(t)).collect();
                if !group_caught_up(&kafka, g.name(), &topics)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?
    }

    /// Waits until [`Pipeline::drained`] holds twice in a row, up to `timeout`.
    pub async fn wait_drained(&self, names: &TopicNames, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut streak = 0;
        while Instant::now() < deadline {
            if self.drained(names).await.unwrap_or(false) {
                streak += 1;
                if streak >= 2 {
                    return Ok(true);
                }
            } else {
                streak = 0;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        Ok(false)
    }

    /// SIGTERM to every instance, then waits up to `grace` for each to exit;
    /// returns (instance, exit status or `None` when it had to be killed).
    pub async fn stop(&mut self, grace: Duration) -> Vec<(String, Option<std::process::ExitStatus>)> {
        for p in &self.workers {
            if let Some(pid) = p.child.as_ref().and_then(Child::id) {
                // SAFETY: sending a signal to a child process id we own.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        let mut out = vec![];
        for p in &mut self.workers {
            let Some(mut c) = p.child.take() else { continue };
            let status = match tokio::time::timeout(grace, c.wait()).await {
                Ok(Ok(s)) => Some(s),
                _ => {
                    let _ = c.kill().await;
                    None
                }
            };
            out.push((p.instance.clone(), status));
        }
        out
    }
}

/// Where a consumer group stands on one input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub topic: String,
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// The group's committed offset; `None` before its first commit.
    pub committed: Option<i64>,
}

impl GroupPosition {
    /// Offsets the group has not committed past (as Kafka's tools count
    /// lag: on a transactional topic a trailing commit marker counts too).
    pub fn lag(&self) -> i64 {
        self.high - self.committed.unwrap_or(self.low).max(self.low)
    }

    /// Whether the group has consumed every record: committed at the end, or
    /// only transaction markers and aborted records (which read_committed
    /// consumers never get, so never commit past) lie between.
    pub fn caught_up(&self, kafka: &KafkaArgs) -> anyhow::Result<bool> {
        let from = self.committed.unwrap_or(self.low).max(self.low);
        if from >= self.high {
            return Ok(true);
        }
        let consumer: BaseConsumer<Quiet> =
            reader_config(kafka, "keyflow-devstack-probe")?.create_with_context(Quiet)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(from))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.offset() < self.high => return Ok(false),
                Some(Err(e)) => return Err(e.into()),
                _ if position(&consumer, &self.topic, self.partition).is_some_and(|o| o >= self.high) => {
                    return Ok(true)
                }
                _ => {}
            }
        }
        Ok(false)
    }
}

/// The watermarks and committed offset of `group` on every partition of `topics`.
pub fn group_positions(kafka: &KafkaArgs, group: &str, topics: &[String]) -> anyhow::Result<Vec<GroupPosition>> {
    let consumer: BaseConsumer<Quiet> =
        client_config(kafka, &[("group.id", group), ("enable.auto.commit", "false")])?.create_with_context(Quiet)?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut marks = BTreeMap::new();
    for t in md.topics().iter().filter(|t| topics.iter().any(|n| n == t.name())) {
        for p in t.partitions() {
            marks.insert(
                (t.name().to_string(), p.id()),
                consumer.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))?,
            );
            tpl.add_partition(t.name(), p.id());
        }
    }
    if marks.is_empty() {
        return Ok(vec![]);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| {
            let (low, high) = *marks.get(&(e.topic().to_string(), e.partition()))?;
            let committed = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            Some(GroupPosition { topic: e.topic().to_string(), partition: e.partition(), low, high, committed })
        })
        .collect())
}

fn group_caught_up(kafka: &KafkaArgs, group: &str, topics: &[String]) -> anyhow::Result<bool> {
    for g in group_positions(kafka, group, topics)? {
        // Before its first commit a group has consumed nothing of a non-empty partition.
        if g.high > g.low && (g.committed.is_none() || !g.caught_up(kafka)?) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `GET http://addr/path` → (status, body); `None` when nothing answers.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().ok()?;
    let r = client.get(format!("http://{addr}{path}")).send().await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

/// Sum of a metric's samples in Prometheus text format, optionally only
/// those with label `k="v"`.
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            if let Some((k, v)) = label {
                if !labels.contains(&format!("{k}=\"{v}\"")) {
                    return None;
                }
            }
            value.parse::<f64>().ok()
        })
        .fold(0.0, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_follow_names_and_labels() {
        let text = "# HELP x y\n\
                    keyflow_worker_processed_total{outcome=\"ok\",worker=\"payment\"} 10\n\
                    keyflow_worker_processed_total{outcome=\"dlq\",worker=\"payment\"} 2\n\
                    keyflow_worker_processed_total_other 5\n\
                    keyflow_worker_pending 3\n";
        assert_eq!(metric_sum(text, m::WORKER_PROCESSED, None), 12.0);
        assert_eq!(metric_sum(text, m::WORKER_PROCESSED, Some(("outcome", "dlq"))), 2.0);
        assert_eq!(metric_sum(text, m::WORKER_PENDING, None), 3.0);
        assert_eq!(metric_sum(text, "missing", None), 0.0);
    }
}
