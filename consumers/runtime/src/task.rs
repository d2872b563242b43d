//! The pure heart of a partition task: a [`Worker`] (business rules, no
//! Kafka) applied to a batch of decoded inputs under per-key state, with the
//! runtime's guarantees that need no I/O — dedupe of copies by `event_id`,
//! of re-sent facts by `idempotency_key`, the offset guard, per-key order
//! with cross-key concurrency — producing what the changelog records
//! (changed keys, outputs) and what the metrics count (outcomes).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use keyflow_schemas::events::AnyEvent;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keyed::KeyedRunner;
pub use crate::window::{Id, Window};

/// One decoded input record.
#[derive(Debug, Clone)]
pub struct Input {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub event: AnyEvent,
    /// W3C trace context from the record's headers.
    pub traceparent: Option<String>,
}

/// A contract violation: the input can never be processed (→ DLQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub String);

/// What a worker decided for one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Applied: the state may have changed and these outputs follow (possibly none).
    Emit(Vec<AnyEvent>),
    /// Recognised but not applied (e.g. a stale contract update); counted with
    /// this reason. The worker must leave the state unchanged.
    Ignore(&'static str),
}

impl From<Vec<AnyEvent>> for Decision {
    fn from(outputs: Vec<AnyEvent>) -> Self {
        Decision::Emit(outputs)
    }
}

/// Business rules: state for one key + one input → new state and outputs.
/// No Kafka types, no clocks; the same inputs always give the same outputs.
pub trait Worker: Send + Sync + 'static {
    /// Per-key state.
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync + std::fmt::Debug + 'static;
    /// Name: consumer group, changelog `<name>-state`, DLQ `<name>.dlq`.
    fn name(&self) -> &'static str;
    /// Decides one input. Async so a worker can wait on a (simulated) dependency.
    fn handle(&self, state: &mut Self::State, input: &Input)
        -> impl Future<Output = Result<Decision, Rejected>> + Send;
    /// Work this key's state holds back, waiting for another input (e.g.
    /// publication requests without an approved contract); exported as a gauge.
    fn pending(&self, _state: &Self::State) -> usize {
        0
    }
}

/// The highest offset applied per input partition (`topic/partition`): one
/// or two entries, so a vector, written as a JSON map.
#[derive(Debug, Clone, Default)]
pub struct Offsets(Vec<(String, i64)>);

/// Equal when they hold the same offsets, in whatever order.
impl PartialEq for Offsets {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().all(|(p, o)| other.get(p) == Some(*o))
    }
}

impl Eq for Offsets {}

impl Offsets {
    pub fn get(&self, partition: &str) -> Option<i64> {
        self.0.iter().find(|(p, _)| p == partition).map(|(_, o)| *o)
    }

    /// Every input partition with its offset.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(p, o)| (p.as_str(), *o))
    }

    /// The first input partition on which `later` is behind these offsets:
    /// (partition, offset here, offset in `later`).
    pub fn behind(&self, later: &Offsets) -> Option<(String, i64, i64)> {
        self.0.iter().find_map(|(p, was)| later.get(p).filter(|now| now < was).map(|now| (p.clone(), *was, now)))
    }

    pub fn insert(&mut self, partition: String, offset: i64) {
        match self.0.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, o)) => *o = offset,
            None => self.0.push((partition, offset)),
        }
    }
}

impl<const N: usize> From<[(String, i64); N]> for Offsets {
    fn from(v: [(String, i64); N]) -> Self {
        Offsets(v.into())
    }
}

impl Serialize for Offsets {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        s.collect_map(self.0.iter().map(|(p, o)| (p, o)))
    }
}

impl<'de> Deserialize<'de> for Offsets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Offsets(BTreeMap::<String, i64>::deserialize(d)?.into_iter().collect()))
    }
}

/// A key's worker state plus the runtime's per-key bookkeeping. Its JSON
/// (snapshots, the local store) uses one-letter names, since a restore reads
/// every key's; the long names of earlier versions are still read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyState<S> {
    #[serde(rename = "s", alias = "state")]
    pub state: S,
    /// Input `event_id`s already applied (copies are dropped).
    #[serde(rename = "e", alias = "event_ids")]
    pub event_ids: Window,
    /// Input `idempotency_key`s already applied (re-sent facts are duplicates).
    #[serde(rename = "i", alias = "idempotency_keys")]
    pub idempotency_keys: Window,
    /// Highest input offset applied, per input partition (`topic/partition`).
    #[serde(rename = "o", alias = "last_offsets")]
    pub last_offsets: Offsets,
    /// Highest event time seen for this key (drives pruning).
    #[serde(rename = "t", alias = "max_event_time")]
    pub max_event_time: i64,
}

