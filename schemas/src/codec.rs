//! The Confluent wire-format codec: magic byte `0`, 4-byte big-endian schema
//! id, Avro binary — written and read through a Confluent-compatible schema
//! registry with `schema_registry_converter` + `apache-avro`.
//!
//! Subjects use the TopicRecordNameStrategy (`<topic>-<full record name>`).
//! Schema ids are cached per subject (encode) and per id (decode), so after
//! warm-up the hot path makes no HTTP call. Errors say whether retrying can
//! help ([`CodecError::is_transient`]): a registry that cannot be reached is
//! transient; bytes that are not ours, an unknown schema id or a record that
//! breaks its contract are poison and never become good by retrying.

use std::time::Duration;

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};

use crate::contracts;
use crate::events::TopicEvent;

/// How to reach the schema registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://localhost:8081`.
    pub url: String,
    /// HTTP basic auth `(user, password)`; never logged.
    pub basic_auth: Option<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl RegistryConfig {
    /// A registry at `url` without auth, 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into().trim_end_matches('/').to_string(), basic_auth: None, timeout: Duration::from_secs(10) }
    }

    fn settings(&self) -> Result<SrSettings, CodecError> {
        let mut b = SrSettings::new_builder(self.url.clone());
        b.no_proxy().set_timeout(self.timeout);
        if let Some((user, pass)) = &self.basic_auth {
            b.set_basic_authorization(user, Some(pass));
        }
        b.build().map_err(|e| CodecError::Config { url: self.url.clone(), message: e.error })
    }
}

/// Everything that can go wrong encoding or decoding a record.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The registry client could not be set up (bad URL, TLS setup).
    #[error("schema registry {url}: {message}")]
    Config { url: String, message: String },
    /// The registry could not be reached or answered 5xx/429. Transient.
    #[error("schema registry {url} unavailable: {message}")]
    RegistryUnavailable { url: String, message: String },
    /// The registry refused our schema (e.g. incompatible evolution).
    #[error("schema registry refused subject {subject}: {message}")]
    Rejected { subject: String, message: String },
    /// The value could not be encoded with its schema (a contract bug).
    #[error("cannot encode {record}: {message}")]
    Encode { record: String, message: String },
    /// Empty or null value.
    #[error("record has no value")]
    NullValue,
    /// Not the Confluent wire format (no magic byte, too short).
    #[error("not Confluent wire format: {0}")]
    NotWireFormat(String),
    /// The schema id is not known to the registry.
    #[error("unknown schema id {id}: {message}")]
    UnknownSchema { id: u32, message: String },
    /// The bytes do not decode with the writer's schema (truncated, corrupt).
    #[error("schema id {id}: Avro bytes do not decode: {message}")]
    Malformed { id: u32, message: String },
    /// A record type that does not belong on this topic.
    #[error("schema id {id} is record {record}, which does not belong on topic {topic}")]
    WrongType { id: u32, record: String, topic: String },
    /// Decoded, but breaks the event contract.
    #[error("{0}")]
    Contract(String),
}

impl CodecError {
    /// Whether retrying the same bytes later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable { .. })
    }

    /// A short, stable class name for DLQ headers and metrics labels.
    pub fn class(&self) -> &'static str {
        match self {
            CodecError::Config { .. } => "config",
            CodecError::RegistryUnavailable { .. } => "registry_unavailable",
            CodecError::Rejected { .. } => "schema_rejected",
            CodecError::Encode { .. } => "encode",
            CodecError::NullValue => "null_value",
            CodecError::NotWireFormat(_) => "not_wire_format",
            CodecError::UnknownSchema { .. } => "unknown_schema",
            CodecError::Malformed { .. } => "malformed_avro",
            CodecError::WrongType { .. } => "wrong_record_type",
            CodecError::Contract(_) => "contract_violation",
        }
    }
}

/// Whether a registry error is worth retrying: connection failures (the
/// converter flags those), and 5xx/429 answers, which the converter treats
/// as final.
fn transient(e: &SRCError) -> bool {
    let text = format!("{} {}", e.error, e.cause.as_deref().unwrap_or(""));
    e.retriable || ["status 5", "status 429"].iter().any(|s| text.contains(s))
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    }
}

/// A record decoded without knowing its topic (for inspection tools).
#[derive(Debug, Clone)]
pub struct Decoded {
    pub schema_id: u32,
    /// Full Avro record name.
    pub record: String,
    /// The record as JSON.
    pub json: serde_json::Value,
}

