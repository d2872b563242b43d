//! The keyflow worker runtime: it runs any [`task::Worker`] — a pure
//! function `(state of this key, input) → (new state, outputs)` — as a
//! consumer-group member, one task per partition, ordered per key and
//! concurrent across keys, effectively-once across crashes and rebalances
//! (or exactly-once with Kafka transactions). It knows no business rule: the
//! workers are in `keyflow-consumers`.
//!
//! # Layout
//!
//! - [`task`]: the [`task::Worker`] trait and a batch applied under per-key
//!   state with dedupe, offset guard and per-key order (pure, no Kafka).
//! - [`window`]: the dedupe windows, ids kept as 128-bit hashes.
//! - [`keyed`]: ordered per key, concurrent across keys, bounded.
//! - [`changelog`]: record the decision, then publish it — entries and restore (pure).
//! - [`runtime`]: the consumer-group member running partition tasks.
//! - [`store`]: where a task keeps its keys' states (memory, or a local
//!   store on disk with a cache of hot keys).
//! - [`metrics`]: the worker's Prometheus metrics.
//! - [`counter`]: a test worker that proves the runtime.

pub mod changelog;
pub mod counter;
pub mod keyed;
pub mod metrics;
pub mod runtime;
pub mod store;
pub mod task;
pub mod window;
