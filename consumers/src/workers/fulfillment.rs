//! The fulfillment worker (docs/domain.md): joins `orders` and `payments` per
//! customer into exactly one terminal outcome per order, the first of:
//! `PaymentDeclined` → `FulfillmentCancelled PAYMENT_DECLINED`;
//! `OrderCancelled` → `FulfillmentCancelled ORDER_CANCELLED`; both
//! `OrderPlaced` and `PaymentAuthorized` seen, in either arrival order →
//! `OrderFulfilled` from the warehouse that serves the shipping country.
//! Events about an order that already has its outcome change nothing.

use std::collections::BTreeMap;

use keyflow_schemas::events::*;
use serde::{Deserialize, Serialize};

use super::{derived_id, prune, require, Retention};
use crate::task::{Decision, Input, Rejected, Worker};

/// Warehouse per shipping country; anything else ships from [`FALLBACK_WAREHOUSE`].
pub const WAREHOUSES: &[(&str, &str)] = &[
    ("NL", "AMS-1"),
    ("BE", "AMS-1"),
    ("DE", "BER-1"),
    ("FR", "PAR-1"),
    ("ES", "MAD-1"),
    ("PT", "MAD-1"),
    ("GB", "LON-1"),
    ("IE", "LON-1"),
    ("US", "BOS-1"),
    ("CA", "BOS-1"),
];

/// The warehouse for countries not in [`WAREHOUSES`].
pub const FALLBACK_WAREHOUSE: &str = "INTL-1";

/// The warehouse that ships to `country` (deterministic).
pub fn warehouse(country: &str) -> &'static str {
    WAREHOUSES.iter().find(|(c, _)| c.eq_ignore_ascii_case(country)).map_or(FALLBACK_WAREHOUSE, |(_, w)| w)
}

/// The fulfillment worker's settings.
#[derive(Debug, Clone, Default)]
pub struct Fulfillment {
    /// How long (event time) orders are remembered after their first event.
    pub retention: Retention,
}

/// What is known of one order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderProgress {
    /// Event time of the first event seen for the order.
    pub at: i64,
    /// Shipping country, once `OrderPlaced` arrived.
    pub country: Option<String>,
    /// Whether `PaymentAuthorized` arrived.
    pub authorized: bool,
    /// Whether the order has its outcome.
    pub done: bool,
}

/// Per customer: the orders within the retention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillmentState {
    pub orders: BTreeMap<String, OrderProgress>,
    pub newest: i64,
}

impl Fulfillment {
    fn cancelled(
        &self,
        cause: &EventMetadata,
        order_id: &str,
        customer: &str,
        reason: FulfillmentCancelReason,
    ) -> AnyEvent {
        FulfillmentCancelled {
            metadata: derived_metadata(self.name(), cause, "FulfillmentCancelled"),
            order_id: order_id.into(),
            customer_id: customer.into(),
            reason,
        }
        .into()
    }

    fn fulfilled(&self, cause: &EventMetadata, order_id: &str, customer: &str, country: &str) -> AnyEvent {
        OrderFulfilled {
            metadata: derived_metadata(self.name(), cause, "OrderFulfilled"),
            order_id: order_id.into(),
            customer_id: customer.into(),
            shipment_id: format!("ship-{}", derived_id(self.name(), order_id, "shipment")),
            warehouse: warehouse(country).into(),
        }
        .into()
    }

