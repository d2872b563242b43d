//! The order load generator: `OrderPlaced` for many customers (key
//! `customer_id`) with a configurable mix of what the workers must handle,
//! plus `OrderCancelled` some events after its order and re-sent facts.

use std::collections::VecDeque;

use keyflow_schemas::defaults::{DECLINED_TOKEN_PREFIX, SPEND_LIMIT_MINOR, SUPPORTED_CURRENCIES};
use keyflow_schemas::events::*;
use rand::Rng;

use crate::gen::{ratio, Base, Generator, Planned};
use crate::schedule::Scheduler;

/// Source name in the metadata of generated orders.
pub const SOURCE: &str = "order-producer";

/// The mix of special cases, each a share of new orders (cancel and resend
/// are shares of all events).
#[derive(Debug, Clone, clap::Args)]
pub struct OrderMix {
    /// Customers (distinct keys).
    #[arg(long, default_value_t = 50_000)]
    pub customers: u32,
    /// Share of orders cancelled later by the customer.
    #[arg(long, default_value = "0.05", value_parser = ratio)]
    pub cancel_rate: f64,
    /// Share of orders whose total is not positive or not the sum of the items.
    #[arg(long, default_value = "0.02", value_parser = ratio)]
    pub invalid_amount_rate: f64,
    /// Share of orders in a currency the payment worker does not take.
    #[arg(long, default_value = "0.02", value_parser = ratio)]
    pub unsupported_currency_rate: f64,
    /// Share of orders paid with a token the gateway declines.
    #[arg(long, default_value = "0.03", value_parser = ratio)]
    pub declined_card_rate: f64,
    /// Share of orders from a few big spenders who run into the spend limit.
    #[arg(long, default_value = "0.03", value_parser = ratio)]
    pub spend_limit_rate: f64,
    /// Share of events re-sent as a producer that timed out would (same idempotency_key).
    #[arg(long, default_value = "0.02", value_parser = ratio)]
    pub resend_rate: f64,
}

impl Default for OrderMix {
    fn default() -> Self {
        Self {
            customers: 50_000,
            cancel_rate: 0.05,
            invalid_amount_rate: 0.02,
            unsupported_currency_rate: 0.02,
            declined_card_rate: 0.03,
            spend_limit_rate: 0.03,
            resend_rate: 0.02,
        }
    }
}

impl OrderMix {
    /// The shares of new orders must leave room for normal ones.
    pub fn validate(&self) -> Result<(), String> {
        let special =
            self.invalid_amount_rate + self.unsupported_currency_rate + self.declined_card_rate + self.spend_limit_rate;
        if special > 1.0 {
            return Err(format!(
                "--invalid-amount-rate + --unsupported-currency-rate + --declined-card-rate + --spend-limit-rate \
                 = {special:.3}, more than 1"
            ));
        }
        if self.customers == 0 {
            return Err("--customers must be at least 1".into());
        }
        Ok(())
    }
}

/// Big spenders: few keys, large orders, so their windowed total crosses the limit.
const WHALES: u32 = 5;
const COUNTRIES: &[(&str, &str)] =
    &[("NL", "Amsterdam"), ("DE", "Berlin"), ("FR", "Paris"), ("GB", "London"), ("US", "Boston"), ("ES", "Madrid")];
const SKUS: &[(&str, i64)] = &[
    ("SKU-KETTLE", 4_999),
    ("SKU-MUG", 1_250),
    ("SKU-TEAPOT", 3_499),
    ("SKU-BEANS-1KG", 2_199),
    ("SKU-GRINDER", 8_900),
    ("SKU-FILTERS", 499),
];
const UNSUPPORTED: &[&str] = &["JPY", "CHF", "SEK", "BRL"];

/// Generates the order stream.
pub struct OrderGen {
    base: Base,
    mix: OrderMix,
    later: Scheduler<OrderCancelled>,
    recent: VecDeque<OrderEvent>,
}

impl OrderGen {
    pub fn new(mix: OrderMix, seed: u64, start_ms: i64, step_ms: f64) -> Self {
        Self { base: Base::new(seed, start_ms, step_ms), mix, later: Scheduler::default(), recent: VecDeque::new() }
    }

