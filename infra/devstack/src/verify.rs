//! `devstack verify`: checks docs/domain.md's invariants over the topics of any
//! cluster (the embedded broker or real Kafka), counting by distinct
//! `event_id` and reporting raw copies separately.
//!
//! The payment decisions and loyalty balances are recomputed from the input
//! streams by an oracle written here, independently of the workers' code, so
//! a worker bug and a runtime bug (a loss, a second decision, a reordering)
//! both show up. The joins (fulfillment, publication) depend on the order in
//! which their two inputs arrived, which the topics do not record, so their
//! outcomes are checked for being exactly one and consistent with the inputs.
//!
//! Memory: topics of one family are co-partitioned, so the verifier works
//! one partition at a time, streaming each topic of the family through a
//! bounded channel and keeping compact per-key and per-order state; what it
//! holds is bounded by one partition's keys and orders, not by the records.
//!
//! Per-key order (invariant 7) uses the `cause.*` headers every worker
//! output carries: per key, outputs caused by inputs of one topic must
//! appear in the order of those inputs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use keyflow_schemas::client::KafkaArgs;
use keyflow_schemas::events::*;
use keyflow_schemas::headers;
use keyflow_schemas::kafka::list_topics;
use keyflow_schemas::rules::RuleArgs;
use keyflow_schemas::topics::{dlq_topic, TopicNames};
use keyflow_schemas::Codec;
use serde::Serialize;

use crate::inspect::{stream_partition, RawRecord};

/// The invariants, numbered as in docs/domain.md.
pub const INVARIANTS: [&str; 7] = [
    "every OrderPlaced has exactly one payment decision, equal to the rules",
    "every OrderPlaced has exactly one fulfillment outcome, consistent with its inputs",
    "every OrderCancelled of an authorized order has exactly one PaymentVoided",
    "every PaymentAuthorized/PaymentVoided has exactly one loyalty event with replayed balances",
    "every request has at most one evaluation; exactly one once decidable",
    "no two different records share an event_id; no cause has two outputs of one kind",
    "per key, outputs appear in the order of their causes",
];

/// Violations listed in a report (all are counted).
const MAX_LISTED: usize = 200;

/// What to check and how.
#[derive(Debug, Clone)]
pub struct Settings {
    pub names: TopicNames,
    pub rules: RuleArgs,
    /// Count latency only for causes with a record timestamp from here on
    /// (ms since the epoch), e.g. to leave a warm-up out.
    pub latency_from_ms: Option<i64>,
}

/// One broken invariant, where it shows.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: u8,
    pub key: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub message: String,
}

/// How often an invariant was checked and broken.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantCount {
    pub id: u8,
    pub name: &'static str,
    pub checked: u64,
    pub violations: u64,
}

/// Latency of one hop, from record timestamps (producer create time).
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub hop: String,
    pub count: u64,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

/// The verifier's findings.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No violation.
    pub ok: bool,
    pub invariants: Vec<InvariantCount>,
    pub violation_count: u64,
    /// The first violations (at most 200).
    pub violations: Vec<Violation>,
    /// Distinct events per record type.
    pub events: BTreeMap<String, u64>,
    /// Outputs per rule branch (`payment: PaymentDeclined SPEND_LIMIT_EXCEEDED`,
    /// `loyalty: PointsAwarded x2`…), to see which rules a run exercised.
    pub branches: BTreeMap<String, u64>,
    /// Byte-identical copies of an earlier record (same `event_id`), per topic.
    pub raw_copies: BTreeMap<String, u64>,
    pub raw_copies_total: u64,
    /// Input facts re-sent with an `idempotency_key` already seen.
    pub resent_facts: u64,
    pub stale_contract_updates: u64,
    /// Requests that wait for a contract (none, or a draft).
    pub pending_requests: u64,
    /// Records per DLQ topic.
    pub dlq: BTreeMap<String, u64>,
    /// Records that do not decode, per topic (inputs: poison, which the DLQs hold).
    pub undecodable: BTreeMap<String, u64>,
    pub latency: Vec<Latency>,
    pub records_read: u64,
    pub elapsed_ms: u64,
    /// Topics that do not exist on the cluster (their checks are skipped).
    pub missing_topics: Vec<String>,
}

impl Report {
    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("{:<3}{:<92}{:>10}{:>11}\n", "#", "invariant", "checked", "violations"));
        for i in &self.invariants {
            s.push_str(&format!("{:<3}{:<92}{:>10}{:>11}\n", i.id, i.name, i.checked, i.violations));
        }
        let join = |m: &BTreeMap<String, u64>| {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            }
        };
        s.push_str(&format!("\nevents (distinct): {}\n", join(&self.events)));
        s.push_str("rule branches:\n");
        for (b, n) in &self.branches {
            s.push_str(&format!("  {b:<64}{n:>10}\n"));
        }
        s.push_str(&format!("raw copies: {} ({})\n", self.raw_copies_total, join(&self.raw_copies)));
        s.push_str(&format!(
            "re-sent facts: {}, stale contract updates: {}, requests pending a contract: {}\n",
            self.resent_facts, self.stale_contract_updates, self.pending_requests
        ));
        s.push_str(&format!("dlq: {}\n", join(&self.dlq)));
        if !self.undecodable.is_empty() {
            s.push_str(&format!("undecodable records: {}\n", join(&self.undecodable)));
        }
        if !self.missing_topics.is_empty() {
            s.push_str(&format!("missing topics (skipped): {}\n", self.missing_topics.join(", ")));
        }
        if !self.latency.is_empty() {
            s.push_str(&format!(
                "\n{:<44}{:>10}{:>10}{:>10}{:>10}\n",
                "latency (record timestamps)", "count", "p50 ms", "p99 ms", "max ms"
            ));
            for l in &self.latency {
                s.push_str(&format!("{:<44}{:>10}{:>10}{:>10}{:>10}\n", l.hop, l.count, l.p50_ms, l.p99_ms, l.max_ms));
            }
        }
        for v in &self.violations {
            s.push_str(&format!(
                "VIOLATION {} key={} {}[{}]@{}: {}\n",
                v.invariant, v.key, v.topic, v.partition, v.offset, v.message
            ));
        }
        if self.violation_count as usize > self.violations.len() {
            s.push_str(&format!("… and {} more violations\n", self.violation_count as usize - self.violations.len()));
        }
        s.push_str(&format!(
            "\nverify: {} — {} records read in {} ms, {} violations\n",
            if self.ok { "OK" } else { "FAILED" },
            self.records_read,
            self.elapsed_ms,
            self.violation_count
        ));
        s
    }
}

