//! Kafka header names the pipeline writes and reads, in one place.

/// W3C trace context, carried from a producer's event to every derived event.
pub const TRACEPARENT: &str = "traceparent";

/// On every worker output: the input record that caused it, as
/// `<topic>:<partition>:<offset>` ([`cause`]), so a reader can follow an
/// output back to its cause and check per-key order even for joins. One
/// header, not three: the embedded broker writes (and plans) one SQL row per
/// header, so each header costs it about as much as a record
/// (infra/BROKER-NOTES.md).
pub const CAUSE: &str = "cause";
/// The three headers outputs carried before [`CAUSE`] (still read: a
/// restore re-publishes an older changelog's outputs byte for byte).
pub const LEGACY_CAUSE_TOPIC: &str = "cause.topic";
pub const LEGACY_CAUSE_OFFSET: &str = "cause.offset";

/// On every DLQ record: why it could not be processed and where it came from.
pub const ERROR_CLASS: &str = "error.class";
pub const ERROR_MESSAGE: &str = "error.message";
pub const SOURCE_TOPIC: &str = "source.topic";
pub const SOURCE_PARTITION: &str = "source.partition";
pub const SOURCE_OFFSET: &str = "source.offset";
pub const WORKER: &str = "worker";
/// Size of an oversized record's value (the DLQ keeps only its start).
pub const ORIGINAL_SIZE: &str = "original.size";

/// The [`CAUSE`] header's value for input `topic`/`partition`@`offset`.
pub fn cause(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}:{partition}:{offset}")
}

/// A [`CAUSE`] header's topic, partition and offset; `None` when malformed.
pub fn parse_cause(value: &str) -> Option<(&str, i32, i64)> {
    let mut parts = value.rsplitn(3, ':');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next().filter(|t| !t.is_empty())?;
    Some((topic, partition, offset))
}

/// Hex digits of an event id (a UUID), padded to 32.
fn id_hex(event_id: &str) -> String {
    let hex: String = event_id.chars().filter(|c| c.is_ascii_hexdigit()).map(|c| c.to_ascii_lowercase()).collect();
    format!("{hex:0>32}")
}

/// W3C trace context of a producer event: a new trace rooted at it (trace id
/// and span id derived from its `event_id`, sampled).
pub fn root_traceparent(event_id: &str) -> String {
    let trace = id_hex(event_id);
    let span = &trace[trace.len() - 16..];
    format!("00-{}-{span}-01", &trace[trace.len() - 32..])
}

/// W3C trace context of an event derived from an input whose context is
/// `parent`: the same trace and flags, a span of its own derived from the
/// output's `event_id` (deterministic, so a re-published output is byte
/// identical). A malformed parent starts a new trace at the output.
pub fn child_traceparent(parent: &str, event_id: &str) -> String {
    let parts: Vec<&str> = parent.trim().split('-').collect();
    let valid = parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        return root_traceparent(event_id);
    }
    let own = id_hex(event_id);
    format!("00-{}-{}-{}", parts[1], &own[own.len() - 16..], parts[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_reads_back_as_written_and_a_malformed_one_is_none() {
        assert_eq!(cause("orders", 3, 1234), "orders:3:1234");
        assert_eq!(parse_cause(&cause("prod.orders-v2", 11, 0)), Some(("prod.orders-v2", 11, 0)));
        for bad in ["", "orders", "orders:3", ":3:4", "orders:x:4", "orders:3:x"] {
            assert_eq!(parse_cause(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_root_context_is_w3c_shaped_and_stable() {
        let t = root_traceparent("7d5b6a58-3c2e-4f0a-9b1c-2d3e4f5a6b7c");
        assert_eq!(t, "00-7d5b6a583c2e4f0a9b1c2d3e4f5a6b7c-9b1c2d3e4f5a6b7c-01");
        assert_eq!(t, root_traceparent("7d5b6a58-3c2e-4f0a-9b1c-2d3e4f5a6b7c"));
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_span_of_its_own() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let child = child_traceparent(parent, "11111111-2222-3333-4444-555555555555");
        assert_eq!(child, "00-0af7651916cd43dd8448eb211c80319c-4444555555555555-00");
        assert_eq!(child_traceparent("garbage", "ab"), root_traceparent("ab"));
    }
}