    fn customer(&mut self, whale: bool) -> String {
        if whale {
            format!("whale-{:02}", self.base.rng.random_range(0..WHALES))
        } else {
            format!("customer-{:06}", self.base.rng.random_range(0..self.mix.customers))
        }
    }

    fn place(&mut self) -> (OrderPlaced, &'static str) {
        let category = self.base.category(
            &[
                ("invalid_amount", self.mix.invalid_amount_rate),
                ("unsupported_currency", self.mix.unsupported_currency_rate),
                ("declined_card", self.mix.declined_card_rate),
                ("spend_limit", self.mix.spend_limit_rate),
            ],
            "normal",
        );
        let whale = category == "spend_limit";
        let customer_id = self.customer(whale);
        let order_id = format!("order-{}", &self.base.uuid()[..18]);
        let lines = self.base.rng.random_range(1..=3);
        let mut items: Vec<OrderItem> = (0..lines)
            .map(|_| {
                let (sku, price) = *self.base.pick(SKUS);
                OrderItem { sku: sku.into(), quantity: self.base.rng.random_range(1..=2), unit_price_minor: price }
            })
            .collect();
        if whale {
            // A few of these within the hour cross the limit.
            items = vec![OrderItem {
                sku: "SKU-ESPRESSO-MACHINE-PRO".into(),
                quantity: 1,
                unit_price_minor: self.base.rng.random_range(SPEND_LIMIT_MINOR / 4..SPEND_LIMIT_MINOR / 2),
            }];
        }
        let sum: i64 = items.iter().map(|i| i64::from(i.quantity) * i.unit_price_minor).sum();
        let total_minor = match category {
            "invalid_amount" if self.base.chance(0.5) => -sum,
            "invalid_amount" => sum + self.base.rng.random_range(1..500),
            _ => sum,
        };
        let currency = if category == "unsupported_currency" {
            self.base.pick(UNSUPPORTED).to_string()
        } else {
            self.base.pick(SUPPORTED_CURRENCIES).to_string()
        };
        let token = if category == "declined_card" {
            format!("{DECLINED_TOKEN_PREFIX}_{}", self.base.rng.random_range(1000..9999))
        } else {
            format!("tok_visa_{}", self.base.rng.random_range(1000..9999))
        };
        let (country, city) = *self.base.pick(COUNTRIES);
        let shipping_address = ShippingAddress {
            country: country.into(),
            city: city.into(),
            street: format!("Main street {}", self.base.rng.random_range(1..200)),
            number: self.base.rng.random_range(1..300).to_string(),
            postal_code: format!("{:05}", self.base.rng.random_range(1000..99999)),
        };
        let metadata = self.base.meta("OrderPlaced", SOURCE, &order_id);
        let placed = OrderPlaced {
            metadata,
            order_id,
            customer_id,
            items,
            total_minor,
            currency,
            shipping_address,
            payment_method_token: token,
        };
        (placed, category)
    }

    fn remember(&mut self, e: &OrderEvent) {
        self.recent.push_back(e.clone());
        if self.recent.len() > 256 {
            self.recent.pop_front();
        }
    }
}

