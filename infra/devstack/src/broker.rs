//! The dev stack's Kafka-API broker: keyflow's own `broker` binary
//! (crate `keyflow-broker`, in `infra/broker`), run as a supervised child
//! process so tests can kill it like a real one.
//!
//! Its topics, logs and committed offsets live in the data dir and survive
//! restarts and kill -9 (infra/BROKER-NOTES.md). The binary is built with
//! the workspace (`cargo build --workspace --bins`); [`locate`] finds it
//! next to the running program, or at `KEYFLOW_BROKER_BIN`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Why the broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("port {port} on {host} is in use ({what}); stop whatever holds it or choose another with {flag}")]
    PortInUse { host: String, port: u16, what: &'static str, flag: &'static str },
    #[error("the keyflow `broker` binary was not found (looked in {looked}); build it with `cargo build --workspace --bins` or set KEYFLOW_BROKER_BIN")]
    NotFound { looked: String },
    #[error("cannot run {path}: {source}")]
    Spawn { path: String, source: std::io::Error },
    #[error("the broker exited during start-up ({status}); its log is {log}:\n{tail}")]
    Exited { status: String, log: String, tail: String },
    #[error("the broker did not report ready within {waited:?}; its log is {log}")]
    NotReady { waited: Duration, log: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
}

/// Finds the `broker` binary: `KEYFLOW_BROKER_BIN`, else next to the running
/// program or one directory up (test binaries run from `target/*/deps`),
/// else builds it next to the running program under `cargo run`.
pub fn locate() -> Result<PathBuf, BrokerError> {
    if let Some(p) = std::env::var_os("KEYFLOW_BROKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dirs: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(Path::to_path_buf).collect();
    if let Some(p) = dirs.iter().map(|d| d.join("broker")).find(|p| p.is_file()) {
        return Ok(p);
    }
    // `cargo run --bin devstack -- up` on a fresh clone: build it beside devstack.
    match crate::bins::beside_current_exe(&["broker"]) {
        Ok(dir) => Ok(dir.join("broker")),
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "could not build the broker");
            Err(BrokerError::NotFound {
                looked: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            })
        }
    }
}

/// Fails with a clear message when `host:port` cannot be bound.
pub fn ensure_port_free(host: &str, port: u16, what: &'static str, flag: &'static str) -> Result<(), BrokerError> {
    match std::net::TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(BrokerError::PortInUse { host: host.into(), port, what, flag }),
    }
}

/// A running broker; stopped (SIGTERM, then SIGKILL) on [`Broker::stop`] or drop.
pub struct Broker {
    child: Child,
    /// `localhost:<port>`, the bootstrap address clients use.
    pub bootstrap: String,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its `/metrics` address.
    pub metrics: String,
    /// The broker's log file.
    pub log: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[derive(serde::Deserialize)]
struct Ready {
    metrics: Option<String>,
}

impl Broker {
    /// Starts the broker on `127.0.0.1:<port>` (advertised as `localhost`)
    /// with its data in `data_dir`, and waits for its ready line.
    pub async fn start(bin: &Path, data_dir: &Path, port: u16) -> Result<Broker, BrokerError> {
        Self::start_with(bin, data_dir, port, &[]).await
    }

    /// [`Broker::start`] with more `broker` flags (e.g. `--sasl-plain-user`).
    pub async fn start_with(bin: &Path, data_dir: &Path, port: u16, extra: &[&str]) -> Result<Broker, BrokerError> {
        ensure_port_free("127.0.0.1", port, "the Kafka broker port", "--broker-port")?;
        let io = |what, path: &Path| {
            let path = path.display().to_string();
            move |source| BrokerError::Io { what, path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io("create data dir", data_dir))?;
        let log = data_dir.join("broker.log");
        let log_file =
            std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io("open broker log", &log))?;
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--advertised-host", "localhost"])
            .args(["--metrics", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", std::env::var("KEYFLOW_BROKER_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BrokerError::Spawn { path: bin.display().to_string(), source })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let patience = Duration::from_secs(60);
        let line = tokio::time::timeout(patience, BufReader::new(stdout).lines().next_line()).await;
        let ready = match line {
            Ok(Ok(Some(l))) => serde_json::from_str::<Ready>(&l).ok(),
            Ok(_) => None,
            Err(_) => return Err(BrokerError::NotReady { waited: patience, log: log.display().to_string() }),
        };
        let Some(ready) = ready else {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(BrokerError::Exited { status, log: log.display().to_string(), tail: tail(&log, 20) });
        };
        Ok(Broker {
            child,
            bootstrap: format!("localhost:{port}"),
            port,
            metrics: ready.metrics.unwrap_or_default(),
            log,
        })
    }

    /// Process id of the broker (for fault tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the broker with SIGKILL (crash drills) and reaps it.
    pub async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the broker: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child process by pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}
