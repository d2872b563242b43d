//! The request handlers, by API family. Each takes the decoded request and
//! returns the response to encode; none of them knows about framing.

pub mod groups;
pub mod records;
pub mod topics;
pub mod txn;

use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;

/// The broker's node id (a one-node cluster).
pub const NODE: BrokerId = BrokerId(0);

pub fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

pub fn topic_name(x: &str) -> TopicName {
    TopicName(s(x))
}