impl Generator for OrderGen {
    fn next_event(&mut self) -> Planned {
        let planned = if let Some(mut cancel) = self.later.pop_due(self.base.seq) {
            cancel.metadata.occurred_at = self.base.now_ms();
            let e = OrderEvent::from(cancel);
            self.remember(&e);
            Planned { event: e.into(), category: "cancel", duplicate: false }
        } else if !self.recent.is_empty() && self.base.chance(self.mix.resend_rate) {
            // A producer that timed out re-sends the fact: new event_id, same idempotency_key.
            let idx = self.base.rng.random_range(0..self.recent.len());
            let mut copy = self.recent[idx].clone();
            copy.metadata_mut().event_id = self.base.uuid();
            Planned { event: copy.into(), category: "resend", duplicate: true }
        } else {
            let (placed, category) = self.place();
            if self.base.chance(self.mix.cancel_rate) {
                let due = self.base.seq + self.base.rng.random_range(3..40);
                let metadata = self.base.meta("OrderCancelled", SOURCE, &placed.order_id);
                let reason = self.base.pick(&["changed my mind", "found it cheaper", "ordered twice"]).to_string();
                self.later.at(
                    due,
                    OrderCancelled {
                        metadata,
                        order_id: placed.order_id.clone(),
                        customer_id: placed.customer_id.clone(),
                        reason,
                    },
                );
            }
            let e = OrderEvent::from(placed);
            self.remember(&e);
            Planned { event: e.into(), category, duplicate: false }
        };
        self.base.seq += 1;
        planned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn take(g: &mut OrderGen, n: usize) -> Vec<Planned> {
        (0..n).map(|_| g.next_event()).collect()
    }

    #[test]
    fn same_seed_same_stream_ids_included_and_another_seed_differs() {
        let a = take(&mut OrderGen::new(OrderMix::default(), 7, 1_000, 10.0), 2_000);
        let b = take(&mut OrderGen::new(OrderMix::default(), 7, 1_000, 10.0), 2_000);
        let c = take(&mut OrderGen::new(OrderMix::default(), 8, 1_000, 10.0), 2_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn mix_ratios_hold_on_a_large_sample() {
        let n = 200_000;
        let events = take(&mut OrderGen::new(OrderMix::default(), 1, 0, 1.0), n);
        let mut by: HashMap<&str, usize> = HashMap::new();
        for p in &events {
            *by.entry(p.category).or_default() += 1;
        }
        let placed = events.iter().filter(|p| p.event.record_name() == "OrderPlaced" && !p.duplicate).count() as f64;
        let share = |c: &str| by.get(c).copied().unwrap_or(0) as f64 / placed;
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.1;
        let m = OrderMix::default();
        assert!(near(share("invalid_amount"), m.invalid_amount_rate), "{by:?}");
        assert!(near(share("unsupported_currency"), m.unsupported_currency_rate), "{by:?}");
        assert!(near(share("declined_card"), m.declined_card_rate), "{by:?}");
        assert!(near(share("spend_limit"), m.spend_limit_rate), "{by:?}");
        assert!(near(share("cancel"), m.cancel_rate), "{by:?}");
        assert!(near(by["resend"] as f64 / n as f64, m.resend_rate), "{by:?}");
    }

    #[test]
    fn every_cancel_follows_its_order_with_the_same_key() {
        let events = take(&mut OrderGen::new(OrderMix::default(), 3, 0, 1.0), 50_000);
        let mut placed: HashMap<String, (usize, String)> = HashMap::new();
        let mut cancels = 0;
        for (i, p) in events.iter().enumerate() {
            match &p.event {
                AnyEvent::Order(OrderEvent::OrderPlaced(o)) if !p.duplicate => {
                    placed.insert(o.order_id.clone(), (i, o.customer_id.clone()));
                }
                AnyEvent::Order(OrderEvent::OrderCancelled(c)) if !p.duplicate => {
                    let (at, key) = &placed[&c.order_id];
                    assert!(*at < i && key == &c.customer_id);
                    cancels += 1;
                }
                _ => {}
            }
        }
        assert!(cancels > 1_000);
    }

    #[test]
    fn resends_keep_the_idempotency_key_of_an_earlier_event() {
        let events = take(&mut OrderGen::new(OrderMix::default(), 5, 0, 1.0), 20_000);
        let mut keys = std::collections::HashSet::new();
        for p in &events {
            let m = p.event.metadata();
            if p.duplicate {
                assert!(keys.contains(&m.idempotency_key));
            } else {
                assert!(keys.insert(m.idempotency_key.clone()), "fresh facts have fresh keys");
            }
        }
    }

    #[test]
    fn special_cases_break_exactly_their_rule() {
        let events = take(&mut OrderGen::new(OrderMix::default(), 9, 0, 1.0), 20_000);
        for p in &events {
            let AnyEvent::Order(OrderEvent::OrderPlaced(o)) = &p.event else { continue };
            if p.duplicate {
                continue; // a re-sent copy keeps the category of its original, not "resend"'s rules
            }
            let sum: i64 = o.items.iter().map(|i| i64::from(i.quantity) * i.unit_price_minor).sum();
            let valid_amount = o.total_minor > 0 && o.total_minor == sum;
            assert_eq!(valid_amount, p.category != "invalid_amount", "{p:?}");
            assert_eq!(SUPPORTED_CURRENCIES.contains(&o.currency.as_str()), p.category != "unsupported_currency");
            assert_eq!(o.payment_method_token.starts_with(DECLINED_TOKEN_PREFIX), p.category == "declined_card");
        }
    }
}