    /// Applies one event of `order_id` (the rules above).
    fn step(
        &self,
        state: &mut FulfillmentState,
        meta: &EventMetadata,
        order_id: &str,
        customer: &str,
        e: Step<'_>,
    ) -> Decision {
        let at = meta.occurred_at;
        state.newest = state.newest.max(at);
        let o = state.orders.entry(order_id.to_string()).or_insert_with(|| OrderProgress { at, ..Default::default() });
        let out = if o.done {
            None
        } else {
            match e {
                Step::Declined => {
                    Some(self.cancelled(meta, order_id, customer, FulfillmentCancelReason::PaymentDeclined))
                }
                Step::Cancelled => {
                    Some(self.cancelled(meta, order_id, customer, FulfillmentCancelReason::OrderCancelled))
                }
                Step::Placed(country) => {
                    o.country = Some(country.to_string());
                    o.authorized.then(|| self.fulfilled(meta, order_id, customer, country))
                }
                Step::Authorized => {
                    o.authorized = true;
                    o.country.clone().map(|c| self.fulfilled(meta, order_id, customer, &c))
                }
                Step::Voided => None,
            }
        };
        if out.is_some() {
            o.done = true;
        }
        prune(&mut state.orders, |o| o.at, state.newest - self.retention.ms);
        Decision::Emit(out.into_iter().collect())
    }
}

/// The join's view of an input.
enum Step<'a> {
    Placed(&'a str),
    Cancelled,
    Authorized,
    Declined,
    Voided,
}

impl Worker for Fulfillment {
    type State = FulfillmentState;