/// Everything found so far.
struct Tally {
    invariants: Vec<InvariantCount>,
    violations: Vec<Violation>,
    violation_count: u64,
    events: BTreeMap<String, u64>,
    branches: BTreeMap<String, u64>,
    raw_copies: BTreeMap<String, u64>,
    resent: u64,
    stale: u64,
    pending: u64,
    undecodable: BTreeMap<String, u64>,
    latency: BTreeMap<String, Vec<u32>>,
    latency_from: Option<i64>,
    records: u64,
}

impl Tally {
    fn new(latency_from: Option<i64>) -> Self {
        Tally {
            latency_from,
            invariants: INVARIANTS
                .iter()
                .enumerate()
                .map(|(i, name)| InvariantCount { id: i as u8 + 1, name, checked: 0, violations: 0 })
                .collect(),
            violations: vec![],
            violation_count: 0,
            events: BTreeMap::new(),
            branches: BTreeMap::new(),
            raw_copies: BTreeMap::new(),
            resent: 0,
            stale: 0,
            pending: 0,
            undecodable: BTreeMap::new(),
            latency: BTreeMap::new(),
            records: 0,
        }
    }

    fn checked(&mut self, inv: u8) {
        self.invariants[inv as usize - 1].checked += 1;
    }

    /// Checks `ok` for invariant `inv`; records a violation at `at` when false.
    fn expect(&mut self, inv: u8, ok: bool, at: &At<'_>, message: impl FnOnce() -> String) {
        self.checked(inv);
        if !ok {
            self.fail(inv, at, message());
        }
    }

    fn fail(&mut self, inv: u8, at: &At<'_>, message: String) {
        self.invariants[inv as usize - 1].violations += 1;
        self.violation_count += 1;
        if self.violations.len() < MAX_LISTED {
            self.violations.push(Violation {
                invariant: inv,
                key: at.key.to_string(),
                topic: at.topic.to_string(),
                partition: at.partition,
                offset: at.offset,
                message,
            });
        }
    }

    fn branch(&mut self, name: String) {
        *self.branches.entry(name).or_default() += 1;
    }

    fn hop(&mut self, name: &str, from: Option<i64>, to: i64) {
        if let Some(from) = from.filter(|f| self.latency_from.is_none_or(|l| *f >= l)) {
            self.latency.entry(name.to_string()).or_default().push((to - from).clamp(0, u32::MAX as i64) as u32);
        }
    }
}

/// Where a finding shows.
struct At<'a> {
    key: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
}

/// One distinct record as the checks see it.
struct Rec<E> {
    offset: i64,
    ts: i64,
    key: String,
    event: E,
    /// The input that caused it (`cause.*` headers), as (topic, offset).
    cause: Option<(String, i64)>,
}

fn payload_hash(p: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

/// Shared read context.
struct Ctx<'a> {
    kafka: &'a KafkaArgs,
    codec: &'a Codec,
    existing: &'a BTreeMap<String, i32>,
    /// Inputs a worker sent to its DLQ: (worker, topic, partition, offset).
    dlq: &'a HashSet<(String, String, i32, i64)>,
    settings: &'a Settings,
}

/// One partition being read in the background (`None`: the topic does not exist).
type Stream = Option<tokio::sync::mpsc::Receiver<anyhow::Result<Vec<RawRecord>>>>;

