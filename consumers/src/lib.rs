//! The keyflow workers.
//!
//! # Layout
//!
//! - [`workers`]: the four workers (payment, fulfillment, loyalty,
//!   publication) as pure rules, and their topology (inputs, output, state topic).
//! - [`changelog`]: record the decision, then publish it — entries and restore.
//! - [`task`]: the [`task::Worker`] trait and a batch applied under per-key
//!   state with dedupe, offset guard and per-key order (pure, no Kafka).
//! - [`counter`]: a test worker that proves the runtime.
//! - [`runtime`]: the consumer-group member running partition tasks (v1).
//! - [`metrics`]: the worker's Prometheus metrics.
//! - [`keyed`]: ordered per key, concurrent across keys, bounded.
//! - [`preflight`]: checks a worker makes before it joins its group — its
//!   input topics exist and co-partitioned inputs agree on partition count.
//!

pub mod changelog;
pub mod counter;
pub mod keyed;
pub mod metrics;
pub mod preflight;
pub mod runtime;
pub mod task;
pub mod workers;
