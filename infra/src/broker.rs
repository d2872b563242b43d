//! The embedded Kafka-API broker: Tansu with SQLite storage, run as a child
//! process.
//!
//! Tansu is installed once with `cargo install tansu --locked --features
//! libsql` into a cache outside the clone (`~/.cache/keyflow/tools`, or
//! `KEYFLOW_TOOLS_DIR`); [`locate_or_install`] does that on first use, so
//! the dev stack stays a single command on a fresh machine. All acknowledged
//! records and committed offsets live in `<data dir>/tansu.db` and survive
//! restarts and kill -9 of the broker (shared/design/BROKER-NOTES.md).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The Tansu release the project is tested with.
pub const TANSU_VERSION: &str = "0.6.0";

/// Why the broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("port {port} on {host} is in use ({what}); stop whatever holds it or choose another with {flag}")]
    PortInUse { host: String, port: u16, what: &'static str, flag: &'static str },
    #[error("Tansu broker not found and --no-install given; install it with: cargo install tansu --version ={TANSU_VERSION} --locked --features libsql --root {root}")]
    NotInstalled { root: String },
    #[error("installing Tansu failed ({status}); see the cargo output above. Command: {command}")]
    InstallFailed { status: String, command: String },
    #[error("cannot run {path}: {source}")]
    Spawn { path: String, source: std::io::Error },
    #[error("Tansu exited during startup ({status}); its log is {log}:\n{tail}")]
    Exited { status: String, log: String, tail: String },
    #[error("Tansu did not accept connections on {addr} within {waited:?}; its log is {log}")]
    NotReady { addr: String, waited: Duration, log: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
}

/// Directory that holds tools the project installs itself.
pub fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEYFLOW_TOOLS_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/keyflow/tools")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
}

/// Finds the `tansu` binary (`TANSU_BIN`, the tools dir, then `PATH`),
/// installing it into the tools dir when missing and `install` is true.
pub async fn locate_or_install(install: bool) -> Result<PathBuf, BrokerError> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = tools_dir();
    let cached = root.join("bin/tansu");
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(p) = on_path("tansu") {
        return Ok(p);
    }
    let root_s = root.display().to_string();
    if !install {
        return Err(BrokerError::NotInstalled { root: root_s });
    }
    let args = [
        "install",
        "tansu",
        "--version",
        &format!("={TANSU_VERSION}"),
        "--locked",
        "--features",
        "libsql",
        "--root",
        &root_s,
    ];
    let command = format!("cargo {}", args.join(" "));
    eprintln!("devstack: the Tansu broker is not installed yet; building it once (≈15 min on 2 cores):\n  {command}");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|source| BrokerError::Spawn { path: "cargo".into(), source })?;
    if !status.success() || !cached.is_file() {
        return Err(BrokerError::InstallFailed { status: status.to_string(), command });
    }
    Ok(cached)
}

/// Fails with a clear message when `host:port` cannot be bound.
pub fn ensure_port_free(host: &str, port: u16, what: &'static str, flag: &'static str) -> Result<(), BrokerError> {
    match std::net::TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(BrokerError::PortInUse { host: host.into(), port, what, flag }),
    }
}

/// Adds the index Tansu's SQLite schema lacks: its fetch looks up each
/// record's headers with `header.topition = ? and header.offset_id = ?`, and
/// without an index that is a scan of every header ever written, so a fetch
/// costs O(records × all headers). Measured (infra/BROKER-NOTES.md): fetching 4,923
/// records with headers took 19.6 s before and 0.5 s after. Idempotent.
fn index_headers(db: &Path) -> Result<(), BrokerError> {
    let err = |source: rusqlite::Error| BrokerError::Io {
        what: "index broker database",
        path: db.display().to_string(),
        source: std::io::Error::other(source),
    };
    let conn = rusqlite::Connection::open(db).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
    conn.execute_batch("create index if not exists keyflow_header_topition_offset on header (topition, offset_id);")
        .map_err(err)?;
    Ok(())
}

/// A running Tansu broker; stopped (SIGTERM, then SIGKILL) on [`Broker::stop`] or drop.
pub struct Broker {
    child: Child,
    /// `localhost:<port>`, the bootstrap address clients use.
    pub bootstrap: String,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The broker's log file.
    pub log: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Broker {
    /// Starts Tansu on `127.0.0.1:<port>` with its SQLite database in
    /// `data_dir` and waits until it accepts connections.
    pub async fn start(bin: &Path, data_dir: &Path, port: u16) -> Result<Broker, BrokerError> {
        ensure_port_free("127.0.0.1", port, "the Kafka broker port", "--broker-port")?;
        let io = |what, path: &Path| {
            let path = path.display().to_string();
            move |source| BrokerError::Io { what, path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io("create data dir", data_dir))?;
        let data_dir = std::fs::canonicalize(data_dir).map_err(io("resolve data dir", data_dir))?;
        let log = data_dir.join("tansu.log");
        let log_file =
            std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io("open broker log", &log))?;
        let log_err = log_file.try_clone().map_err(io("open broker log", &log))?;
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .arg("--cluster-id")
            .arg("keyflow")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{port}"))
            .arg("--storage-engine")
            // Tansu resolves the SQLite path against its working directory
            // (an absolute path in the URL is treated as relative too).
            .arg("sqlite://tansu.db")
            .current_dir(&data_dir)
            .env_remove("SCHEMA_REGISTRY")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| BrokerError::Spawn { path: bin.display().to_string(), source })?;
        let mut broker = Broker { child, bootstrap: format!("localhost:{port}"), port, log };
        broker.wait_ready(port, Duration::from_secs(60)).await?;
        let db = data_dir.join("tansu.db");
        tokio::task::spawn_blocking(move || index_headers(&db)).await.map_err(|e| BrokerError::Io {
            what: "index broker database",
            path: String::new(),
            source: std::io::Error::other(e),
        })??;
        Ok(broker)
    }

    async fn wait_ready(&mut self, port: u16, patience: Duration) -> Result<(), BrokerError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Err(BrokerError::Exited {
                    status: status.to_string(),
                    log: self.log.display().to_string(),
                    tail: tail(&self.log, 20),
                });
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > patience {
                return Err(BrokerError::NotReady {
                    addr: format!("127.0.0.1:{port}"),
                    waited: start.elapsed(),
                    log: self.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Process id of the broker (for fault tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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
