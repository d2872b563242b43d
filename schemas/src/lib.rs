//! Event contracts of the keyflow pipeline.
//!
//! # Layout
//!
//! - [`contracts`]: the `.avsc` files (source of truth), composed into
//!   self-contained schemas, and subject naming (TopicRecordNameStrategy).
//! - [`events`]: Rust types of every record and one enum per topic.
//! - [`defaults`]: default values of the domain settings.
//! - [`rules`]: those settings as flags, shared by workers and the verifier.
//! - [`topics`]: the topic catalog from `infra/topics.toml`.
//! - [`client`]: Kafka and registry settings shared by every binary.
//! - [`logging`]: tracing setup (text or JSON).
//! - [`kafka`]: librdkafka clients from those settings, topic metadata.
//! - [`codec`]: the Confluent wire-format codec through a schema registry.
//! - [`metrics`]: every exported Prometheus metric name.
//! - [`headers`]: every Kafka header name the pipeline writes.
//! - [`process`]: shutdown signals, SIGPIPE.
//! - [`samples`]: one linked sample of every event.
//! - [`registry_admin`]: registering contracts and setting the compatibility
//!   policy (BACKWARD by default).

pub mod client;
pub mod codec;
pub mod contracts;
pub mod defaults;
pub mod events;
pub mod headers;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod registry_admin;
pub mod rules;
pub mod samples;
pub mod startup;
pub mod topics;

pub use codec::{Codec, CodecError, RegistryConfig};
pub use events::*;