/// Encodes and decodes the pipeline's events. Cheap to share (`Arc`).
pub struct Codec {
    url: String,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl Codec {
    /// A codec talking to the registry in `config`. Makes no request yet.
    pub fn new(config: &RegistryConfig) -> Result<Self, CodecError> {
        Ok(Self {
            url: config.url.clone(),
            encoder: AvroEncoder::new(config.settings()?),
            decoder: AvroDecoder::new(config.settings()?),
        })
    }

    /// The registry URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Encodes `event` for `topic`, registering its schema under
    /// `<topic>-<full name>` on first use (the registry returns the existing
    /// id when the schema is already there).
    pub async fn encode<E: TopicEvent>(&self, topic: &str, event: &E) -> Result<Vec<u8>, CodecError> {
        let name = event.record_name();
        // Every TopicEvent variant has a contract; the tests check the pairing.
        let contract = contracts::get(name).expect("every record has a contract");
        let supplied = SuppliedSchema::new(Some(contract.full_name.clone()), SchemaType::Avro, contract.schema.clone());
        let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(topic.to_string(), supplied);
        self.encoder.encode_struct(event, &strategy).await.map_err(|e| {
            if transient(&e) {
                self.encoder.remove_errors_from_cache();
                CodecError::RegistryUnavailable { url: self.url.clone(), message: describe(&e) }
            } else if e.error.contains("registry") || e.error.contains("HTTP") {
                CodecError::Rejected { subject: contracts::subject(topic, name), message: describe(&e) }
            } else {
                CodecError::Encode { record: name.to_string(), message: describe(&e) }
            }
        })
    }

    /// Splits the wire-format header off, returning the schema id.
    pub fn schema_id(bytes: Option<&[u8]>) -> Result<u32, CodecError> {
        let bytes = bytes.filter(|b| !b.is_empty()).ok_or(CodecError::NullValue)?;
        if bytes[0] != 0 {
            return Err(CodecError::NotWireFormat(format!("first byte is {:#04x}, not the magic byte 0", bytes[0])));
        }
        if bytes.len() < 5 {
            return Err(CodecError::NotWireFormat(format!("{} bytes, shorter than the 5-byte header", bytes.len())));
        }
        Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
    }

    async fn decode_value(&self, bytes: Option<&[u8]>) -> Result<(u32, String, Value), CodecError> {
        let id = Self::schema_id(bytes)?;
        if let Err(e) = self.decoder.get_schema(id).await {
            return Err(if transient(&e) {
                self.decoder.remove_errors_from_cache();
                CodecError::RegistryUnavailable { url: self.url.clone(), message: describe(&e) }
            } else {
                CodecError::UnknownSchema { id, message: describe(&e) }
            });
        }
        let decoded =
            self.decoder.decode(bytes).await.map_err(|e| CodecError::Malformed { id, message: describe(&e) })?;
        let name = decoded.name.map(|n| n.fullname(None)).unwrap_or_else(|| "<not a record>".into());
        Ok((id, name, decoded.value))
    }

    /// Decodes a record of `topic` into its topic's event enum.
    pub async fn decode<E: TopicEvent>(&self, topic: &str, bytes: Option<&[u8]>) -> Result<E, CodecError> {
        let (id, full, value) = self.decode_value(bytes).await?;
        let short = full.strip_prefix(contracts::NAMESPACE).and_then(|s| s.strip_prefix('.'));
        match short.filter(|s| E::RECORDS.contains(s)) {
            Some(short) => E::from_avro(short, value).map_err(CodecError::Contract),
            None => Err(CodecError::WrongType { id, record: full, topic: topic.to_string() }),
        }
    }

    /// Decodes any registered Avro record to JSON (for inspection tools).
    pub async fn decode_json(&self, bytes: Option<&[u8]>) -> Result<Decoded, CodecError> {
        let (schema_id, record, value) = self.decode_value(bytes).await?;
        let json = avro_to_json(value);
        Ok(Decoded { schema_id, record, json })
    }
}

/// Converts a decoded Avro value to plain JSON.
pub fn avro_to_json(value: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => J::from(i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => J::from(i),
        Value::Float(f) => J::from(f),
        Value::Double(f) => J::from(f),
        Value::String(s) | Value::Enum(_, s) => J::String(s),
        Value::Uuid(u) => J::String(u.to_string()),
        Value::Bytes(b) | Value::Fixed(_, b) => J::Array(b.into_iter().map(J::from).collect()),
        Value::Union(_, v) => avro_to_json(*v),
        Value::Array(items) => J::Array(items.into_iter().map(avro_to_json).collect()),
        Value::Map(m) => J::Object(m.into_iter().map(|(k, v)| (k, avro_to_json(v))).collect()),
        Value::Record(fields) => J::Object(fields.into_iter().map(|(k, v)| (k, avro_to_json(v))).collect()),
        other => J::String(format!("{other:?}")),
    }
}

impl Codec {
    /// Encodes an event of any topic for `topic`.
    pub async fn encode_any(&self, topic: &str, event: &crate::events::AnyEvent) -> Result<Vec<u8>, CodecError> {
        use crate::events::AnyEvent::*;
        match event {
            Order(e) => self.encode(topic, e).await,
            Payment(e) => self.encode(topic, e).await,
            Fulfillment(e) => self.encode(topic, e).await,
            Loyalty(e) => self.encode(topic, e).await,
            Contract(e) => self.encode(topic, e).await,
            Property(e) => self.encode(topic, e).await,
            Evaluation(e) => self.encode(topic, e).await,
        }
    }
}