/// A key's change over one batch, as the changelog records it: worker state
/// and bookkeeping replaced, the ids remembered in the batch added, ids older
/// than `horizon` forgotten. Its size follows the batch, not the dedupe
/// windows, which a busy key fills with thousands of ids. Named like
/// [`KeyState`] (`h`: horizon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyDelta<S> {
    #[serde(rename = "s", alias = "state")]
    pub state: S,
    #[serde(rename = "o", alias = "last_offsets")]
    pub last_offsets: Offsets,
    #[serde(rename = "t", alias = "max_event_time")]
    pub max_event_time: i64,
    #[serde(rename = "h", alias = "horizon")]
    pub horizon: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "crate::window::ids")]
    #[serde(rename = "e", alias = "event_ids")]
    pub event_ids: Vec<(Id, i64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "crate::window::ids")]
    #[serde(rename = "i", alias = "idempotency_keys")]
    pub idempotency_keys: Vec<(Id, i64)>,
}

impl<S: Clone> KeyState<S> {
    /// The change since the previous call; `horizon` is where the windows were pruned.
    /// The live windows are pruned at that horizon too, so a restored key
    /// equals the live one.
    pub fn take_delta(&mut self, retention_ms: i64) -> KeyDelta<S> {
        let horizon = self.max_event_time.saturating_sub(retention_ms);
        self.event_ids.prune(horizon);
        self.idempotency_keys.prune(horizon);
        KeyDelta {
            state: self.state.clone(),
            last_offsets: self.last_offsets.clone(),
            max_event_time: self.max_event_time,
            horizon,
            event_ids: self.event_ids.take_fresh(),
            idempotency_keys: self.idempotency_keys.take_fresh(),
        }
    }

    /// Applies a recorded change (restore): the inverse of [`KeyState::take_delta`].
    pub fn apply_delta(&mut self, d: KeyDelta<S>) {
        self.state = d.state;
        self.last_offsets = d.last_offsets;
        self.max_event_time = d.max_event_time;
        self.event_ids.extend(d.event_ids, d.horizon);
        self.idempotency_keys.extend(d.idempotency_keys, d.horizon);
    }
}

/// What happened to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; produced `outputs` events.
    Ok { outputs: usize },
    /// Same `idempotency_key` as an applied input: a re-sent fact.
    Duplicate,
    /// Same `event_id` as an applied input: a byte copy.
    CopyDropped,
    /// Offset not above the last one applied on its partition.
    Stale,
    /// The worker recognised the input but did not apply it (reason).
    Ignored(&'static str),
    /// Can never be processed.
    Rejected(String),
}

impl Outcome {
    /// The label of an input sent to the DLQ (rejected by the worker, or
    /// poison the runtime never handed to it).
    pub const DLQ: &'static str = "dlq";
    /// Every value [`Outcome::label`] gives.
    pub const LABELS: [&'static str; 6] = ["ok", "duplicate", "copy_dropped", "stale", "ignored", Self::DLQ];

    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Duplicate => "duplicate",
            Outcome::CopyDropped => "copy_dropped",
            Outcome::Stale => "stale",
            Outcome::Ignored(_) => "ignored",
            Outcome::Rejected(_) => Self::DLQ,
        }
    }
}

/// One output, with the trace context of its cause.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub event: AnyEvent,
    pub traceparent: Option<String>,
    /// Topic and offset of the input that caused it (outputs are in input
    /// order per key; the partition is the task's).
    pub cause_topic: String,
    pub cause_offset: i64,
}

/// The result of a batch.
#[derive(Debug)]
pub struct BatchResult<S> {
    /// Per input, in input order.
    pub outcomes: Vec<Outcome>,
    /// Keys whose state changed, with their change.
    pub changed: BTreeMap<String, KeyDelta<S>>,
    /// Outputs in input order.
    pub outputs: Vec<Output>,
    /// Time spent deciding each input (worker call included), in input order.
    pub elapsed: Vec<std::time::Duration>,
    /// Change of the worker's pending work (see [`Worker::pending`]) over the batch.
    pub pending_delta: i64,
}