    fn name(&self) -> &'static str {
        "fulfillment"
    }

    fn pending(&self, state: &FulfillmentState) -> usize {
        state.orders.values().filter(|o| !o.done).count()
    }

    async fn handle(&self, state: &mut FulfillmentState, input: &Input) -> Result<Decision, Rejected> {
        let (meta, order_id, customer, step) = match &input.event {
            AnyEvent::Order(OrderEvent::OrderPlaced(o)) => {
                (&o.metadata, &o.order_id, &o.customer_id, Step::Placed(&o.shipping_address.country))
            }
            AnyEvent::Order(OrderEvent::OrderCancelled(c)) => {
                (&c.metadata, &c.order_id, &c.customer_id, Step::Cancelled)
            }
            AnyEvent::Payment(PaymentEvent::PaymentAuthorized(p)) => {
                (&p.metadata, &p.order_id, &p.customer_id, Step::Authorized)
            }
            AnyEvent::Payment(PaymentEvent::PaymentDeclined(p)) => {
                (&p.metadata, &p.order_id, &p.customer_id, Step::Declined)
            }
            AnyEvent::Payment(PaymentEvent::PaymentVoided(p)) => {
                (&p.metadata, &p.order_id, &p.customer_id, Step::Voided)
            }
            other => return Err(Rejected(format!("the fulfillment worker does not take {}", other.record_name()))),
        };
        require("order_id", order_id)?;
        Ok(self.step(state, meta, order_id, customer, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::testing::{authorized, cancel, declined, order, outputs, voided};

    fn outcome(events: &[AnyEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                AnyEvent::Fulfillment(FulfillmentEvent::OrderFulfilled(f)) => {
                    format!("fulfilled {} {}", f.order_id, f.warehouse)
                }
                AnyEvent::Fulfillment(FulfillmentEvent::FulfillmentCancelled(c)) => {
                    format!("cancelled {} {:?}", c.order_id, c.reason)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    async fn run(events: Vec<AnyEvent>) -> Vec<String> {
        outcome(&outputs(&Fulfillment::default(), &mut FulfillmentState::default(), events).await)
    }

    #[tokio::test]
    async fn order_then_payment_ships_once_from_the_countrys_warehouse() {
        let got = run(vec![order("c", "o", 0, 100).into(), authorized("c", "o", 1, 100).into()]).await;
        assert_eq!(got, ["fulfilled o AMS-1"]);
    }

    #[tokio::test]
    async fn payment_then_order_ships_the_same_shipment() {
        let w = Fulfillment::default();
        let a = outputs(
            &w,
            &mut FulfillmentState::default(),
            vec![order("c", "o", 0, 100).into(), authorized("c", "o", 1, 100).into()],
        )
        .await;
        let b = outputs(
            &w,
            &mut FulfillmentState::default(),
            vec![authorized("c", "o", 1, 100).into(), order("c", "o", 0, 100).into()],
        )
        .await;
        let ship = |e: &AnyEvent| match e {
            AnyEvent::Fulfillment(FulfillmentEvent::OrderFulfilled(f)) => (f.shipment_id.clone(), f.warehouse.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(ship(&a[0]), ship(&b[0]), "shipment and warehouse do not depend on arrival order");
    }

    #[tokio::test]
    async fn a_declined_payment_cancels_in_either_arrival_order() {
        assert_eq!(
            run(vec![order("c", "o", 0, 100).into(), declined("c", "o", 1).into()]).await,
            ["cancelled o PaymentDeclined"]
        );
        assert_eq!(
            run(vec![declined("c", "o", 1).into(), order("c", "o", 0, 100).into()]).await,
            ["cancelled o PaymentDeclined"]
        );
    }

    #[tokio::test]
    async fn a_cancellation_before_the_payment_wins_and_the_late_payment_changes_nothing() {
        let got = run(vec![
            order("c", "o", 0, 100).into(),
            cancel("c", "o", 1).into(),
            authorized("c", "o", 2, 100).into(),
            voided("c", "o", 3, 100).into(),
        ])
        .await;
        assert_eq!(got, ["cancelled o OrderCancelled"]);
    }

    #[tokio::test]
    async fn a_cancellation_after_shipping_is_too_late() {
        let got = run(vec![
            order("c", "o", 0, 100).into(),
            authorized("c", "o", 1, 100).into(),
            cancel("c", "o", 2).into(),
            voided("c", "o", 3, 100).into(),
        ])
        .await;
        assert_eq!(got, ["fulfilled o AMS-1"]);
    }

    #[tokio::test]
    async fn a_cancellation_before_a_decline_wins_over_it() {
        let got =
            run(vec![order("c", "o", 0, 100).into(), cancel("c", "o", 1).into(), declined("c", "o", 2).into()]).await;
        assert_eq!(got, ["cancelled o OrderCancelled"]);
    }

    #[tokio::test]
    async fn a_decline_before_a_cancellation_wins_over_it() {
        let got =
            run(vec![order("c", "o", 0, 100).into(), declined("c", "o", 1).into(), cancel("c", "o", 2).into()]).await;
        assert_eq!(got, ["cancelled o PaymentDeclined"]);
    }

    #[tokio::test]
    async fn orders_of_one_customer_are_joined_independently() {
        let got = run(vec![
            order("c", "a", 0, 100).into(),
            order("c", "b", 1, 100).into(),
            authorized("c", "b", 2, 100).into(),
            declined("c", "a", 3).into(),
        ])
        .await;
        assert_eq!(got, ["fulfilled b AMS-1", "cancelled a PaymentDeclined"]);
    }

    #[tokio::test]
    async fn orders_waiting_for_their_other_half_are_pending() {
        let w = Fulfillment::default();
        let mut s = FulfillmentState::default();
        outputs(&w, &mut s, vec![order("c", "a", 0, 100).into(), authorized("c", "b", 0, 100).into()]).await;
        assert_eq!(w.pending(&s), 2);
        outputs(&w, &mut s, vec![authorized("c", "a", 1, 100).into()]).await;
        assert_eq!(w.pending(&s), 1);
    }

    #[tokio::test]
    async fn finished_orders_are_forgotten_after_the_retention() {
        let w = Fulfillment { retention: Retention { ms: 1_000 } };
        let mut s = FulfillmentState::default();
        outputs(&w, &mut s, vec![order("c", "a", 0, 100).into(), authorized("c", "a", 1, 100).into()]).await;
        outputs(&w, &mut s, vec![order("c", "b", 5_000, 100).into()]).await;
        assert_eq!(s.orders.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn warehouses_are_chosen_by_country_with_a_fallback() {
        assert_eq!(warehouse("DE"), "BER-1");
        assert_eq!(warehouse("us"), "BOS-1");
        assert_eq!(warehouse("JP"), FALLBACK_WAREHOUSE);
    }
}
