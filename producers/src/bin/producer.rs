//! `producer`: load generators for the keyflow pipeline.

use clap::{Parser, Subcommand};
use keyflow_producers::orders::{OrderGen, OrderMix};
use keyflow_producers::properties::{PropertyGen, PropertyMix};
use keyflow_producers::replay::{self, Defaults};
use keyflow_producers::run::{self, RunArgs};
use keyflow_producers::ListGen;
use keyflow_schemas::logging::{self, LogFormat};

/// Puts realistic, reproducible Avro load on the pipeline's topics.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Log format (logs and progress go to stderr).
    #[arg(long, global = true, value_enum, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// OrderPlaced / OrderCancelled for many customers, with a mix of declines, cancels and re-sent facts.
    Orders {
        #[command(flatten)]
        mix: OrderMix,
        #[command(flatten)]
        run: RunArgs,
    },
    /// ContractStatusChanged and PublicationApprovalRequested for many properties.
    Properties {
        #[command(flatten)]
        mix: PropertyMix,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Produce events from a JSON-lines file, in file order, after validating every line.
    Replay {
        /// The file (one event per line: {"type": "OrderPlaced", ...fields}).
        file: std::path::PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
}

async fn main_inner(cmd: Cmd) -> anyhow::Result<bool> {
    let summary = match cmd {
        Cmd::Orders { mix, run: args } => {
            mix.validate().map_err(anyhow::Error::msg)?;
            let (seed, start, step) = args.resolved();
            let mut g = OrderGen::new(mix, seed, start, step);
            run::run("orders", &mut g, &args, seed, start).await?
        }
        Cmd::Properties { mix, run: args } => {
            mix.validate().map_err(anyhow::Error::msg)?;
            let (seed, start, step) = args.resolved();
            let mut g = PropertyGen::new(mix, seed, start, step);
            run::run("properties", &mut g, &args, seed, start).await?
        }
        Cmd::Replay { file, run: mut args } => {
            let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let (seed, start, _) = args.resolved();
            let mut next_id = |line: usize| {
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{seed}/{line}").as_bytes()).to_string()
            };
            let events = match replay::parse(&text, Defaults { occurred_at: start, new_id: &mut next_id }) {
                Ok(e) => e,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{}:{e}", file.display());
                    }
                    anyhow::bail!("{}: {} invalid line(s); nothing was sent", file.display(), errors.len());
                }
            };
            if events.is_empty() {
                anyhow::bail!("{}: no events in the file", file.display());
            }
            args.count = Some(events.len() as u64);
            let mut g = ListGen::new(events);
            run::run("replay", &mut g, &args, seed, start).await?
        }
    };
    Ok(summary.failed == 0)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match main_inner(cli.cmd).await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("producer: some deliveries failed (see above)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("producer: error: {e:#}");
            std::process::exit(1);
        }
    }
}
