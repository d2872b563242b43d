//! The keyflow workers: payment, fulfillment, loyalty and publication as
//! pure rules with their topology, run by the runtime of `keyflow-runtime`
//! (re-exported here, so `keyflow_consumers::runtime` keeps working).
//!
//! # Layout
//!
//! - [`workers`]: the four workers as pure rules, and their topology
//!   (inputs, output, state topic).
//! - [`preflight`]: checks a worker makes before it joins its group — its
//!   input topics exist, co-partitioned inputs agree on partition count, the
//!   changelog does not expire by age.

pub mod preflight;
pub mod workers;

pub use keyflow_runtime::{changelog, counter, keyed, metrics, runtime, store, task};
