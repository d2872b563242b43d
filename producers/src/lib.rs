//! Load generators for the keyflow pipeline.
//!
//! # Layout
//!
//! - [`gen`]: what generators share — seeded RNG, event clock, ids.
//! - [`schedule`]: deterministic scheduling of follow-up events.
//! - [`orders`], [`properties`]: the two generators (pure, no Kafka).
//! - [`replay`]: hand-written JSON lines, validated before anything is sent.
//! - [`sink`]: encode through the registry and produce, tracking deliveries.
//! - [`stats`]: counters, latencies, metrics and the summary.
//! - [`run`]: pacing, stop conditions, progress.
//!
//! Determinism: the same `--seed` and `--start-time` give a byte-identical
//! event stream, ids included; pacing and delivery never change *what* is
//! generated, only when it is sent.

pub mod gen;
pub mod orders;
pub mod properties;
pub mod replay;
pub mod run;
pub mod schedule;
pub mod sink;
pub mod stats;

/// A generator over a fixed list of events (replay).
pub struct ListGen {
    events: std::vec::IntoIter<keyflow_schemas::events::AnyEvent>,
}

impl ListGen {
    pub fn new(events: Vec<keyflow_schemas::events::AnyEvent>) -> Self {
        Self { events: events.into_iter() }
    }
}

impl gen::Generator for ListGen {
    fn next_event(&mut self) -> gen::Planned {
        // The run stops at --count = the number of lines, so the list never runs dry.
        let event = self.events.next().expect("replay runs exactly as many events as lines");
        gen::Planned { event, category: "replay", duplicate: false }
    }
}
