//! `worker <name>`: runs one of the pipeline's workers as a consumer-group
//! member.

use std::time::Duration;

use clap::Parser;
use keyflow_consumers::preflight;
use keyflow_consumers::workers::WorkerKind;
use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::logging::{self, LogFormat};
use keyflow_schemas::topics::TopicNames;

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
    topics: TopicNames,
    /// Log format (logs go to stderr).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() {
    let args = Args::parse();
    logging::init(args.log_format);
    let name = args.worker.name();
    match preflight::check_topics(&args.kafka, &args.topics, args.worker, Duration::from_secs(15)) {
        Ok(partitions) => {
            tracing::info!(worker = name, partitions, "topics checked");
            eprintln!("worker {name}: topics are co-partitioned ({partitions} partitions), but the worker runtime is not built yet (issue #5)");
            std::process::exit(3);
        }
        Err(e) => {
            eprintln!("worker: error: {e}");
            std::process::exit(1);
        }
    }
}