fn partition_key(input: &Input) -> String {
    format!("{}/{}", input.topic, input.partition)
}

/// Applies one input to its key's state.
async fn apply<W: Worker>(
    worker: &W,
    ks: &mut KeyState<W::State>,
    input: &Input,
    retention_ms: i64,
) -> (Outcome, Vec<AnyEvent>, bool) {
    let pk = partition_key(input);
    if ks.last_offsets.get(&pk).is_some_and(|last| input.offset <= last) {
        return (Outcome::Stale, vec![], false);
    }
    ks.last_offsets.insert(pk, input.offset);
    let meta = input.event.metadata();
    if ks.event_ids.contains(&meta.event_id) {
        return (Outcome::CopyDropped, vec![], true);
    }
    if ks.idempotency_keys.contains(&meta.idempotency_key) {
        ks.event_ids.insert(&meta.event_id, meta.occurred_at);
        return (Outcome::Duplicate, vec![], true);
    }
    let mut next = ks.state.clone();
    match worker.handle(&mut next, input).await {
        Ok(Decision::Ignore(why)) => {
            ks.event_ids.insert(&meta.event_id, meta.occurred_at);
            (Outcome::Ignored(why), vec![], true)
        }
        Ok(Decision::Emit(outputs)) => {
            ks.state = next;
            ks.event_ids.insert(&meta.event_id, meta.occurred_at);
            ks.idempotency_keys.insert(&meta.idempotency_key, meta.occurred_at);
            ks.max_event_time = ks.max_event_time.max(meta.occurred_at);
            let horizon = ks.max_event_time.saturating_sub(retention_ms);
            ks.event_ids.prune(horizon);
            ks.idempotency_keys.prune(horizon);
            (Outcome::Ok { outputs: outputs.len() }, outputs, true)
        }
        Err(Rejected(why)) => (Outcome::Rejected(why), vec![], true),
    }
}