impl Ctx<'_> {
    /// Starts reading partition `p` of each of `topics` at once, so their
    /// connection and first fetch overlap; each is then consumed in turn.
    fn open<const N: usize>(&self, topics: [&str; N], p: i32) -> anyhow::Result<[Stream; N]> {
        let mut out = Vec::with_capacity(N);
        for topic in topics {
            out.push(if self.existing.contains_key(topic) {
                Some(stream_partition(self.kafka, topic, p)?)
            } else {
                None
            });
        }
        out.try_into().map_err(|_| anyhow::anyhow!("one stream per topic"))
    }

    fn dlq(&self, worker: &str, topic: &str, p: i32, offset: i64) -> bool {
        self.dlq.contains(&(worker.to_string(), topic.to_string(), p, offset))
    }

    /// Reads one partition of `topic`, calling `f` on every first occurrence
    /// of an `event_id`. Copies are counted (and must be byte-identical:
    /// invariant 6); undecodable records are counted and, on an output
    /// topic, break invariant `output_inv`. Returns the input timestamps by
    /// offset, for latency.
    async fn read<E: TopicEvent>(
        &self,
        t: &mut Tally,
        ids: &mut HashMap<String, u64>,
        (topic, stream): (&str, Stream),
        p: i32,
        output_inv: Option<u8>,
        mut f: impl FnMut(&mut Tally, Rec<E>),
    ) -> anyhow::Result<Timestamps> {
        let mut stamps = Timestamps::default();
        let Some(mut rx) = stream else { return Ok(stamps) };
        while let Some(batch) = rx.recv().await {
            for r in batch? {
                t.records += 1;
                let ts = r.timestamp.unwrap_or(0);
                stamps.push(r.offset, ts);
                let key = r.key_text();
                let at = At { key: &key, topic, partition: p, offset: r.offset };
                let event: E = match self.codec.decode(topic, r.payload.as_deref()).await {
                    Ok(e) => e,
                    Err(e) => {
                        *t.undecodable.entry(topic.to_string()).or_default() += 1;
                        if let Some(inv) = output_inv {
                            t.fail(inv, &at, format!("output does not decode: {e}"));
                        }
                        continue;
                    }
                };
                let id = event.metadata().event_id.clone();
                let hash = payload_hash(r.payload.as_deref().unwrap_or_default());
                t.checked(6);
                if let Some(prev) = ids.get(&id) {
                    if *prev == hash {
                        *t.raw_copies.entry(topic.to_string()).or_default() += 1;
                    } else {
                        t.fail(6, &at, format!("event_id {id} is shared by two different records"));
                    }
                    continue;
                }
                ids.insert(id, hash);
                *t.events.entry(event.record_name().to_string()).or_default() += 1;
                let cause = cause_of(&r);
                f(t, Rec { offset: r.offset, ts, key, event, cause });
            }
        }
        Ok(stamps)
    }
}

fn cause_of(r: &RawRecord) -> Option<(String, i64)> {
    match r.header(headers::CAUSE) {
        Some(value) => headers::parse_cause(&value).map(|(topic, _, offset)| (topic.to_string(), offset)),
        None => Some((r.header(headers::LEGACY_CAUSE_TOPIC)?, r.header(headers::LEGACY_CAUSE_OFFSET)?.parse().ok()?)),
    }
}

/// Record timestamps of one input partition, by offset.
#[derive(Default)]
struct Timestamps {
    low: Option<i64>,
    ts: Vec<i64>,
}

impl Timestamps {
    fn push(&mut self, offset: i64, ts: i64) {
        let low = *self.low.get_or_insert(offset);
        let i = (offset - low) as usize;
        if self.ts.len() <= i {
            self.ts.resize(i + 1, i64::MIN);
        }
        self.ts[i] = ts;
    }

    fn at(&self, offset: i64) -> Option<i64> {
        let i = usize::try_from(offset - self.low?).ok()?;
        self.ts.get(i).copied().filter(|t| *t != i64::MIN)
    }
}

/// Invariant 7: per key and cause topic, cause offsets never go back.
#[derive(Default)]
struct OrderCheck {
    last: HashMap<(String, String), i64>,
}

impl OrderCheck {
    fn check<E>(&mut self, t: &mut Tally, topic: &str, p: i32, r: &Rec<E>) {
        let Some((cause_topic, cause)) = &r.cause else { return };
        let at = At { key: &r.key, topic, partition: p, offset: r.offset };
        let last = self.last.entry((r.key.clone(), cause_topic.clone())).or_insert(i64::MIN);
        let prev = *last;
        t.expect(7, *cause >= prev, &at, || {
            format!("caused by {cause_topic}@{cause}, after an output caused by {cause_topic}@{prev}")
        });
        *last = (*last).max(*cause);
    }
}

/// A payment decision as the rules make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Authorized,
    Declined(DeclineReason),
}

/// One order of the `orders` stream and what it caused.
#[derive(Default)]
struct Order {
    customer: String,
    placed: Option<Placed>,
    /// The first applied `OrderCancelled`: (event_id, offset).
    cancel: Option<(String, i64)>,
    /// A void is owed (authorized, then cancelled).
    void_expected: bool,
    decisions: u32,
    authorized_seen: bool,
    declined_seen: bool,
    voids: u32,
    outcomes: u32,
    /// Record timestamp of the payment decision.
    payment_ts: Option<i64>,
}

struct Placed {
    event_id: String,
    offset: i64,
    ts: i64,
    expected: Decision,
    amount: i64,
    /// The payment worker DLQ'd it (no decision owed).
    payment_dlq: bool,
    /// The fulfillment worker DLQ'd it (no outcome owed).
    fulfillment_dlq: bool,
}

/// The payment oracle's view of one customer.
#[derive(Default)]
struct Payer {
    idempotency_keys: HashSet<String>,
    /// Authorized orders: (event time, amount).
    authorized: Vec<(i64, i64)>,
}

fn oracle_decision(rules: &RuleArgs, payer: &Payer, o: &OrderPlaced) -> Decision {
    let mut sum: Option<i64> = Some(0);
    for i in &o.items {
        sum = sum.and_then(|s| s.checked_add(i64::from(i.quantity).checked_mul(i.unit_price_minor)?));
    }
    if o.total_minor <= 0 || sum != Some(o.total_minor) {
        return Decision::Declined(DeclineReason::InvalidAmount);
    }
    if !rules.currencies.contains(&o.currency) {
        return Decision::Declined(DeclineReason::UnsupportedCurrency);
    }
    if o.payment_method_token.starts_with(keyflow_schemas::defaults::DECLINED_TOKEN_PREFIX) {
        return Decision::Declined(DeclineReason::CardDeclined);
    }
    let t = o.metadata.occurred_at;
    let window = rules.window_ms();
    let spent: i64 = payer.authorized.iter().filter(|(at, _)| *at > t - window && *at <= t).map(|(_, a)| a).sum();
    if spent.saturating_add(o.total_minor) > rules.spend_limit_minor {
        return Decision::Declined(DeclineReason::SpendLimitExceeded);
    }
    Decision::Authorized
}

