//! keyflow's single-node Kafka-API broker, for development and tests.
//!
//! Production runs on Apache Kafka; this broker exists so the dev stack and
//! the test suite have a real Kafka-API broker on one machine without a JVM
//! (infra/BROKER-NOTES.md says why no existing one fit). It speaks the Kafka
//! protocol through the `kafka-protocol` crate and implements only what Kafka
//! does: nothing in the pipeline may depend on a behaviour Kafka lacks.
//!
//! - [`server`]: framing, the version gate, dispatch; [`api`]: the handlers.
//! - [`log`]: segment files, recovery, retention; [`compact`]: log
//!   compaction; [`topics`]: topics and their configs; [`producers`]:
//!   idempotent sequence checks.
//! - [`group`]: the classic group protocol; [`offsets`]: committed offsets.
//!
//! [`Broker::start`] runs it in-process (tests); the `broker` binary runs it
//! as a process (devstack, which can kill it like a real one).

pub mod api;
pub mod batch;
pub mod compact;
pub mod errors;
pub mod group;
pub mod log;
pub mod metrics;
pub mod offsets;
pub mod producers;
pub mod server;
pub mod table;
pub mod topics;
pub mod txn;
pub mod versions;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the broker runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where clients connect (port 0: any free port).
    pub listen: SocketAddr,
    /// The host put in Metadata and FindCoordinator answers (`None`: the
    /// listen address, or `localhost` when listening on every interface).
    pub advertised_host: Option<String>,
    /// `/metrics` address, if any.
    pub metrics: Option<SocketAddr>,
    /// Sync every append and offset commit to disk before answering.
    pub fsync: bool,
    /// Kafka's `auto.create.topics.enable` (false by default here, as in
    /// the project's production compose file).
    pub auto_create_topics: bool,
    /// Kafka's `num.partitions`: partitions of a topic created without a count.
    pub default_partitions: i32,
    pub groups: group::GroupConfig,
    /// How often retention (`retention.ms`, `retention.bytes`) and
    /// compaction (`cleanup.policy=compact`) are applied.
    pub retention_check: Duration,
    /// SASL/PLAIN users (name → password): when set, every connection must
    /// authenticate (SASL_PLAINTEXT) before anything but ApiVersions.
    pub sasl_plain: Option<std::collections::BTreeMap<String, String>>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertised_host: None,
            metrics: None,
            fsync: false,
            auto_create_topics: false,
            default_partitions: 1,
            groups: group::GroupConfig::default(),
            retention_check: Duration::from_secs(30),
            sasl_plain: None,
        }
    }
}

/// Hands out producer ids, unique across restarts: blocks of ids are
/// reserved on disk (`producer-ids`) before any of them is used.
pub struct ProducerIds {
    path: PathBuf,
    /// (next id, end of the reserved block).
    state: Mutex<(i64, i64)>,
}

const PID_BLOCK: i64 = 1000;

impl ProducerIds {
    fn open(dir: &Path, at_least: i64) -> std::io::Result<ProducerIds> {
        let path = dir.join("producer-ids");
        let stored: i64 = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let next = stored.max(at_least);
        Ok(ProducerIds { path, state: Mutex::new((next, next)) })
    }

    pub fn next(&self) -> std::io::Result<i64> {
        let mut st = self.state.lock().unwrap();
        if st.0 >= st.1 {
            let end = st.0 + PID_BLOCK;
            log::write_atomically(&self.path, end.to_string().as_bytes())?;
            st.1 = end;
        }
        st.0 += 1;
        Ok(st.0 - 1)
    }
}

/// Everything the handlers share.
pub struct State {
    pub cfg: Config,
    /// (host, port) given to clients.
    pub advertised: (String, u16),
    pub topics: topics::Topics,
    pub groups: group::Coordinator,
    pub offsets: offsets::Offsets,
    pub txns: txn::Transactions,
    pub producer_ids: ProducerIds,
    pub metrics: metrics::Metrics,
}

