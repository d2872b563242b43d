//! The Kafka protocol error codes the broker answers with.

/// A Kafka error code (`org.apache.kafka.common.protocol.Errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum Code {
    None = 0,
    OffsetOutOfRange = 1,
    CorruptMessage = 2,
    UnknownTopicOrPartition = 3,
    MessageTooLarge = 10,
    CoordinatorNotAvailable = 15,
    NotCoordinator = 16,
    InvalidTopicException = 17,
    RecordListTooLarge = 18,
    IllegalGeneration = 22,
    InconsistentGroupProtocol = 23,
    InvalidGroupId = 24,
    UnknownMemberId = 25,
    InvalidSessionTimeout = 26,
    RebalanceInProgress = 27,
    UnsupportedSaslMechanism = 33,
    IllegalSaslState = 34,
    UnsupportedVersion = 35,
    TopicAlreadyExists = 36,
    InvalidPartitions = 37,
    InvalidReplicationFactor = 38,
    InvalidRequest = 42,
    UnsupportedForMessageFormat = 43,
    OutOfOrderSequenceNumber = 45,
    InvalidProducerEpoch = 47,
    InvalidTxnState = 48,
    InvalidProducerIdMapping = 49,
    InvalidTransactionTimeout = 50,
    ConcurrentTransactions = 51,
    InvalidConfig = 40,
    TransactionalIdAuthorizationFailed = 53,
    OperationNotAttempted = 55,
    KafkaStorageError = 56,
    SaslAuthenticationFailed = 58,
    GroupIdNotFound = 69,
    NonEmptyGroup = 68,
    MemberIdRequired = 79,
    InvalidRecord = 87,
    FencedInstanceId = 82,
    UnstableOffsetCommit = 88,
    ProducerFenced = 90,
    UnknownServerError = -1,
}

impl Code {
    pub fn code(self) -> i16 {
        self as i16
    }

    /// PRODUCER_FENCED for clients that know it (from `since` on), the older
    /// INVALID_PRODUCER_EPOCH for the others, as Kafka answers.
    pub fn for_version(self, version: i16, since: i16) -> Code {
        if self == Code::ProducerFenced && version < since {
            Code::InvalidProducerEpoch
        } else {
            self
        }
    }
}

impl From<Code> for i16 {
    fn from(c: Code) -> i16 {
        c as i16
    }
}
