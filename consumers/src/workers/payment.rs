//! The payment worker (docs/domain.md): decides every `OrderPlaced` after a
//! (simulated) gateway call and voids authorized orders that are cancelled.
//!
//! Rules, first match wins: a total that is not positive or not the sum of
//! the items → `INVALID_AMOUNT`; a currency outside the configured set →
//! `UNSUPPORTED_CURRENCY`; a `tok_declined…` token → `CARD_DECLINED`; the
//! customer's authorized total over the event-time window (`occurred_at` − 1 h,
//! `occurred_at`] plus this order above the limit → `SPEND_LIMIT_EXCEEDED`;
//! otherwise `PaymentAuthorized`. Decisions depend only on the input stream.

use std::collections::BTreeMap;
use std::time::Duration;

use keyflow_schemas::defaults::{DECLINED_TOKEN_PREFIX, SPEND_LIMIT_MINOR, SPEND_WINDOW_MS, SUPPORTED_CURRENCIES};
use keyflow_schemas::events::*;
use serde::{Deserialize, Serialize};

use super::{derived_id, prune, require, Retention};
use crate::task::{Decision, Input, Rejected, Worker};

/// The payment worker's settings.
#[derive(Debug, Clone)]
pub struct Payment {
    /// Currencies the gateway accepts.
    pub currencies: Vec<String>,
    /// Largest authorized total per customer within `window_ms` (minor units).
    pub spend_limit_minor: i64,
    /// Width of the spend window in event time.
    pub window_ms: i64,
    /// Simulated gateway latency per order.
    pub gateway_latency: Duration,
    /// How long (event time) decided orders are remembered for cancellations.
    pub retention: Retention,
}

impl Default for Payment {
    fn default() -> Self {
        Self {
            currencies: SUPPORTED_CURRENCIES.iter().map(|c| c.to_string()).collect(),
            spend_limit_minor: SPEND_LIMIT_MINOR,
            window_ms: SPEND_WINDOW_MS,
            gateway_latency: Duration::ZERO,
            retention: Retention::default(),
        }
    }
}

/// One decided order of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The order's event time.
    pub at: i64,
    pub amount_minor: i64,
    pub currency: String,
    /// Set when the order was authorized.
    pub payment_id: Option<String>,
    pub voided: bool,
}

/// Per customer: the orders decided within the retention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub orders: BTreeMap<String, Decided>,
    /// Newest order event time seen (drives pruning).
    pub newest: i64,
}

impl Payment {
    /// Why `o` is declined, if it is (rules 1–4, in order).
    pub fn decline_reason(&self, state: &PaymentState, o: &OrderPlaced) -> Option<DeclineReason> {
        let sum = o.items.iter().try_fold(0i64, |acc, i| {
            i64::from(i.quantity).checked_mul(i.unit_price_minor).and_then(|line| acc.checked_add(line))
        });
        if o.total_minor <= 0 || sum != Some(o.total_minor) {
            return Some(DeclineReason::InvalidAmount);
        }
        if !self.currencies.iter().any(|c| c == &o.currency) {
            return Some(DeclineReason::UnsupportedCurrency);
        }
        if o.payment_method_token.starts_with(DECLINED_TOKEN_PREFIX) {
            return Some(DeclineReason::CardDeclined);
        }
        let t = o.metadata.occurred_at;
        let in_window: i64 = state
            .orders
            .values()
            .filter(|d| d.payment_id.is_some() && d.at > t - self.window_ms && d.at <= t)
            .map(|d| d.amount_minor)
            .sum();
        if in_window.saturating_add(o.total_minor) > self.spend_limit_minor {
            return Some(DeclineReason::SpendLimitExceeded);
        }
        None
    }