/// A running broker.
pub struct Broker {
    /// The address clients connect to.
    pub addr: SocketAddr,
    /// The `/metrics` address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Broker {
    /// Recovers the data dir, binds the listeners and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("cannot create --data-dir {}", cfg.data_dir.display()))?;
        let dir = cfg.data_dir.clone();
        let fsync = cfg.fsync;
        let (topics, offsets, txns) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            Ok((
                topics::Topics::open(&dir, fsync)?,
                offsets::Offsets::open(&dir, fsync)?,
                txn::Transactions::open(&dir, fsync)?,
            ))
        })
        .await??;
        let max_pid = topics
            .all()
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.max_producer_id()))
            .chain([txns.max_producer_id()])
            .max()
            .unwrap_or(-1);
        let producer_ids = ProducerIds::open(&cfg.data_dir, max_pid + 1)?;
        let listener =
            TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on --listen {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let host = cfg.advertised_host.clone().unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                "localhost".into()
            } else {
                addr.ip().to_string()
            }
        });
        let state = Arc::new(State {
            advertised: (host, addr.port()),
            groups: group::Coordinator::new(cfg.groups),
            topics,
            offsets,
            txns,
            producer_ids,
            metrics: metrics::Metrics::new(),
            cfg,
        });
        let st = state.clone();
        tokio::task::spawn_blocking(move || txn::recover(&st))
            .await?
            .map_err(|c| anyhow::anyhow!("cannot finish the transactions open before the restart: {c:?}"))?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![];
        tasks.push(tokio::spawn(accept(state.clone(), listener, stopped.clone())));
        tasks.push(tokio::spawn(tick(state.clone(), stopped.clone())));
        let mut metrics_addr = None;
        if let Some(m) = state.cfg.metrics {
            let l = TcpListener::bind(m).await.with_context(|| format!("cannot listen on --metrics {m}"))?;
            metrics_addr = Some(l.local_addr()?);
            let st = state.clone();
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let st = st.clone();
                    async move { st.metrics.render(&st) }
                }),
            );
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            }));
        }
        tracing::info!(%addr, data_dir = %state.cfg.data_dir.display(), topics = state.topics.all().len(), "broker listening");
        Ok(Broker { addr, metrics_addr, state, stop, tasks })
    }

    /// Stops accepting and ends every task (open connections are dropped).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn accept(state: Arc<State>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => { conns.spawn(server::serve(state.clone(), stream, peer)); }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stopped.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Group and transaction timers (every 100 ms), retention and compaction.
async fn tick(state: Arc<State>, mut stopped: watch::Receiver<bool>) {
    let mut last_retention = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped.changed() => return,
        }
        state.groups.tick();
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || txn::expire(&st)).await;
        if last_retention.elapsed() >= state.cfg.retention_check {
            last_retention = tokio::time::Instant::now();
            let st = state.clone();
            let _ = tokio::task::spawn_blocking(move || {
                apply_retention(&st);
                apply_compaction(&st);
            })
            .await;
        }
    }
}

/// Milliseconds since the Unix epoch (record and transaction times).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn apply_retention(st: &State) {
    let now = now_ms();
    for t in st.topics.all() {
        if !t.config("cleanup.policy").contains("delete") {
            continue;
        }
        let (ms, bytes) = (t.config_i64("retention.ms"), t.config_i64("retention.bytes"));
        for p in &t.partitions {
            let before = p.bounds().0;
            match p.enforce_retention(now, ms, bytes) {
                Ok(start) if start > before => {
                    tracing::info!(
                        topic = t.name,
                        partition = p.index,
                        log_start = start,
                        "retention deleted old segments"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::error!(topic = t.name, partition = p.index, error = %e, "retention failed"),
            }
        }
    }
}

/// Compacts every partition of the topics whose policy has `compact`.
pub fn apply_compaction(st: &State) {
    for t in st.topics.all() {
        if !t.config("cleanup.policy").contains("compact") {
            continue;
        }
        let s = compact::Settings {
            now_ms: now_ms(),
            min_lag_ms: t.config_i64("min.compaction.lag.ms"),
            delete_retention_ms: t.config_i64("delete.retention.ms"),
        };
        for p in &t.partitions {
            match p.compact(s) {
                Ok(stats) if stats.segments > 0 => {
                    st.metrics.compacted_records.inc_by(stats.records_removed);
                    tracing::info!(
                        topic = t.name,
                        partition = p.index,
                        records_removed = stats.records_removed,
                        batches_removed = stats.batches_removed,
                        segments = stats.segments,
                        bytes_before = stats.bytes_before,
                        bytes_after = stats.bytes_after,
                        "compacted"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::error!(topic = t.name, partition = p.index, error = %e, "compaction failed"),
            }
        }
    }
}
