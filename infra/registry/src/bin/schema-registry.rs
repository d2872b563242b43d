//! `schema-registry`: the project's Confluent-compatible schema registry as a
//! standalone server.

use std::path::PathBuf;

use clap::Parser;
use keyflow_registry as registry;
use keyflow_schemas::logging::{self, LogFormat};

/// A Confluent-compatible schema registry (REST API v1, AVRO) whose schema
/// ids survive restarts and kill -9.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SCHEMA_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Directory of the durable schema log.
    #[arg(long, env = "SCHEMA_REGISTRY_DATA_DIR", default_value = "./registry-data")]
    data_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let store = registry::store::Store::open(&args.data_dir)?;
    if store.torn_bytes > 0 {
        tracing::warn!(path = %store.path().display(), bytes = store.torn_bytes, "cut a torn last line off the schema log");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: cannot listen: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, log = %store.path().display(), subjects = store.state.subjects.len(), "schema registry listening");
    println!("schema-registry listening on http://{addr}");
    registry::serve(listener, store, keyflow_schemas::process::shutdown_signal()).await?;
    tracing::info!("schema registry stopped");
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    logging::init(args.log_format);
    if let Err(e) = run(args).await {
        eprintln!("schema-registry: error: {e:#}");
        std::process::exit(1);
    }
}
