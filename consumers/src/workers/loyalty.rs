//! The loyalty worker (docs/domain.md): `PaymentAuthorized` → `PointsAwarded`,
//! `PaymentVoided` → `PointsRevoked` (the points that order earned).
//!
//! Points = `amount_minor / 100` × the tier multiplier, where the tier comes
//! from the customer's lifetime awarded points *before* this award (revokes do
//! not lower it): below 1,000 → ×1, below 10,000 → ×2, else ×3. `balance` is
//! awarded minus revoked. The tier makes order matter: a duplicate or a
//! reordering shows up as a wrong balance.

use std::collections::BTreeMap;

use keyflow_schemas::events::*;
use serde::{Deserialize, Serialize};

use super::{prune, require, Retention};
use crate::task::{Decision, Input, Rejected, Worker};

/// Lifetime points from which a tier applies, with its multiplier, highest first.
pub const TIERS: &[(i64, i64)] = &[(10_000, 3), (1_000, 2), (0, 1)];

/// The multiplier for a customer with `lifetime` awarded points.
pub fn multiplier(lifetime: i64) -> i64 {
    TIERS.iter().find(|(from, _)| lifetime >= *from).map_or(1, |(_, m)| *m)
}

/// Points earned by a payment of `amount_minor` at `lifetime` awarded points.
pub fn points(amount_minor: i64, lifetime: i64) -> i64 {
    amount_minor / 100 * multiplier(lifetime)
}

/// The loyalty worker's settings.
#[derive(Debug, Clone, Default)]
pub struct Loyalty {
    /// How long (event time) an award is remembered for a later void.
    pub retention: Retention,
}

/// Points one order earned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    pub at: i64,
    pub points: i64,
    pub revoked: bool,
}

/// Per customer: lifetime totals and the recent awards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoyaltyState {
    /// Points ever awarded (drives the tier).
    pub awarded: i64,
    /// Points ever revoked.
    pub revoked: i64,
    /// Awards by order, within the retention.
    pub orders: BTreeMap<String, Award>,
    pub newest: i64,
}

impl LoyaltyState {
    /// Awarded minus revoked.
    pub fn balance(&self) -> i64 {
        self.awarded - self.revoked
    }
}

impl Loyalty {
    fn award(&self, s: &mut LoyaltyState, p: &PaymentAuthorized) -> Result<Decision, Rejected> {
        if p.amount_minor <= 0 {
            return Err(Rejected(format!(
                "PaymentAuthorized {} has a non-positive amount {}",
                p.order_id, p.amount_minor
            )));
        }
        if s.orders.contains_key(&p.order_id) {
            return Ok(Decision::Ignore("order_already_awarded"));
        }
        let at = p.metadata.occurred_at;
        let earned = points(p.amount_minor, s.awarded);
        s.awarded += earned;
        s.orders.insert(p.order_id.clone(), Award { at, points: earned, revoked: false });
        s.newest = s.newest.max(at);
        prune(&mut s.orders, |a| a.at, s.newest - self.retention.ms);
        let out = PointsAwarded {
            metadata: derived_metadata(self.name(), &p.metadata, "PointsAwarded"),
            order_id: p.order_id.clone(),
            customer_id: p.customer_id.clone(),
            points: earned,
            balance: s.balance(),
        };
        Ok(Decision::Emit(vec![out.into()]))
    }

    fn revoke(&self, s: &mut LoyaltyState, v: &PaymentVoided) -> Decision {
        let Some(a) = s.orders.get_mut(&v.order_id) else { return Decision::Ignore("unknown_award") };
        if a.revoked {
            return Decision::Emit(vec![]);
        }
        a.revoked = true;
        let taken = a.points;
        s.revoked += taken;
        let out = PointsRevoked {
            metadata: derived_metadata(self.name(), &v.metadata, "PointsRevoked"),
            order_id: v.order_id.clone(),
            customer_id: v.customer_id.clone(),
            points: taken,
            balance: s.balance(),
        };
        Decision::Emit(vec![out.into()])
    }
}

impl Worker for Loyalty {
    type State = LoyaltyState;

