//! `devstack up`: the embedded broker and registry, topics and schemas.
//!
//! [`init`] (topics + schemas) works against any cluster; [`Stack::up`] runs
//! the embedded pieces and then calls it.

use std::path::PathBuf;
use std::time::Duration;

use keyflow_schemas::client::{KafkaArgs, RegistryArgs};
use keyflow_schemas::registry_admin::{Registered, RegistryAdmin};
use keyflow_schemas::topics;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::broker::{self, Broker};
use crate::kafka::{self, TopicOutcome};

/// Options of `devstack up`.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Keeps the broker's database and the registry's log across restarts.
    pub data_dir: PathBuf,
    pub broker_port: u16,
    pub registry_port: u16,
    /// Partition count of the co-partitioned topics.
    pub partitions: i32,
}

/// What `init` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    pub topics: Vec<TopicOutcome>,
    pub subjects: Vec<Registered>,
}

/// Creates the catalog's topics and registers every schema (BACKWARD policy).
pub async fn init(
    kafka: &KafkaArgs,
    registry: &RegistryArgs,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
) -> anyhow::Result<InitReport> {
    let specs = topics::catalog().specs(partitions);
    let topics = kafka::create_topics(kafka, &specs, replication_factor).await?;
    let subjects = register_schemas(registry).await?;
    Ok(InitReport { topics, subjects })
}

/// Registers every schema (BACKWARD policy) once the registry answers.
pub async fn register_schemas(registry: &RegistryArgs) -> anyhow::Result<Vec<Registered>> {
    let admin = RegistryAdmin::new(registry.config().map_err(anyhow::Error::msg)?)?;
    admin.wait_ready(Duration::from_secs(30)).await?;
    Ok(admin.register_all(|t| t.to_string()).await?)
}

/// The running embedded stack.
pub struct Stack {
    broker: Broker,
    registry_stop: Option<oneshot::Sender<()>>,
    registry_task: Option<JoinHandle<std::io::Result<()>>>,
    registry_port: u16,
    pub kafka: KafkaArgs,
    pub registry: RegistryArgs,
    pub report: InitReport,
    pub data_dir: PathBuf,
}

/// Starts the schema registry on `127.0.0.1:<port>` with its log in `dir`.
pub async fn start_registry(
    dir: &std::path::Path,
    port: u16,
) -> anyhow::Result<(String, oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)> {
    broker::ensure_port_free("127.0.0.1", port, "the schema registry port", "--registry-port")?;
    let store = keyflow_registry::store::Store::open(dir)?;
    if store.torn_bytes > 0 {
        tracing::warn!(path = %store.path().display(), bytes = store.torn_bytes, "cut a torn last line off the schema log");
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(keyflow_registry::serve(listener, store, async {
        let _ = rx.await;
    }));
    Ok((url, tx, task))
}

impl Stack {
    /// Starts broker and registry, then creates topics and registers schemas.
    pub async fn up(opts: &StackOptions) -> anyhow::Result<Stack> {
        let bin = broker::locate()?;
        let broker = Broker::start(&bin, &opts.data_dir.join("broker"), opts.broker_port).await?;
        let (url, registry_stop, registry_task) =
            match start_registry(&opts.data_dir.join("registry"), opts.registry_port).await {
                Ok(r) => r,
                Err(e) => {
                    broker.stop().await;
                    return Err(e);
                }
            };
        let kafka = KafkaArgs::new(broker.bootstrap.clone());
        let registry = RegistryArgs { registry: url, registry_auth: None };
        let report = match init(&kafka, &registry, Some(opts.partitions), None).await {
            Ok(r) => r,
            Err(e) => {
                let _ = registry_stop.send(());
                broker.stop().await;
                return Err(e);
            }
        };
        Ok(Stack {
            broker,
            registry_stop: Some(registry_stop),
            registry_task: Some(registry_task),
            registry_port: opts.registry_port,
            kafka,
            registry,
            report,
            data_dir: opts.data_dir.clone(),
        })
    }

    /// The broker's port on localhost.
    pub fn broker_port(&self) -> u16 {
        self.broker.port
    }

    /// The broker's log file.
    pub fn broker_log(&self) -> &std::path::Path {
        &self.broker.log
    }

    /// Stops the schema registry (outage drills); [`Stack::start_registry`] brings it back.
    pub async fn stop_registry(&mut self) {
        if let Some(stop) = self.registry_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.registry_task.take() {
            let _ = task.await;
        }
    }

    /// Starts the schema registry again on its port, from its durable log.
    pub async fn start_registry(&mut self) -> anyhow::Result<()> {
        let (_, stop, task) = start_registry(&self.data_dir.join("registry"), self.registry_port).await?;
        self.registry_stop = Some(stop);
        self.registry_task = Some(task);
        Ok(())
    }

    /// Stops the registry and the broker.
    pub async fn down(mut self) {
        self.stop_registry().await;
        self.broker.stop().await;
    }
}
