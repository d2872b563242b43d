//! The API versions the broker implements: one table feeds the ApiVersions
//! response and the gate every request passes.
//!
//! Ranges stop where a newer version needs something not built (topic ids
//! in Fetch ≥ 13 and Produce ≥ 13, the max-timestamp lookup is built so
//! ListOffsets goes to 7). Responses never carry tagged fields: Debian's
//! kcat (librdkafka 2.0.2) misreads them.

use kafka_protocol::messages::ApiKey;

/// (API, min version, max version).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
    // Transactions as before KIP-890 part 2 (EndTxn v5 returns a new epoch).
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::ListTransactions, 0, 0),
    // Only with SASL on (`--sasl-plain-user`); v1 handshakes are followed by
    // SaslAuthenticate requests (v0's raw tokens are not supported).
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The SASL APIs, advertised and served only when SASL is on.
pub fn is_sasl(api: ApiKey) -> bool {
    matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
}

/// Whether `version` of `api` is implemented (the SASL APIs only with SASL on).
pub fn supported(api: ApiKey, version: i16, sasl: bool) -> bool {
    (sasl || !is_sasl(api)) && SUPPORTED.iter().any(|(a, min, max)| *a == api && (*min..=*max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_range_is_one_kafka_protocol_can_decode() {
        for (api, min, max) in SUPPORTED {
            let r = api.valid_versions();
            assert!(r.min <= *min && *max <= r.max, "{api:?} {min}..={max} outside {}..={}", r.min, r.max);
        }
    }
}