    fn place(&self, state: &mut PaymentState, o: &OrderPlaced) -> Decision {
        if state.orders.contains_key(&o.order_id) {
            return Decision::Ignore("order_already_decided");
        }
        let at = o.metadata.occurred_at;
        let reason = self.decline_reason(state, o);
        let event: PaymentEvent = match reason {
            Some(reason) => PaymentDeclined {
                metadata: derived_metadata(self.name(), &o.metadata, "PaymentDeclined"),
                order_id: o.order_id.clone(),
                customer_id: o.customer_id.clone(),
                reason,
                amount_minor: o.total_minor,
                currency: o.currency.clone(),
            }
            .into(),
            None => PaymentAuthorized {
                metadata: derived_metadata(self.name(), &o.metadata, "PaymentAuthorized"),
                order_id: o.order_id.clone(),
                customer_id: o.customer_id.clone(),
                payment_id: format!("pay-{}", derived_id(self.name(), &o.order_id, "payment")),
                amount_minor: o.total_minor,
                currency: o.currency.clone(),
            }
            .into(),
        };
        let payment_id = match &event {
            PaymentEvent::PaymentAuthorized(a) => Some(a.payment_id.clone()),
            _ => None,
        };
        state.orders.insert(
            o.order_id.clone(),
            Decided { at, amount_minor: o.total_minor, currency: o.currency.clone(), payment_id, voided: false },
        );
        state.newest = state.newest.max(at);
        // Decided orders older than the retention are forgotten, but never
        // one the spend window of the newest order could still count.
        let horizon = state.newest - self.retention.ms.max(self.window_ms);
        prune(&mut state.orders, |d| d.at, horizon);
        Decision::Emit(vec![event.into()])
    }

    fn cancel(&self, state: &mut PaymentState, c: &OrderCancelled) -> Decision {
        let Some(d) = state.orders.get_mut(&c.order_id) else { return Decision::Ignore("unknown_order") };
        let Some(payment_id) = d.payment_id.clone().filter(|_| !d.voided) else { return Decision::Emit(vec![]) };
        d.voided = true;
        let void = PaymentVoided {
            metadata: derived_metadata(self.name(), &c.metadata, "PaymentVoided"),
            order_id: c.order_id.clone(),
            customer_id: c.customer_id.clone(),
            payment_id,
            amount_minor: d.amount_minor,
            currency: d.currency.clone(),
        };
        Decision::Emit(vec![PaymentEvent::from(void).into()])
    }
}

impl Worker for Payment {
    type State = PaymentState;

