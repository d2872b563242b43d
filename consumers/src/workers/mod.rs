//! The four workers of docs/domain.md: each a module of pure rules (no Kafka, no
//! clocks) implementing [`crate::task::Worker`], plus their topology here
//! (inputs, output, state topic). Topic names come from the catalog
//! (`infra/topics.toml`).
//!
//! - [`payment`]: orders → payments (decisions, voids).
//! - [`fulfillment`]: joins orders and payments → one outcome per order.
//! - [`loyalty`]: payments → points awarded and revoked, with tiers.
//! - [`publication`]: joins contracts and publication requests → evaluations.
//!
//! Business state that outlives one event (decided orders, awarded points,
//! evaluated requests) is pruned per key by event time ([`Retention`]), so
//! state stays bounded however long a customer or property lives.

use std::collections::BTreeMap;

use keyflow_schemas::events::*;
use keyflow_schemas::topics::{state_topic, TopicNames};

use crate::task::Rejected;

pub mod fulfillment;
pub mod loyalty;
pub mod payment;
pub mod publication;

/// How long, in event time, a worker remembers finished business facts of a
/// key (a decided order, an awarded payment, an evaluated request) so that a
/// late event about them (a cancellation, a void) is still handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub ms: i64,
}

impl Default for Retention {
    /// 30 days.
    fn default() -> Self {
        Self { ms: 30 * 24 * 3_600_000 }
    }
}

/// Drops entries whose event time is below `horizon`.
pub(crate) fn prune<V>(map: &mut BTreeMap<String, V>, at: impl Fn(&V) -> i64, horizon: i64) {
    map.retain(|_, v| at(v) >= horizon);
}

/// A required id field must not be empty (a contract violation otherwise).
pub(crate) fn require(field: &str, value: &str) -> Result<(), Rejected> {
    if value.trim().is_empty() {
        return Err(Rejected(format!("`{field}` is empty")));
    }
    Ok(())
}

/// A short deterministic id (the first 18 characters of a UUIDv5) for
/// business ids a worker mints, such as `payment_id` and `shipment_id`.
pub(crate) fn derived_id(worker: &str, subject: &str, what: &str) -> String {
    derived_event_id(worker, subject, what)[..18].to_string()
}

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

/// Builders shared by the workers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::task::{Decision, Input, Worker};

    pub fn meta(ty: &str, id: &str, at: i64, correlation: &str) -> EventMetadata {
        EventMetadata {
            event_id: id.into(),
            event_type: ty.into(),
            source: "test".into(),
            occurred_at: at,
            idempotency_key: format!("idem-{id}"),
            correlation_id: correlation.into(),
            causation_id: None,
        }
    }

    /// A valid EUR order of one line worth `total`, shipping to NL.
    pub fn order(customer: &str, order_id: &str, at: i64, total: i64) -> OrderPlaced {
        OrderPlaced {
            metadata: meta("OrderPlaced", &format!("{order_id}-placed"), at, order_id),
            order_id: order_id.into(),
            customer_id: customer.into(),
            items: vec![OrderItem { sku: "SKU".into(), quantity: 1, unit_price_minor: total }],
            total_minor: total,
            currency: "EUR".into(),
            shipping_address: ShippingAddress {
                country: "NL".into(),
                city: "Utrecht".into(),
                street: "Oudegracht".into(),
                number: "1".into(),
                postal_code: "3511".into(),
            },
            payment_method_token: "tok_visa_4242".into(),
        }
    }

    pub fn cancel(customer: &str, order_id: &str, at: i64) -> OrderCancelled {
        OrderCancelled {
            metadata: meta("OrderCancelled", &format!("{order_id}-cancelled"), at, order_id),
            order_id: order_id.into(),
            customer_id: customer.into(),
            reason: "changed my mind".into(),
        }
    }

    fn payment_meta(ty: &str, order_id: &str, at: i64) -> EventMetadata {
        let mut m = meta(ty, &format!("{order_id}-{ty}"), at, order_id);
        m.causation_id = Some(format!("{order_id}-placed"));
        m
    }

    pub fn authorized(customer: &str, order_id: &str, at: i64, amount: i64) -> PaymentAuthorized {
        PaymentAuthorized {
            metadata: payment_meta("PaymentAuthorized", order_id, at),
            order_id: order_id.into(),
            customer_id: customer.into(),
            payment_id: format!("pay-{order_id}"),
            amount_minor: amount,
            currency: "EUR".into(),
        }
    }

    pub fn declined(customer: &str, order_id: &str, at: i64) -> PaymentDeclined {
        PaymentDeclined {
            metadata: payment_meta("PaymentDeclined", order_id, at),
            order_id: order_id.into(),
            customer_id: customer.into(),
            reason: DeclineReason::CardDeclined,
            amount_minor: 100,
            currency: "EUR".into(),
        }
    }

    pub fn voided(customer: &str, order_id: &str, at: i64, amount: i64) -> PaymentVoided {
        PaymentVoided {
            metadata: payment_meta("PaymentVoided", order_id, at),
            order_id: order_id.into(),
            customer_id: customer.into(),
            payment_id: format!("pay-{order_id}"),
            amount_minor: amount,
            currency: "EUR".into(),
        }
    }

    /// `worker.handle` on one event.
    pub async fn apply<W: Worker>(w: &W, state: &mut W::State, event: AnyEvent) -> Result<Decision, Rejected> {
        let input = Input {
            topic: event.default_topic().into(),
            partition: 0,
            offset: 0,
            key: event.key().into(),
            event,
            traceparent: None,
        };
        w.handle(state, &input).await
    }

    /// The outputs of an applied decision (panics on anything else).
    pub fn ok(r: Result<Decision, Rejected>) -> Vec<AnyEvent> {
        match r {
            Ok(Decision::Emit(out)) => out,
            other => panic!("expected outputs, got {other:?}"),
        }
    }

    /// Applies events in turn and collects every output.
    pub async fn outputs<W: Worker>(w: &W, state: &mut W::State, events: Vec<AnyEvent>) -> Vec<AnyEvent> {
        let mut out = vec![];
        for e in events {
            if let Ok(Decision::Emit(o)) = apply(w, state, e).await {
                out.extend(o);
            }
        }
        out
    }
}