/// The loyalty oracle's view of one customer.
#[derive(Default)]
struct Member {
    awarded: i64,
    revoked: i64,
    /// Points per awarded order, and whether they were revoked.
    orders: HashMap<String, (i64, bool)>,
}

fn tier_multiplier(lifetime: i64) -> i64 {
    if lifetime < 1_000 {
        1
    } else if lifetime < 10_000 {
        2
    } else {
        3
    }
}

/// A loyalty event owed for a payment event.
struct LoyaltyOwed {
    awarded: bool,
    order_id: String,
    points: i64,
    /// Tier multiplier of an award.
    multiplier: i64,
    balance: i64,
    seen: u32,
    key: String,
    offset: i64,
}

async fn order_family(ctx: &Ctx<'_>, t: &mut Tally, p: i32) -> anyhow::Result<()> {
    let n = &ctx.settings.names;
    let (orders_t, payments_t) = (n.get(OrderEvent::DEFAULT_TOPIC), n.get(PaymentEvent::DEFAULT_TOPIC));
    let (fulfillments_t, loyalty_t) = (n.get(FulfillmentEvent::DEFAULT_TOPIC), n.get(LoyaltyEvent::DEFAULT_TOPIC));
    let mut ids = HashMap::new();
    let mut orders: HashMap<String, Order> = HashMap::new();
    let mut payers: HashMap<String, Payer> = HashMap::new();
    let rules = &ctx.settings.rules;
    let [s_orders, s_payments, s_fulfillments, s_loyalty] =
        ctx.open([orders_t.as_str(), &payments_t, &fulfillments_t, &loyalty_t], p)?;

    // 1. orders: recompute every payment decision and which voids are owed.
    let order_ts = ctx
        .read::<OrderEvent>(t, &mut ids, (&orders_t, s_orders), p, None, |t, r| {
            let payer = payers.entry(r.key.clone()).or_default();
            if !payer.idempotency_keys.insert(r.event.metadata().idempotency_key.clone()) {
                t.resent += 1;
                return;
            }
            match &r.event {
                OrderEvent::OrderPlaced(o) => {
                    if orders.get(&o.order_id).is_some_and(|x| x.placed.is_some()) {
                        return; // the same order placed twice: the worker ignores it
                    }
                    let payment_dlq = ctx.dlq("payment", &orders_t, p, r.offset);
                    let expected = oracle_decision(rules, payer, o);
                    if expected == Decision::Authorized && !payment_dlq {
                        payer.authorized.push((o.metadata.occurred_at, o.total_minor));
                    }
                    let entry = orders.entry(o.order_id.clone()).or_default();
                    entry.customer = o.customer_id.clone();
                    entry.placed = Some(Placed {
                        event_id: o.metadata.event_id.clone(),
                        offset: r.offset,
                        ts: r.ts,
                        expected,
                        amount: o.total_minor,
                        payment_dlq,
                        fulfillment_dlq: ctx.dlq("fulfillment", &orders_t, p, r.offset),
                    });
                }
                OrderEvent::OrderCancelled(c) => {
                    let Some(o) = orders.get_mut(&c.order_id) else { return };
                    if o.cancel.is_none() {
                        o.cancel = Some((c.metadata.event_id.clone(), r.offset));
                        let authorized =
                            o.placed.as_ref().is_some_and(|pl| pl.expected == Decision::Authorized && !pl.payment_dlq);
                        o.void_expected = authorized && !ctx.dlq("payment", &orders_t, p, r.offset);
                    }
                }
            }
        })
        .await?;

    // 2. payments: each decision once and as recomputed; voids owed; replay loyalty.
    let mut members: HashMap<String, Member> = HashMap::new();
    let mut owed: HashMap<String, LoyaltyOwed> = HashMap::new();
    let mut order_check = OrderCheck::default();
    let payment_ts = ctx
        .read::<PaymentEvent>(t, &mut ids, (&payments_t, s_payments), p, Some(1), |t, r| {
            let at = At { key: &r.key, topic: &payments_t, partition: p, offset: r.offset };
            order_check.check(t, &payments_t, p, &r);
            let (order_id, decision) = match &r.event {
                PaymentEvent::PaymentAuthorized(a) => (&a.order_id, Some(Decision::Authorized)),
                PaymentEvent::PaymentDeclined(d) => (&d.order_id, Some(Decision::Declined(d.reason))),
                PaymentEvent::PaymentVoided(v) => (&v.order_id, None),
            };
            let Some(o) = orders.get_mut(order_id.as_str()) else {
                let inv = if decision.is_some() { 1 } else { 3 };
                return t.fail(
                    inv,
                    &at,
                    format!("{} for order {order_id}, which is not on {orders_t}", r.event.record_name()),
                );
            };
            t.hop(&format!("{orders_t} → {payments_t}"), r.cause.as_ref().and_then(|(_, off)| order_ts.at(*off)), r.ts);
            t.branch(match &r.event {
                PaymentEvent::PaymentDeclined(d) => format!("payment: PaymentDeclined {}", enum_name(d.reason)),
                other => format!("payment: {}", other.record_name()),
            });
            let cause = r.event.metadata().causation_id.clone().unwrap_or_default();
            match decision {
                Some(d) => {
                    o.decisions += 1;
                    if o.decisions > 1 {
                        return t.fail(6, &at, format!("a second payment decision for order {order_id}"));
                    }
                    o.payment_ts = Some(r.ts);
                    let Some(pl) = &o.placed else {
                        return t.fail(1, &at, format!("a decision for order {order_id}, which was never placed"));
                    };
                    t.expect(1, d == pl.expected, &at, || {
                        format!("order {order_id}: {d:?}, the rules say {:?}", pl.expected)
                    });
                    t.expect(1, cause == pl.event_id, &at, || {
                        format!("order {order_id}: caused by {cause}, not its OrderPlaced {}", pl.event_id)
                    });
                    match d {
                        Decision::Authorized => o.authorized_seen = true,
                        Decision::Declined(_) => o.declined_seen = true,
                    }
                    if let PaymentEvent::PaymentAuthorized(a) = &r.event {
                        t.expect(1, a.amount_minor == pl.amount, &at, || {
                            format!("authorized {} of {}", a.amount_minor, pl.amount)
                        });
                    }
                }
                None => {
                    o.voids += 1;
                    if o.voids > 1 {
                        return t.fail(6, &at, format!("a second PaymentVoided for order {order_id}"));
                    }
                    t.expect(3, o.void_expected, &at, || {
                        format!("order {order_id} was voided but not authorized and cancelled")
                    });
                    let want = o.cancel.as_ref().map(|c| c.0.as_str()).unwrap_or("");
                    t.expect(3, cause == want, &at, || {
                        format!("void of {order_id} caused by {cause}, not its OrderCancelled")
                    });
                }
            }
            // Replay loyalty in the order the loyalty worker reads payments.
            if ctx.dlq("loyalty", &payments_t, p, r.offset) {
                return;
            }
            let m = members.entry(r.key.clone()).or_default();
            let (awarded, points, multiplier) = match &r.event {
                PaymentEvent::PaymentAuthorized(a) if !m.orders.contains_key(&a.order_id) => {
                    let multiplier = tier_multiplier(m.awarded);
                    let points = a.amount_minor / 100 * multiplier;
                    m.awarded += points;
                    m.orders.insert(a.order_id.clone(), (points, false));
                    (true, points, multiplier)
                }
                PaymentEvent::PaymentVoided(v) => match m.orders.get_mut(&v.order_id) {
                    Some((points, revoked @ false)) => {
                        *revoked = true;
                        m.revoked += *points;
                        (false, *points, 0)
                    }
                    _ => return,
                },
                _ => return,
            };
            owed.insert(
                r.event.metadata().event_id.clone(),
                LoyaltyOwed {
                    awarded,
                    order_id: order_id.clone(),
                    points,
                    multiplier,
                    balance: m.awarded - m.revoked,
                    seen: 0,
                    key: r.key.clone(),
                    offset: r.offset,
                },
            );
        })
        .await?;

    // 3. fulfillments: one outcome per order, consistent with what it joined.
    let mut order_check = OrderCheck::default();
    ctx.read::<FulfillmentEvent>(t, &mut ids, (&fulfillments_t, s_fulfillments), p, Some(2), |t, r| {
        let at = At { key: &r.key, topic: &fulfillments_t, partition: p, offset: r.offset };
        order_check.check(t, &fulfillments_t, p, &r);
        if let Some((topic, off)) = &r.cause {
            let from = if *topic == orders_t { order_ts.at(*off) } else { payment_ts.at(*off) };
            t.hop(&format!("{topic} → {fulfillments_t}"), from, r.ts);
        }
        let order_id = match &r.event {
            FulfillmentEvent::OrderFulfilled(f) => &f.order_id,
            FulfillmentEvent::FulfillmentCancelled(c) => &c.order_id,
        };
        t.branch(match &r.event {
            FulfillmentEvent::FulfillmentCancelled(c) => {
                format!("fulfillment: FulfillmentCancelled {}", enum_name(c.reason))
            }
            other => format!("fulfillment: {}", other.record_name()),
        });
        let Some(o) = orders.get_mut(order_id.as_str()) else {
            return t.fail(2, &at, format!("an outcome for order {order_id}, which is not on {orders_t}"));
        };
        o.outcomes += 1;
        if o.outcomes > 1 {
            return t.fail(6, &at, format!("a second fulfillment outcome for order {order_id}"));
        }
        let consistent = match &r.event {
            FulfillmentEvent::OrderFulfilled(_) => o.placed.is_some() && o.authorized_seen,
            FulfillmentEvent::FulfillmentCancelled(c) => match c.reason {
                FulfillmentCancelReason::PaymentDeclined => o.declined_seen,
                FulfillmentCancelReason::OrderCancelled => o.cancel.is_some(),
            },
        };
        t.expect(2, consistent, &at, || format!("{:?} for order {order_id} does not follow from its inputs", r.event));
    })
    .await?;

    // 4. loyalty: each owed event once, with the replayed points and balance.
    let mut order_check = OrderCheck::default();
    ctx.read::<LoyaltyEvent>(t, &mut ids, (&loyalty_t, s_loyalty), p, Some(4), |t, r| {
        let at = At { key: &r.key, topic: &loyalty_t, partition: p, offset: r.offset };
        order_check.check(t, &loyalty_t, p, &r);
        t.hop(&format!("{payments_t} → {loyalty_t}"), r.cause.as_ref().and_then(|(_, off)| payment_ts.at(*off)), r.ts);
        let cause = r.event.metadata().causation_id.clone().unwrap_or_default();
        let Some(w) = owed.get_mut(&cause) else {
            return t.fail(4, &at, format!("{} caused by {cause}, which owes no loyalty event", r.event.record_name()));
        };
        w.seen += 1;
        if w.seen > 1 {
            return t.fail(6, &at, format!("a second loyalty event for payment event {cause}"));
        }
        let (awarded, points, balance, order_id) = match &r.event {
            LoyaltyEvent::PointsAwarded(a) => (true, a.points, a.balance, &a.order_id),
            LoyaltyEvent::PointsRevoked(v) => (false, v.points, v.balance, &v.order_id),
        };
        t.expect(4, (awarded, points, balance, order_id) == (w.awarded, w.points, w.balance, &w.order_id), &at, || {
            format!(
                "order {order_id}: {} {points} points, balance {balance}; the replay says {} {} points, balance {}",
                if awarded { "awarded" } else { "revoked" },
                if w.awarded { "awarded" } else { "revoked" },
                w.points,
                w.balance
            )
        });
        t.branch(match &r.event {
            LoyaltyEvent::PointsAwarded(_) => format!("loyalty: PointsAwarded x{}", w.multiplier),
            other => format!("loyalty: {}", other.record_name()),
        });
        if awarded {
            if let Some(pl) = orders.get(order_id.as_str()).and_then(|o| o.placed.as_ref()) {
                t.hop("OrderPlaced → PointsAwarded", Some(pl.ts), r.ts);
            }
        }
    })
    .await?;

    // 5. What is owed and never came.
    for (order_id, o) in &orders {
        let Some(pl) = &o.placed else { continue };
        let at = At { key: &o.customer, topic: &orders_t, partition: p, offset: pl.offset };
        if !pl.payment_dlq {
            t.expect(1, o.decisions > 0, &at, || format!("order {order_id} has no payment decision"));
        }
        if !pl.fulfillment_dlq {
            t.expect(2, o.outcomes > 0, &at, || format!("order {order_id} has no fulfillment outcome"));
        }
        if o.void_expected {
            let off = o.cancel.as_ref().map_or(pl.offset, |c| c.1);
            let at = At { offset: off, ..at };
            t.expect(3, o.voids > 0, &at, || format!("cancelled authorized order {order_id} was never voided"));
        }
    }
    for (cause, w) in &owed {
        let at = At { key: &w.key, topic: &payments_t, partition: p, offset: w.offset };
        t.expect(4, w.seen > 0, &at, || format!("payment event {cause} (order {}) has no loyalty event", w.order_id));
    }
    Ok(())
}

