//! A small test worker that proves the runtime before the business workers
//! exist: per customer it counts `OrderPlaced` events and emits one
//! `PointsAwarded` per order whose `balance` is the running count, so a
//! duplicate, a loss or a reordering shows up as a wrong balance. An order
//! with a negative total is a contract violation (→ DLQ).

use std::time::Duration;

use keyflow_schemas::events::*;
use serde::{Deserialize, Serialize};

use crate::task::{Decision, Input, Rejected, Worker};

/// The counter worker; `delay` simulates a slow dependency per input.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    pub delay: Duration,
}

/// Orders counted for one customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    pub count: i64,
}

impl Worker for Counter {
    type State = CounterState;

    fn name(&self) -> &'static str {
        "counter"
    }

    async fn handle(&self, state: &mut CounterState, input: &Input) -> Result<Decision, Rejected> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let AnyEvent::Order(OrderEvent::OrderPlaced(o)) = &input.event else { return Ok(Decision::Emit(vec![])) };
        if o.total_minor < 0 {
            return Err(Rejected(format!("order {} has a negative total {}", o.order_id, o.total_minor)));
        }
        state.count += 1;
        let out = PointsAwarded {
            metadata: derived_metadata(self.name(), &o.metadata, "PointsAwarded"),
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
            points: 1,
            balance: state.count,
        };
        Ok(vec![LoyaltyEvent::from(out).into()].into())
    }
}