    fn name(&self) -> &'static str {
        "payment"
    }

    async fn handle(&self, state: &mut PaymentState, input: &Input) -> Result<Decision, Rejected> {
        match &input.event {
            AnyEvent::Order(OrderEvent::OrderPlaced(o)) => {
                require("order_id", &o.order_id)?;
                if !self.gateway_latency.is_zero() {
                    tokio::time::sleep(self.gateway_latency).await;
                }
                Ok(self.place(state, o))
            }
            AnyEvent::Order(OrderEvent::OrderCancelled(c)) => {
                require("order_id", &c.order_id)?;
                Ok(self.cancel(state, c))
            }
            other => Err(Rejected(format!("the payment worker does not take {}", other.record_name()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::testing::{apply, cancel, ok, order, outputs};

    fn decision(events: &[AnyEvent]) -> String {
        match events {
            [AnyEvent::Payment(PaymentEvent::PaymentAuthorized(_))] => "authorized".into(),
            [AnyEvent::Payment(PaymentEvent::PaymentDeclined(d))] => format!("{:?}", d.reason),
            other => format!("{other:?}"),
        }
    }

    async fn decide(w: &Payment, s: &mut PaymentState, o: OrderPlaced) -> String {
        decision(&ok(apply(w, s, o.into()).await))
    }

    #[tokio::test]
    async fn a_valid_order_is_authorized_for_its_total_with_a_deterministic_payment_id() {
        let w = Payment::default();
        let mut s = PaymentState::default();
        let o = order("c1", "o1", 0, 2_500);
        let out = ok(apply(&w, &mut s, o.clone().into()).await);
        let [AnyEvent::Payment(PaymentEvent::PaymentAuthorized(a))] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((a.amount_minor, a.currency.as_str(), a.order_id.as_str()), (2_500, "EUR", "o1"));
        assert_eq!(a.metadata.event_id, derived_event_id("payment", &o.metadata.event_id, "PaymentAuthorized"));
        assert_eq!(a.metadata.causation_id.as_deref(), Some(o.metadata.event_id.as_str()));
        let again = ok(apply(&w, &mut PaymentState::default(), o.into()).await);
        assert_eq!(out, again, "the same input gives the same output");
    }

    #[tokio::test]
    async fn amounts_that_are_not_positive_or_not_the_sum_of_the_items_are_invalid() {
        let w = Payment::default();
        let mut s = PaymentState::default();
        let mut zero = order("c1", "o1", 0, 0);
        zero.items.clear();
        assert_eq!(decide(&w, &mut s, zero).await, "InvalidAmount");
        let mut negative = order("c1", "o2", 0, 2_500);
        negative.total_minor = -2_500;
        assert_eq!(decide(&w, &mut s, negative).await, "InvalidAmount");
        let mut mismatch = order("c1", "o3", 0, 2_500);
        mismatch.total_minor = 2_501;
        assert_eq!(decide(&w, &mut s, mismatch).await, "InvalidAmount");
        let mut overflow = order("c1", "o4", 0, 2_500);
        overflow.items[0].unit_price_minor = i64::MAX;
        overflow.items[0].quantity = 2;
        assert_eq!(decide(&w, &mut s, overflow).await, "InvalidAmount");
    }

    #[tokio::test]
    async fn an_invalid_amount_wins_over_the_other_reasons() {
        let w = Payment::default();
        let mut o = order("c1", "o1", 0, 2_500);
        o.total_minor = 1;
        o.currency = "JPY".into();
        o.payment_method_token = "tok_declined_1".into();
        assert_eq!(decide(&w, &mut PaymentState::default(), o).await, "InvalidAmount");
    }

    #[tokio::test]
    async fn unsupported_currencies_come_before_declined_cards() {
        let w = Payment::default();
        let mut o = order("c1", "o1", 0, 2_500);
        o.currency = "CHF".into();
        o.payment_method_token = "tok_declined_1".into();
        assert_eq!(decide(&w, &mut PaymentState::default(), o).await, "UnsupportedCurrency");
        let custom = Payment { currencies: vec!["CHF".into()], ..Payment::default() };
        let mut chf = order("c1", "o2", 0, 2_500);
        chf.currency = "CHF".into();
        assert_eq!(decide(&custom, &mut PaymentState::default(), chf).await, "authorized");
    }

    #[tokio::test]
    async fn declined_tokens_are_declined() {
        let w = Payment::default();
        let mut o = order("c1", "o1", 0, 2_500);
        o.payment_method_token = "tok_declined_4000".into();
        assert_eq!(decide(&w, &mut PaymentState::default(), o).await, "CardDeclined");
    }

    #[tokio::test]
    async fn the_spend_window_is_half_open_in_event_time() {
        let hour = SPEND_WINDOW_MS;
        let w = Payment { spend_limit_minor: 1_000, ..Payment::default() };
        let mut s = PaymentState::default();
        assert_eq!(decide(&w, &mut s, order("c", "a", 10_000, 600)).await, "authorized");
        // Exactly one hour later the first order has left the window (open at the left)…
        assert_eq!(decide(&w, &mut s, order("c", "b", 10_000 + hour, 600)).await, "authorized");
        // …one millisecond earlier it was still in it (and b is not yet: its time is later).
        let mut s2 = PaymentState::default();
        decide(&w, &mut s2, order("c", "a", 10_000, 600)).await;
        assert_eq!(decide(&w, &mut s2, order("c", "b", 10_000 + hour - 1, 600)).await, "SpendLimitExceeded");
        // An order at the same instant is inside the window (closed at the right).
        let mut s3 = PaymentState::default();
        decide(&w, &mut s3, order("c", "a", 10_000, 600)).await;
        assert_eq!(decide(&w, &mut s3, order("c", "b", 10_000, 400)).await, "authorized", "600 + 400 = limit");
        assert_eq!(decide(&w, &mut s3, order("c", "c", 10_000, 1)).await, "SpendLimitExceeded");
    }

    #[tokio::test]
    async fn only_authorized_orders_count_and_a_void_does_not_give_the_amount_back() {
        let w = Payment { spend_limit_minor: 1_000, ..Payment::default() };
        let mut s = PaymentState::default();
        let mut declined = order("c", "d", 0, 900);
        declined.payment_method_token = "tok_declined_1".into();
        assert_eq!(decide(&w, &mut s, declined).await, "CardDeclined");
        assert_eq!(decide(&w, &mut s, order("c", "a", 1, 900)).await, "authorized", "a declined order is not spent");
        let voided = ok(apply(&w, &mut s, cancel("c", "a", 2).into()).await);
        assert!(matches!(voided.as_slice(), [AnyEvent::Payment(PaymentEvent::PaymentVoided(_))]));
        assert_eq!(decide(&w, &mut s, order("c", "b", 3, 200)).await, "SpendLimitExceeded");
    }

    #[tokio::test]
    async fn an_order_later_in_event_time_is_not_counted_for_an_earlier_one() {
        let w = Payment { spend_limit_minor: 1_000, ..Payment::default() };
        let mut s = PaymentState::default();
        decide(&w, &mut s, order("c", "late", 50_000, 900)).await;
        assert_eq!(decide(&w, &mut s, order("c", "early", 40_000, 900)).await, "authorized");
    }

    #[tokio::test]
    async fn a_cancelled_authorized_order_is_voided_once_with_its_payment() {
        let w = Payment::default();
        let mut s = PaymentState::default();
        let auth = ok(apply(&w, &mut s, order("c", "o", 0, 2_500).into()).await);
        let AnyEvent::Payment(PaymentEvent::PaymentAuthorized(a)) = &auth[0] else { panic!() };
        let out = ok(apply(&w, &mut s, cancel("c", "o", 5).into()).await);
        let [AnyEvent::Payment(PaymentEvent::PaymentVoided(v))] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((&v.payment_id, v.amount_minor), (&a.payment_id, 2_500));
        // A second, different cancellation of the same order voids nothing more.
        let mut again = cancel("c", "o", 6);
        again.metadata.event_id = "other".into();
        assert!(ok(apply(&w, &mut s, again.into()).await).is_empty());
    }

    #[tokio::test]
    async fn cancelling_a_declined_or_unknown_order_emits_nothing() {
        let w = Payment::default();
        let mut s = PaymentState::default();
        let mut o = order("c", "o", 0, 2_500);
        o.currency = "JPY".into();
        apply(&w, &mut s, o.into()).await.unwrap();
        assert!(ok(apply(&w, &mut s, cancel("c", "o", 1).into()).await).is_empty());
        assert_eq!(apply(&w, &mut s, cancel("c", "nope", 2).into()).await, Ok(Decision::Ignore("unknown_order")));
    }

    #[tokio::test]
    async fn a_second_order_placed_with_the_same_order_id_is_ignored() {
        let w = Payment::default();
        let mut s = PaymentState::default();
        apply(&w, &mut s, order("c", "o", 0, 2_500).into()).await.unwrap();
        let mut other = order("c", "o", 1, 100);
        other.metadata.event_id = "another-fact".into();
        assert_eq!(apply(&w, &mut s, other.into()).await, Ok(Decision::Ignore("order_already_decided")));
    }

    #[tokio::test]
    async fn decided_orders_are_forgotten_after_the_retention_but_not_inside_the_window() {
        let w = Payment { retention: Retention { ms: 10 }, ..Payment::default() };
        let mut s = PaymentState::default();
        apply(&w, &mut s, order("c", "old", 0, 100).into()).await.unwrap();
        apply(&w, &mut s, order("c", "new", SPEND_WINDOW_MS, 100).into()).await.unwrap();
        assert_eq!(s.orders.len(), 2, "the window (1 h) bounds the retention from below");
        apply(&w, &mut s, order("c", "newer", SPEND_WINDOW_MS + 1, 100).into()).await.unwrap();
        assert!(!s.orders.contains_key("old"));
        assert_eq!(outputs(&w, &mut s, vec![cancel("c", "old", SPEND_WINDOW_MS + 2).into()]).await, vec![]);
    }

    #[tokio::test]
    async fn an_order_without_an_id_breaks_the_contract() {
        let w = Payment::default();
        let o = order("c", "", 0, 2_500);
        assert!(apply(&w, &mut PaymentState::default(), o.into()).await.is_err());
    }
}
