//! The keyflow dev stack and operations tooling.
//!
//! # Layout
//!
//! - [`registry`]: a Confluent-compatible schema registry with a durable log
//!   (binary `schema-registry`, also embedded in `devstack`).
//! - [`broker`]: the embedded Kafka-API broker (keyflow-broker) as a child
//!   process, built with the workspace.
//! - [`kafka`]: topic creation and listing on any cluster.
//! - [`stack`]: `devstack up` / `devstack init`.
//! - [`smoke`]: produce and read back one event of every type.
//! - [`inspect`]: list topics and print decoded records.
//! - [`tail`]: `devstack tail`, records as JSON lines from a position or time, filtered.
//! - [`verify`]: docs/domain.md's invariants checked over the topics of any cluster.
//! - [`pipeline`]: worker and producer processes on one machine (kill -9, drain).
//! - [`demo`]: `devstack demo`, the whole pipeline in one command.
//! - [`prometheus`]: a local Prometheus server scraping them (`demo --prometheus`).

pub mod bins;
pub mod broker;
pub mod demo;
pub mod inspect;
pub mod kafka;
pub mod pipeline;
pub mod prometheus;
pub mod smoke;
pub mod stack;
pub mod tail;
pub mod verify;