/// Processes a batch: one key strictly in input order, keys concurrently
/// (bounded by `runner`). `states` holds every key's state; the changed
/// ones are updated in place and returned for the changelog.
pub async fn process_batch<W: Worker>(
    worker: &W,
    runner: &KeyedRunner,
    states: &mut HashMap<String, KeyState<W::State>>,
    inputs: Vec<Input>,
    retention_ms: i64,
) -> BatchResult<W::State> {
    // Move each key's state into its chain; the runner keeps one key sequential.
    let mut cells: HashMap<String, tokio::sync::Mutex<KeyState<W::State>>> = HashMap::new();
    for i in &inputs {
        cells
            .entry(i.key.clone())
            .or_insert_with(|| tokio::sync::Mutex::new(states.remove(&i.key).unwrap_or_default()));
    }
    let cells_ref = &cells;
    let results = runner
        .run(
            inputs.iter().collect::<Vec<_>>(),
            |i| i.key.clone(),
            |i| async move {
                // One chain per key: this lock is never contended.
                let mut ks = cells_ref[&i.key].lock().await;
                let before = worker.pending(&ks.state) as i64;
                let started = std::time::Instant::now();
                let applied = apply(worker, &mut ks, i, retention_ms).await;
                (applied, started.elapsed(), worker.pending(&ks.state) as i64 - before)
            },
        )
        .await;
    let mut outcomes = Vec::with_capacity(inputs.len());
    let mut outputs = Vec::new();
    let mut touched = std::collections::HashSet::new();
    let mut elapsed = Vec::with_capacity(inputs.len());
    let mut pending_delta = 0;
    for (input, ((outcome, events, changed), took, delta)) in inputs.iter().zip(results) {
        elapsed.push(took);
        pending_delta += delta;
        if changed {
            touched.insert(input.key.clone());
        }
        outputs.extend(events.into_iter().map(|event| Output {
            event,
            traceparent: input.traceparent.clone(),
            cause_topic: input.topic.clone(),
            cause_offset: input.offset,
        }));
        outcomes.push(outcome);
    }
    let mut changed = BTreeMap::new();
    for (key, cell) in cells {
        let mut ks = cell.into_inner();
        if touched.contains(&key) {
            changed.insert(key.clone(), ks.take_delta(retention_ms));
        }
        states.insert(key, ks);
    }
    BatchResult { outcomes, changed, outputs, elapsed, pending_delta }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::Counter;
    use keyflow_schemas::events::{LoyaltyEvent, OrderEvent};
    use keyflow_schemas::samples::samples;
    use std::time::Duration;

    fn order(key: &str, n: u32, offset: i64) -> Input {
        let AnyEvent::Order(OrderEvent::OrderPlaced(mut o)) = AnyEvent::from(samples("t").orders[0].clone()) else {
            unreachable!("the first sample is an OrderPlaced")
        };
        o.customer_id = key.into();
        o.order_id = format!("{key}-{n}");
        o.metadata.event_id = format!("{key}-{n}-id");
        o.metadata.idempotency_key = format!("{key}-{n}-idem");
        o.metadata.occurred_at = 1_000 + i64::from(n);
        Input {
            topic: "orders".into(),
            partition: 0,
            offset,
            key: key.into(),
            event: OrderEvent::from(o).into(),
            traceparent: None,
        }
    }

    fn balances(r: &BatchResult<crate::counter::CounterState>, key: &str) -> Vec<i64> {
        r.outputs
            .iter()
            .filter_map(|o| match &o.event {
                AnyEvent::Loyalty(LoyaltyEvent::PointsAwarded(p)) if p.customer_id == key => Some(p.balance),
                _ => None,
            })
            .collect()
    }

    async fn run(
        inputs: Vec<Input>,
        states: &mut HashMap<String, KeyState<crate::counter::CounterState>>,
    ) -> BatchResult<crate::counter::CounterState> {
        process_batch(&Counter::default(), &KeyedRunner::new(8), states, inputs, 3_600_000).await
    }

    #[tokio::test]
    async fn each_key_is_applied_in_input_order_and_outputs_follow_it() {
        let inputs: Vec<Input> = (0..5)
            .flat_map(|n| ["a", "b", "c"].map(move |k| (k, n)))
            .enumerate()
            .map(|(off, (k, n))| order(k, n, off as i64))
            .collect();
        let mut states = HashMap::new();
        let r = run(inputs, &mut states).await;
        for k in ["a", "b", "c"] {
            assert_eq!(balances(&r, k), vec![1, 2, 3, 4, 5]);
            assert_eq!(states[k].state.count, 5);
        }
        assert_eq!(r.changed.len(), 3);
        let offsets: Vec<i64> = r.outputs.iter().map(|o| o.cause_offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "outputs in input order");
    }

    #[tokio::test]
    async fn copies_and_resent_facts_are_applied_once_and_counted() {
        let first = order("a", 1, 0);
        let mut copy = first.clone();
        copy.offset = 1;
        let mut resent = first.clone();
        resent.offset = 2;
        if let AnyEvent::Order(OrderEvent::OrderPlaced(o)) = &mut resent.event {
            o.metadata.event_id = "a-1-resent".into();
        }
        let mut states = HashMap::new();
        let r = run(vec![first, copy, resent, order("a", 2, 3)], &mut states).await;
        assert_eq!(
            r.outcomes,
            vec![Outcome::Ok { outputs: 1 }, Outcome::CopyDropped, Outcome::Duplicate, Outcome::Ok { outputs: 1 }]
        );
        assert_eq!(balances(&r, "a"), vec![1, 2]);
    }

    #[tokio::test]
    async fn offsets_not_above_the_last_applied_are_stale() {
        let mut states = HashMap::new();
        run(vec![order("a", 1, 10)], &mut states).await;
        let r = run(vec![order("a", 2, 10), order("a", 3, 9), order("a", 4, 11)], &mut states).await;
        assert_eq!(r.outcomes[..2], [Outcome::Stale, Outcome::Stale]);
        assert_eq!(balances(&r, "a"), vec![2]);
    }

    #[tokio::test]
    async fn a_rejected_input_changes_nothing_and_the_key_keeps_flowing() {
        let mut bad = order("a", 2, 1);
        if let AnyEvent::Order(OrderEvent::OrderPlaced(o)) = &mut bad.event {
            o.total_minor = -5;
        }
        let mut states = HashMap::new();
        let r = run(vec![order("a", 1, 0), bad, order("a", 3, 2)], &mut states).await;
        assert!(matches!(&r.outcomes[1], Outcome::Rejected(why) if why.contains("negative")));
        assert_eq!(balances(&r, "a"), vec![1, 2]);
    }

    #[tokio::test]
    async fn reprocessing_from_the_same_state_yields_byte_identical_outputs() {
        let inputs: Vec<Input> = (0..4).map(|n| order("k", n, i64::from(n))).collect();
        let mut s1 = HashMap::new();
        let mut s2 = HashMap::new();
        let a = run(inputs.clone(), &mut s1).await;
        let b = run(inputs, &mut s2).await;
        assert_eq!(a.outputs, b.outputs);
        assert_eq!(s1, s2);
    }

    #[tokio::test]
    async fn a_key_rebuilt_from_its_recorded_deltas_equals_the_live_key() {
        let mut live = HashMap::new();
        let mut rebuilt: HashMap<String, KeyState<crate::counter::CounterState>> = HashMap::new();
        for round in 0..3 {
            let mut inputs: Vec<Input> =
                (0..6).map(|n| order("k", round * 100 + n * 1000, i64::from(round * 10 + n))).collect();
            inputs.push(inputs[0].clone()); // a copy: remembered, not applied
            inputs.last_mut().unwrap().offset = i64::from(round * 10 + 9);
            let r = process_batch(&Counter::default(), &KeyedRunner::new(4), &mut live, inputs, 2_500).await;
            for (key, d) in r.changed {
                let text = serde_json::to_string(&d).unwrap();
                rebuilt.entry(key).or_default().apply_delta(serde_json::from_str(&text).unwrap());
            }
        }
        assert_eq!(rebuilt, live);
        assert!(live["k"].event_ids.len() < 18, "pruned by event time");
    }

    #[test]
    fn offsets_are_written_as_the_map_earlier_versions_wrote() {
        let o: Offsets = [("payments/0".to_string(), 7), ("orders/0".to_string(), 5)].into();
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(text, r#"{"payments/0":7,"orders/0":5}"#);
        let back: Offsets = serde_json::from_str(r#"{"orders/0":5,"payments/0":7}"#).unwrap();
        assert_eq!(back, o, "equal whatever the order");
        assert_eq!((back.get("orders/0"), back.get("x")), (Some(5), None));
    }

    #[test]
    fn states_and_changes_written_by_earlier_versions_are_read() {
        let old = r#"{"state":{"count":3},"event_ids":{"seen":{"e-1":5}},"idempotency_keys":{"seen":{"k-1":5}},
            "last_offsets":{"orders/0":9},"max_event_time":5}"#;
        let ks: KeyState<crate::counter::CounterState> = serde_json::from_str(old).unwrap();
        assert_eq!((ks.state.count, ks.last_offsets.get("orders/0"), ks.max_event_time), (3, Some(9), 5));
        assert!(ks.event_ids.contains("e-1") && ks.idempotency_keys.contains("k-1"));
        let back: KeyState<crate::counter::CounterState> =
            serde_json::from_str(&serde_json::to_string(&ks).unwrap()).unwrap();
        assert_eq!(back, ks);
        let old = r#"{"state":{"count":4},"last_offsets":{"orders/0":10},"max_event_time":6,"horizon":0,
            "event_ids":[["e-2",6]],"idempotency_keys":[["k-2",6]]}"#;
        let d: KeyDelta<crate::counter::CounterState> = serde_json::from_str(old).unwrap();
        let mut ks = ks;
        ks.apply_delta(d);
        assert!(ks.event_ids.contains("e-1") && ks.event_ids.contains("e-2") && ks.idempotency_keys.contains("k-2"));
    }

    #[tokio::test]
    async fn dedupe_windows_are_pruned_by_event_time() {
        let mut states = HashMap::new();
        let inputs: Vec<Input> = (0..10).map(|n| order("k", n * 1000, i64::from(n))).collect();
        process_batch(&Counter::default(), &KeyedRunner::new(4), &mut states, inputs, 2_500).await;
        // Event times 1000..10000 step 1000 (+n); only those within 2.5 s of the newest remain.
        assert_eq!(states["k"].event_ids.len(), 3);
        assert_eq!(states["k"].idempotency_keys.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_inputs_of_different_keys_overlap() {
        let inputs: Vec<Input> = (0..100).map(|n| order(&format!("k{n}"), 0, n)).collect();
        let start = tokio::time::Instant::now();
        let mut states = HashMap::new();
        let w = Counter { delay: Duration::from_millis(5) };
        process_batch(&w, &KeyedRunner::new(50), &mut states, inputs, 3_600_000).await;
        assert_eq!(start.elapsed(), Duration::from_millis(10), "100 × 5 ms with 50 in flight");
    }
}