/// One property's contract history as the publication worker applies it.
#[derive(Default)]
struct Property {
    idempotency_keys: HashSet<String>,
    held: Option<i64>,
    statuses: BTreeSet<u8>,
    last: Option<ContractStatus>,
}

fn status_code(s: ContractStatus) -> u8 {
    s as u8
}

struct Request {
    property: String,
    event_id: String,
    offset: i64,
    /// Moderation reasons (empty: the content passes).
    reasons: Vec<String>,
    evaluations: u32,
}

fn moderation(rules: &RuleArgs, r: &PublicationApprovalRequested) -> Vec<String> {
    let description = r.description.to_lowercase();
    let mut out: Vec<String> = rules
        .moderated_terms
        .iter()
        .filter(|t| description.contains(&t.to_lowercase()))
        .map(|t| format!("MODERATED_DESCRIPTION: {t}"))
        .collect();
    out.extend(
        r.images
            .iter()
            .filter(|i| rules.moderated_image_patterns.iter().any(|p| i.to_lowercase().contains(&p.to_lowercase())))
            .map(|i| format!("MODERATED_IMAGE: {i}")),
    );
    out
}

/// The Avro symbol of an enum value (`SPEND_LIMIT_EXCEEDED`).
fn enum_name(v: impl Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn contract_reason(s: ContractStatus) -> String {
    format!("CONTRACT_{}", enum_name(s))
}

async fn property_family(ctx: &Ctx<'_>, t: &mut Tally, p: i32) -> anyhow::Result<()> {
    let n = &ctx.settings.names;
    let (contracts_t, properties_t) = (n.get(ContractEvent::DEFAULT_TOPIC), n.get(PropertyEvent::DEFAULT_TOPIC));
    let evaluations_t = n.get(EvaluationEvent::DEFAULT_TOPIC);
    let mut ids = HashMap::new();
    let mut props: HashMap<String, Property> = HashMap::new();
    let [s_contracts, s_properties, s_evaluations] =
        ctx.open([contracts_t.as_str(), &properties_t, &evaluations_t], p)?;
    let contract_ts = ctx
        .read::<ContractEvent>(t, &mut ids, (&contracts_t, s_contracts), p, None, |t, r| {
            let ContractEvent::ContractStatusChanged(c) = &r.event;
            let prop = props.entry(r.key.clone()).or_default();
            if !prop.idempotency_keys.insert(c.metadata.idempotency_key.clone()) {
                t.resent += 1;
                return;
            }
            if ctx.dlq("publication", &contracts_t, p, r.offset) {
                return;
            }
            if prop.held.is_some_and(|h| c.contract_last_modified_on < h) {
                t.stale += 1;
                t.branch("publication: stale contract update ignored".into());
                return;
            }
            prop.held = Some(c.contract_last_modified_on);
            prop.statuses.insert(status_code(c.contract_status));
            prop.last = Some(c.contract_status);
        })
        .await?;
    let mut requests: HashMap<String, Request> = HashMap::new();
    let rules = &ctx.settings.rules;
    let request_ts = ctx
        .read::<PropertyEvent>(t, &mut ids, (&properties_t, s_properties), p, None, |t, r| {
            let PropertyEvent::PublicationApprovalRequested(q) = &r.event;
            let prop = props.entry(r.key.clone()).or_default();
            if !prop.idempotency_keys.insert(q.metadata.idempotency_key.clone()) {
                t.resent += 1;
                return;
            }
            if requests.contains_key(&q.request_id) || ctx.dlq("publication", &properties_t, p, r.offset) {
                return;
            }
            requests.insert(
                q.request_id.clone(),
                Request {
                    property: r.key.clone(),
                    event_id: q.metadata.event_id.clone(),
                    offset: r.offset,
                    reasons: moderation(rules, q),
                    evaluations: 0,
                },
            );
        })
        .await?;
    let mut order_check = OrderCheck::default();
    ctx.read::<EvaluationEvent>(t, &mut ids, (&evaluations_t, s_evaluations), p, Some(5), |t, r| {
        let EvaluationEvent::PublicationEvaluationCompleted(e) = &r.event;
        let at = At { key: &r.key, topic: &evaluations_t, partition: p, offset: r.offset };
        order_check.check(t, &evaluations_t, p, &r);
        if let Some((topic, off)) = &r.cause {
            let from = if *topic == contracts_t { contract_ts.at(*off) } else { request_ts.at(*off) };
            t.hop(&format!("{topic} → {evaluations_t}"), from, r.ts);
        }
        t.branch(match (e.evaluation_result, e.reasons.first()) {
            (EvaluationResult::Approved, _) => "publication: APPROVED".to_string(),
            (EvaluationResult::Declined, Some(reason)) => {
                format!("publication: DECLINED {}", reason.split(':').next().unwrap_or(reason))
            }
            (EvaluationResult::Declined, None) => "publication: DECLINED".to_string(),
        });
        let Some(q) = requests.get_mut(&e.request_id) else {
            return t.fail(
                5,
                &at,
                format!("an evaluation of request {}, which is not on {properties_t}", e.request_id),
            );
        };
        q.evaluations += 1;
        if q.evaluations > 1 {
            return t.fail(6, &at, format!("a second evaluation of request {}", e.request_id));
        }
        let cause = e.metadata.causation_id.as_deref().unwrap_or("");
        t.expect(5, cause == q.event_id, &at, || {
            format!("evaluation of {} caused by {cause}, not its request", e.request_id)
        });
        let prop = props.get(&q.property);
        let had = |s: ContractStatus| prop.is_some_and(|p| p.statuses.contains(&status_code(s)));
        let consistent = if !q.reasons.is_empty() {
            e.evaluation_result == EvaluationResult::Declined && e.reasons == q.reasons
        } else {
            match (e.evaluation_result, e.reasons.as_slice()) {
                (EvaluationResult::Approved, []) => had(ContractStatus::Approved),
                (EvaluationResult::Declined, [reason]) => {
                    [ContractStatus::Cancelled, ContractStatus::Closed, ContractStatus::Expired]
                        .into_iter()
                        .any(|s| had(s) && *reason == contract_reason(s))
                }
                _ => false,
            }
        };
        t.expect(5, consistent, &at, || {
            format!(
                "request {}: {:?} {:?} does not follow from its content (moderation: {:?}) and contract history",
                e.request_id, e.evaluation_result, e.reasons, q.reasons
            )
        });
    })
    .await?;
    for (id, q) in &requests {
        let at = At { key: &q.property, topic: &properties_t, partition: p, offset: q.offset };
        let decidable = !q.reasons.is_empty()
            || props.get(&q.property).and_then(|p| p.last).is_some_and(|s| s != ContractStatus::Draft);
        if decidable {
            t.expect(5, q.evaluations > 0, &at, || format!("request {id} was never evaluated"));
        } else if q.evaluations == 0 {
            t.pending += 1;
            t.branch("publication: pending (no approved or ended contract)".into());
        }
    }
    Ok(())
}

/// Every input a worker sent to its DLQ, and the DLQ sizes.
async fn read_dlqs(
    kafka: &KafkaArgs,
    names: &TopicNames,
    existing: &BTreeMap<String, i32>,
    t: &mut Tally,
) -> anyhow::Result<(HashSet<(String, String, i32, i64)>, BTreeMap<String, u64>)> {
    let mut set = HashSet::new();
    let mut sizes = BTreeMap::new();
    for worker in ["payment", "fulfillment", "loyalty", "publication"] {
        let topic = names.get(&dlq_topic(worker));
        let Some(&partitions) = existing.get(&topic) else { continue };
        let mut count = 0;
        for p in 0..partitions {
            let mut rx = stream_partition(kafka, &topic, p)?;
            while let Some(batch) = rx.recv().await {
                for r in batch? {
                    t.records += 1;
                    count += 1;
                    let source = (
                        r.header(headers::SOURCE_TOPIC),
                        r.header(headers::SOURCE_PARTITION),
                        r.header(headers::SOURCE_OFFSET),
                    );
                    if let (Some(st), Some(sp), Some(so)) = source {
                        if let (Ok(sp), Ok(so)) = (sp.parse(), so.parse()) {
                            set.insert((worker.to_string(), st, sp, so));
                        }
                    }
                }
            }
        }
        sizes.insert(topic, count);
    }
    Ok((set, sizes))
}

fn quantile(sorted: &[u32], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    i64::from(sorted[i])
}

/// Checks every invariant; `progress` is told about each partition done.
pub async fn verify(
    kafka: &KafkaArgs,
    codec: &Codec,
    settings: &Settings,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    settings.rules.validate().map_err(anyhow::Error::msg)?;
    let existing = list_topics(kafka, Duration::from_secs(15))?;
    let n = &settings.names;
    let mut t = Tally::new(settings.latency_from_ms);
    let (dlq, dlq_sizes) = read_dlqs(kafka, n, &existing, &mut t).await?;
    let ctx = Ctx { kafka, codec, existing: &existing, dlq: &dlq, settings };
    let families: [(&str, Vec<String>); 2] = [
        (
            "order",
            [
                OrderEvent::DEFAULT_TOPIC,
                PaymentEvent::DEFAULT_TOPIC,
                FulfillmentEvent::DEFAULT_TOPIC,
                LoyaltyEvent::DEFAULT_TOPIC,
            ]
            .map(|d| n.get(d))
            .to_vec(),
        ),
        (
            "property",
            [ContractEvent::DEFAULT_TOPIC, PropertyEvent::DEFAULT_TOPIC, EvaluationEvent::DEFAULT_TOPIC]
                .map(|d| n.get(d))
                .to_vec(),
        ),
    ];
    let mut missing = vec![];
    for (family, topics) in &families {
        let counts: Vec<(String, i32)> =
            topics.iter().filter_map(|tp| existing.get(tp).map(|c| (tp.clone(), *c))).collect();
        missing.extend(topics.iter().filter(|tp| !existing.contains_key(*tp)).cloned());
        let Some(partitions) = counts.first().map(|c| c.1) else { continue };
        keyflow_schemas::topics::check_co_partitioned(&counts).map_err(|e| anyhow::anyhow!("{family} family: {e}"))?;
        for p in 0..partitions {
            if *family == "order" {
                order_family(&ctx, &mut t, p).await?;
            } else {
                property_family(&ctx, &mut t, p).await?;
            }
            progress(&format!(
                "{family} family: partition {} of {partitions} checked ({} records read)",
                p + 1,
                t.records
            ));
        }
    }
    let mut latency: Vec<Latency> = t
        .latency
        .iter_mut()
        .map(|(hop, v)| {
            v.sort_unstable();
            Latency {
                hop: hop.clone(),
                count: v.len() as u64,
                p50_ms: quantile(v, 0.50),
                p99_ms: quantile(v, 0.99),
                max_ms: v.last().map_or(0, |m| i64::from(*m)),
            }
        })
        .collect();
    latency.sort_by(|a, b| a.hop.cmp(&b.hop));
    let raw_copies_total = t.raw_copies.values().sum();
    Ok(Report {
        ok: t.violation_count == 0,
        invariants: t.invariants,
        violation_count: t.violation_count,
        violations: t.violations,
        events: t.events,
        branches: t.branches,
        raw_copies: t.raw_copies,
        raw_copies_total,
        resent_facts: t.resent,
        stale_contract_updates: t.stale,
        pending_requests: t.pending,
        dlq: dlq_sizes,
        undecodable: t.undecodable,
        latency,
        records_read: t.records,
        elapsed_ms: started.elapsed().as_millis() as u64,
        missing_topics: missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_names_its_cause_in_one_header_or_in_the_three_older_ones() {
        let record = |hs: &[(&str, &str)]| RawRecord {
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            headers: hs.iter().map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec()))).collect(),
            payload: None,
        };
        let cause = headers::cause("orders", 3, 1234);
        assert_eq!(cause_of(&record(&[(headers::CAUSE, &cause)])), Some(("orders".into(), 1234)));
        let legacy =
            [(headers::LEGACY_CAUSE_TOPIC, "orders"), ("cause.partition", "3"), (headers::LEGACY_CAUSE_OFFSET, "1234")];
        assert_eq!(cause_of(&record(&legacy)), Some(("orders".into(), 1234)));
        assert_eq!(cause_of(&record(&[(headers::CAUSE, "orders:3")])), None);
        assert_eq!(cause_of(&record(&[])), None);
    }

    fn order(total: i64, at: i64) -> OrderPlaced {
        let AnyEvent::Order(OrderEvent::OrderPlaced(mut o)) =
            AnyEvent::from(keyflow_schemas::samples::samples("v").orders[0].clone())
        else {
            unreachable!("the first sample is an OrderPlaced")
        };
        o.items = vec![OrderItem { sku: "x".into(), quantity: 1, unit_price_minor: total }];
        o.total_minor = total;
        o.metadata.occurred_at = at;
        o
    }

    #[test]
    fn the_oracle_applies_the_spend_window_half_open() {
        let rules = RuleArgs { spend_limit_minor: 1_000, ..RuleArgs::default() };
        let hour = rules.window_ms();
        let payer = Payer { authorized: vec![(0, 600)], ..Payer::default() };
        assert_eq!(oracle_decision(&rules, &payer, &order(400, 0)), Decision::Authorized);
        assert_eq!(
            oracle_decision(&rules, &payer, &order(401, 0)),
            Decision::Declined(DeclineReason::SpendLimitExceeded)
        );
        assert_eq!(
            oracle_decision(&rules, &payer, &order(401, hour - 1)),
            Decision::Declined(DeclineReason::SpendLimitExceeded)
        );
        assert_eq!(oracle_decision(&rules, &payer, &order(401, hour)), Decision::Authorized);
        assert_eq!(oracle_decision(&rules, &payer, &order(0, 0)), Decision::Declined(DeclineReason::InvalidAmount));
    }

    #[test]
    fn tiers_and_contract_reasons_match_the_domain() {
        assert_eq!([tier_multiplier(999), tier_multiplier(1_000), tier_multiplier(10_000)], [1, 2, 3]);
        assert_eq!(contract_reason(ContractStatus::Expired), "CONTRACT_EXPIRED");
    }

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!((quantile(&v, 0.5), quantile(&v, 0.99), quantile(&[], 0.5)), (50, 99, 0));
    }

    #[test]
    fn timestamps_are_found_by_offset() {
        let mut s = Timestamps::default();
        s.push(10, 100);
        s.push(12, 120);
        assert_eq!((s.at(10), s.at(11), s.at(12), s.at(9), s.at(13)), (Some(100), None, Some(120), None, None));
    }
}