    fn name(&self) -> &'static str {
        "loyalty"
    }

    async fn handle(&self, state: &mut LoyaltyState, input: &Input) -> Result<Decision, Rejected> {
        match &input.event {
            AnyEvent::Payment(PaymentEvent::PaymentAuthorized(p)) => {
                require("order_id", &p.order_id)?;
                self.award(state, p)
            }
            AnyEvent::Payment(PaymentEvent::PaymentVoided(v)) => {
                require("order_id", &v.order_id)?;
                Ok(self.revoke(state, v))
            }
            AnyEvent::Payment(PaymentEvent::PaymentDeclined(_)) => Ok(Decision::Emit(vec![])),
            other => Err(Rejected(format!("the loyalty worker does not take {}", other.record_name()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::testing::{apply, authorized, declined, outputs, voided};

    /// (kind, order, points, balance) of each output.
    fn ledger(events: &[AnyEvent]) -> Vec<(&'static str, String, i64, i64)> {
        events
            .iter()
            .map(|e| match e {
                AnyEvent::Loyalty(LoyaltyEvent::PointsAwarded(p)) => {
                    ("awarded", p.order_id.clone(), p.points, p.balance)
                }
                AnyEvent::Loyalty(LoyaltyEvent::PointsRevoked(p)) => {
                    ("revoked", p.order_id.clone(), p.points, p.balance)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn tiers_start_at_1000_and_10000_lifetime_points() {
        assert_eq!([multiplier(0), multiplier(999), multiplier(1_000)], [1, 1, 2]);
        assert_eq!([multiplier(9_999), multiplier(10_000), multiplier(1_000_000)], [2, 3, 3]);
        assert_eq!(points(12_345, 0), 123, "integer division of minor units by 100");
        assert_eq!(points(99, 50_000), 0);
    }

    #[tokio::test]
    async fn the_tier_changes_across_awards_and_uses_the_total_before_each() {
        let w = Loyalty::default();
        let mut s = LoyaltyState::default();
        let out = outputs(
            &w,
            &mut s,
            vec![
                authorized("c", "a", 0, 99_900).into(),  // 999 points at ×1 → lifetime 999
                authorized("c", "b", 1, 10_000).into(),  // still ×1 (999 before): 100 → 1,099
                authorized("c", "c", 2, 450_000).into(), // ×2: 9,000 → 10,099
                authorized("c", "d", 3, 10_000).into(),  // ×3: 300 → 10,399
            ],
        )
        .await;
        assert_eq!(
            ledger(&out),
            [
                ("awarded", "a".into(), 999, 999),
                ("awarded", "b".into(), 100, 1_099),
                ("awarded", "c".into(), 9_000, 10_099),
                ("awarded", "d".into(), 300, 10_399)
            ]
        );
    }

    #[tokio::test]
    async fn a_void_revokes_what_that_order_earned_and_does_not_lower_the_tier() {
        let w = Loyalty::default();
        let mut s = LoyaltyState::default();
        let out = outputs(
            &w,
            &mut s,
            vec![
                authorized("c", "a", 0, 100_000).into(), // 1,000 at ×1
                authorized("c", "b", 1, 10_000).into(),  // ×2: 200
                voided("c", "a", 2, 100_000).into(),     // −1,000, balance 200
                authorized("c", "d", 3, 10_000).into(),  // lifetime still 1,200 → ×2: 200
            ],
        )
        .await;
        assert_eq!(
            ledger(&out),
            [
                ("awarded", "a".into(), 1_000, 1_000),
                ("awarded", "b".into(), 200, 1_200),
                ("revoked", "a".into(), 1_000, 200),
                ("awarded", "d".into(), 200, 400)
            ]
        );
    }

    #[tokio::test]
    async fn an_order_is_revoked_once_and_declines_earn_nothing() {
        let w = Loyalty::default();
        let mut s = LoyaltyState::default();
        let mut second_void = voided("c", "a", 3, 5_000);
        second_void.metadata.event_id = "another".into();
        let out = outputs(
            &w,
            &mut s,
            vec![
                declined("c", "x", 0).into(),
                authorized("c", "a", 1, 5_000).into(),
                voided("c", "a", 2, 5_000).into(),
                second_void.into(),
            ],
        )
        .await;
        assert_eq!(ledger(&out), [("awarded", "a".into(), 50, 50), ("revoked", "a".into(), 50, 0)]);
    }

    #[tokio::test]
    async fn reordering_changes_the_balances() {
        let w = Loyalty::default();
        let events = |first: bool| -> Vec<AnyEvent> {
            let (x, y) = (authorized("c", "x", 0, 100_000), authorized("c", "y", 1, 100_000));
            if first {
                vec![x.into(), y.into()]
            } else {
                vec![y.into(), x.into()]
            }
        };
        let a = outputs(&w, &mut LoyaltyState::default(), events(true)).await;
        let b = outputs(&w, &mut LoyaltyState::default(), events(false)).await;
        assert_eq!(ledger(&a)[1], ("awarded", "y".into(), 2_000, 3_000));
        assert_eq!(ledger(&b)[1], ("awarded", "x".into(), 2_000, 3_000));
        assert_ne!(ledger(&a), ledger(&b), "the tier makes one key's order visible");
    }

    #[tokio::test]
    async fn a_void_without_an_award_and_a_second_authorization_are_ignored() {
        let w = Loyalty::default();
        let mut s = LoyaltyState::default();
        assert_eq!(apply(&w, &mut s, voided("c", "z", 0, 100).into()).await, Ok(Decision::Ignore("unknown_award")));
        apply(&w, &mut s, authorized("c", "a", 1, 5_000).into()).await.unwrap();
        let mut again = authorized("c", "a", 2, 5_000);
        again.metadata.event_id = "another".into();
        assert_eq!(apply(&w, &mut s, again.into()).await, Ok(Decision::Ignore("order_already_awarded")));
    }

    #[tokio::test]
    async fn a_non_positive_authorized_amount_breaks_the_contract() {
        let w = Loyalty::default();
        assert!(apply(&w, &mut LoyaltyState::default(), authorized("c", "a", 0, 0).into()).await.is_err());
    }
}
