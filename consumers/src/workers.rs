//! The four workers' topology, from DOMAIN.md. Topic names come from the
//! catalog (`infra/topics.toml`).

use keyflow_schemas::events::*;
use keyflow_schemas::topics::{state_topic, TopicNames};

/// One of the pipeline's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerKind {
    /// Decides payments for orders (orders → payments).
    Payment,
    /// Joins orders and payments into one fulfillment outcome (→ fulfillments).
    Fulfillment,
    /// Awards and revokes loyalty points (payments → loyalty).
    Loyalty,
    /// Evaluates publication requests against contracts (contracts + properties → publication-evaluations).
    Publication,
    /// Test worker that proves the runtime: counts orders per customer (orders → loyalty).
    #[value(hide = true)]
    Counter,
}

impl WorkerKind {
    /// The worker's name, also its consumer group.
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Payment => "payment",
            WorkerKind::Fulfillment => "fulfillment",
            WorkerKind::Loyalty => "loyalty",
            WorkerKind::Publication => "publication",
            WorkerKind::Counter => "counter",
        }
    }

    /// Input topics; a worker with two inputs joins them per partition.
    pub fn inputs(self) -> Vec<&'static str> {
        match self {
            WorkerKind::Payment | WorkerKind::Counter => vec![OrderEvent::DEFAULT_TOPIC],
            WorkerKind::Fulfillment => vec![OrderEvent::DEFAULT_TOPIC, PaymentEvent::DEFAULT_TOPIC],
            WorkerKind::Loyalty => vec![PaymentEvent::DEFAULT_TOPIC],
            WorkerKind::Publication => vec![ContractEvent::DEFAULT_TOPIC, PropertyEvent::DEFAULT_TOPIC],
        }
    }

    /// The output topic.
    pub fn output(self) -> &'static str {
        match self {
            WorkerKind::Payment => PaymentEvent::DEFAULT_TOPIC,
            WorkerKind::Fulfillment => FulfillmentEvent::DEFAULT_TOPIC,
            WorkerKind::Loyalty | WorkerKind::Counter => LoyaltyEvent::DEFAULT_TOPIC,
            WorkerKind::Publication => EvaluationEvent::DEFAULT_TOPIC,
        }
    }

    /// Topics that must share one partition count: the inputs and the changelog.
    pub fn co_partitioned(self, names: &TopicNames) -> Vec<String> {
        let mut t: Vec<String> = self.inputs().into_iter().map(|t| names.get(t)).collect();
        t.push(names.get(&state_topic(self.name())));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;
    use keyflow_schemas::topics::catalog;

    #[test]
    fn every_worker_is_in_the_catalog_with_the_family_of_its_inputs() {
        for w in WorkerKind::value_variants().iter().filter(|w| **w != WorkerKind::Counter) {
            let fam = &catalog().workers[w.name()].family;
            for t in w.inputs().into_iter().chain([w.output()]) {
                assert_eq!(&catalog().family_of(t).unwrap().name, fam, "{} {t}", w.name());
            }
        }
    }
}
