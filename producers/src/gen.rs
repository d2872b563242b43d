//! What every generator shares: a seeded RNG, a deterministic event clock and
//! id source, and the shape of one planned event.

use keyflow_schemas::events::{AnyEvent, EventMetadata};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One event the generator wants sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub event: AnyEvent,
    /// The mix category it was generated for (e.g. `declined_card`), for the summary.
    pub category: &'static str,
    /// A re-sent fact (same `idempotency_key` as an earlier event).
    pub duplicate: bool,
}

/// A source of events.
pub trait Generator {
    /// The next event; generators are infinite.
    fn next_event(&mut self) -> Planned;
}

/// Seeded randomness, ids and event time.
#[derive(Debug)]
pub struct Base {
    pub rng: StdRng,
    /// Sequence number of the next event.
    pub seq: u64,
    start_ms: i64,
    step_ms: f64,
}

impl Base {
    /// `start_ms` is the event time of the first event; each event advances
    /// the clock by `step_ms`.
    pub fn new(seed: u64, start_ms: i64, step_ms: f64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), seq: 0, start_ms, step_ms }
    }

    /// Event time of the current event.
    pub fn now_ms(&self) -> i64 {
        self.start_ms + (self.seq as f64 * self.step_ms) as i64
    }

    /// A random (v4-shaped) UUID from the seeded RNG.
    pub fn uuid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid().to_string()
    }

    /// Fresh metadata for a producer event.
    pub fn meta(&mut self, event_type: &str, source: &str, correlation_id: &str) -> EventMetadata {
        let event_id = self.uuid();
        EventMetadata {
            idempotency_key: format!("{source}:{event_id}"),
            event_id,
            event_type: event_type.to_string(),
            source: source.to_string(),
            occurred_at: self.now_ms(),
            correlation_id: correlation_id.to_string(),
            causation_id: None,
        }
    }

    /// Whether an event of probability `p` happens.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// Picks one of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    /// Picks a category by weight; the remainder of 1.0 goes to `rest`.
    pub fn category(&mut self, weights: &[(&'static str, f64)], rest: &'static str) -> &'static str {
        let mut r = self.rng.random::<f64>();
        for (name, w) in weights {
            if r < *w {
                return name;
            }
            r -= w;
        }
        rest
    }
}

/// A mix ratio flag value: a probability in [0, 1].
pub fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a ratio between 0 and 1")),
    }
}
