//! Rust types of every event in docs/domain.md, one struct per Avro record, and
//! one enum per topic (several event types share a topic so that one key's
//! events keep their order).
//!
//! The `.avsc` files in `schemas/avro/` are the source of truth; the tests in
//! `codec.rs` prove that every struct encodes with, and decodes from, its
//! schema.

use serde::{Deserialize, Serialize};

/// Shared envelope embedded by every record (`keyflow.events.EventMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// UUID string; derived events use [`derived_event_id`].
    pub event_id: String,
    /// Short record name, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Producer or worker name.
    pub source: String,
    /// Event time, milliseconds since the Unix epoch.
    pub occurred_at: i64,
    /// Unique per business fact; a re-sent fact keeps it.
    pub idempotency_key: String,
    /// The originating order or request.
    pub correlation_id: String,
    /// `event_id` of the event that caused this one; `None` for producer events.
    pub causation_id: Option<String>,
}

/// The namespace every UUIDv5 event id of this project is derived in.
const EVENT_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b65_7966_6c6f_7700_8000_0000_0000_0001);

/// Deterministic id of a derived event: UUIDv5 of worker name, causing
/// `event_id` and output type, so a reprocessed input can never mint a
/// second, different output.
pub fn derived_event_id(worker: &str, causing_event_id: &str, output_type: &str) -> String {
    let name = format!("{worker}\u{1f}{causing_event_id}\u{1f}{output_type}");
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Metadata of an event derived from `cause` by `worker`: a deterministic
/// `event_id` (see [`derived_event_id`]), the cause's event time and
/// correlation, and the cause as `causation_id`. A reprocessed input
/// therefore yields a byte-identical output.
pub fn derived_metadata(worker: &str, cause: &EventMetadata, output_type: &str) -> EventMetadata {
    let event_id = derived_event_id(worker, &cause.event_id, output_type);
    EventMetadata {
        idempotency_key: event_id.clone(),
        event_id,
        event_type: output_type.to_string(),
        source: format!("{worker}-worker"),
        occurred_at: cause.occurred_at,
        correlation_id: cause.correlation_id.clone(),
        causation_id: Some(cause.event_id.clone()),
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// Where an order ships to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingAddress {
    pub country: String,
    pub city: String,
    pub street: String,
    pub number: String,
    pub postal_code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    pub total_minor: i64,
    pub currency: String,
    pub shipping_address: ShippingAddress,
    pub payment_method_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// Why the payment worker declined an order (docs/domain.md, payment rules 1–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::enum_variant_names)]
pub enum DeclineReason {
    #[serde(rename = "INVALID_AMOUNT")]
    InvalidAmount,
    #[serde(rename = "UNSUPPORTED_CURRENCY")]
    UnsupportedCurrency,
    #[serde(rename = "CARD_DECLINED")]
    CardDeclined,
    #[serde(rename = "SPEND_LIMIT_EXCEEDED")]
    SpendLimitExceeded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub reason: DeclineReason,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentVoided {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFulfilled {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub shipment_id: String,
    pub warehouse: String,
}

/// Why an order will not ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FulfillmentCancelReason {
    #[serde(rename = "PAYMENT_DECLINED")]
    PaymentDeclined,
    #[serde(rename = "ORDER_CANCELLED")]
    OrderCancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillmentCancelled {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub reason: FulfillmentCancelReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsAwarded {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub points: i64,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsRevoked {
    pub metadata: EventMetadata,
    pub order_id: String,
    pub customer_id: String,
    pub points: i64,
    pub balance: i64,
}

/// Lifecycle of a property's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContractStatus {
    #[serde(rename = "DRAFT")]
    Draft,
    #[serde(rename = "APPROVED")]
    Approved,
    #[serde(rename = "CANCELLED")]
    Cancelled,
    #[serde(rename = "CLOSED")]
    Closed,
    #[serde(rename = "EXPIRED")]
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractStatusChanged {
    pub metadata: EventMetadata,
    pub property_id: String,
    pub contract_id: String,
    pub contract_status: ContractStatus,
    /// Milliseconds since the Unix epoch.
    pub contract_last_modified_on: i64,
}

/// A listing's address; `property_id` is `country/city/street/number`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyAddress {
    pub country: String,
    pub city: String,
    pub street: String,
    pub number: String,
}

/// Whether a listing is for sale or for rent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContractType {
    #[serde(rename = "sale")]
    Sale,
    #[serde(rename = "rent")]
    Rent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationApprovalRequested {
    pub metadata: EventMetadata,
    pub request_id: String,
    pub property_id: String,
    pub address: PropertyAddress,
    pub description: String,
    pub contract: ContractType,
    pub list_price_minor: i64,
    pub currency: String,
    pub images: Vec<String>,
}

/// Outcome of a publication request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EvaluationResult {
    #[serde(rename = "APPROVED")]
    Approved,
    #[serde(rename = "DECLINED")]
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationEvaluationCompleted {
    pub metadata: EventMetadata,
    pub request_id: String,
    pub property_id: String,
    pub evaluation_result: EvaluationResult,
    pub reasons: Vec<String>,
}

/// A record type with its Avro name and partition key.
pub trait Record: Serialize + for<'de> Deserialize<'de> + Clone + std::fmt::Debug {
    /// Short name, also `EventMetadata::event_type`.
    const NAME: &'static str;
    /// The record's envelope.
    fn metadata(&self) -> &EventMetadata;
    /// The partition key (`customer_id` or `property_id`).
    fn key(&self) -> &str;
}

macro_rules! records {
    ($($ty:ident => $key:ident),* $(,)?) => {
        $(impl Record for $ty {
            const NAME: &'static str = stringify!($ty);
            fn metadata(&self) -> &EventMetadata { &self.metadata }
            fn key(&self) -> &str { &self.$key }
        })*
    };
}

records! {
    OrderPlaced => customer_id,
    OrderCancelled => customer_id,
    PaymentAuthorized => customer_id,
    PaymentDeclined => customer_id,
    PaymentVoided => customer_id,
    OrderFulfilled => customer_id,
    FulfillmentCancelled => customer_id,
    PointsAwarded => customer_id,
    PointsRevoked => customer_id,
    ContractStatusChanged => property_id,
    PublicationApprovalRequested => property_id,
    PublicationEvaluationCompleted => property_id,
}

/// The events that may appear on one topic.
pub trait TopicEvent: Serialize + Sized + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Default topic name (from `infra/topics.toml`).
    const DEFAULT_TOPIC: &'static str;
    /// Short names of the record types this topic carries.
    const RECORDS: &'static [&'static str];
    /// Short record name of this event.
    fn record_name(&self) -> &'static str;
    /// The event's envelope.
    fn metadata(&self) -> &EventMetadata;
    /// Mutable envelope.
    fn metadata_mut(&mut self) -> &mut EventMetadata;
    /// The partition key.
    fn key(&self) -> &str;
    /// The event as JSON (for people and scripts; Avro is the wire format).
    fn to_json(&self) -> serde_json::Value {
        // Serializing plain data structs into a JSON value cannot fail.
        serde_json::to_value(self).expect("plain data serializes")
    }
    /// Builds the event from a decoded Avro value of record `name`.
    fn from_avro(name: &str, value: apache_avro::types::Value) -> Result<Self, String>;
}

macro_rules! topic_event {
    ($(#[$doc:meta])* $enum:ident, $topic:literal, { $($variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum $enum { $($variant($variant)),* }

        impl TopicEvent for $enum {
            const DEFAULT_TOPIC: &'static str = $topic;
            const RECORDS: &'static [&'static str] = &[$(stringify!($variant)),*];
            fn record_name(&self) -> &'static str {
                match self { $(Self::$variant(_) => stringify!($variant)),* }
            }
            fn metadata(&self) -> &EventMetadata {
                match self { $(Self::$variant(e) => &e.metadata),* }
            }
            fn metadata_mut(&mut self) -> &mut EventMetadata {
                match self { $(Self::$variant(e) => &mut e.metadata),* }
            }
            fn key(&self) -> &str {
                match self { $(Self::$variant(e) => Record::key(e)),* }
            }
            fn from_avro(name: &str, value: apache_avro::types::Value) -> Result<Self, String> {
                match name {
                    $(stringify!($variant) => apache_avro::from_value::<$variant>(&value)
                        .map(Self::$variant)
                        .map_err(|e| format!("{} does not match its contract: {e}", stringify!($variant))),)*
                    other => Err(format!("record {other} does not belong on topic {}", $topic)),
                }
            }
        }

        $(impl From<$variant> for $enum {
            fn from(e: $variant) -> Self { Self::$variant(e) }
        }

        impl From<$variant> for AnyEvent {
            fn from(e: $variant) -> Self { $enum::$variant(e).into() }
        })*
    };
}

topic_event!(
    /// Events on `orders` (key `customer_id`).
    OrderEvent, "orders", { OrderPlaced, OrderCancelled });
topic_event!(
    /// Events on `payments` (key `customer_id`).
    PaymentEvent, "payments", { PaymentAuthorized, PaymentDeclined, PaymentVoided });
topic_event!(
    /// Events on `fulfillments` (key `customer_id`).
    FulfillmentEvent, "fulfillments", { OrderFulfilled, FulfillmentCancelled });
topic_event!(
    /// Events on `loyalty` (key `customer_id`).
    LoyaltyEvent, "loyalty", { PointsAwarded, PointsRevoked });
topic_event!(
    /// Events on `contracts` (key `property_id`).
    ContractEvent, "contracts", { ContractStatusChanged });
topic_event!(
    /// Events on `properties` (key `property_id`).
    PropertyEvent, "properties", { PublicationApprovalRequested });
topic_event!(
    /// Events on `publication-evaluations` (key `property_id`).
    EvaluationEvent, "publication-evaluations", { PublicationEvaluationCompleted });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_event_ids_are_deterministic_and_distinct_per_output_type() {
        let a = derived_event_id("payment", "e1", "PaymentAuthorized");
        assert_eq!(a, derived_event_id("payment", "e1", "PaymentAuthorized"));
        assert_ne!(a, derived_event_id("payment", "e1", "PaymentVoided"));
        assert_ne!(a, derived_event_id("loyalty", "e1", "PaymentAuthorized"));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }
}

macro_rules! any_event {
    ($($variant:ident($ty:ident)),* $(,)?) => {
        /// An event of any topic (for generators, replay and inspection).
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum AnyEvent { $($variant($ty)),* }

        impl AnyEvent {
            /// Default topic of the event.
            pub fn default_topic(&self) -> &'static str {
                match self { $(Self::$variant(_) => $ty::DEFAULT_TOPIC),* }
            }
            /// Short record name.
            pub fn record_name(&self) -> &'static str {
                match self { $(Self::$variant(e) => e.record_name()),* }
            }
            /// The envelope.
            pub fn metadata(&self) -> &EventMetadata {
                match self { $(Self::$variant(e) => e.metadata()),* }
            }
            /// Mutable envelope (generators re-stamp copies).
            pub fn metadata_mut(&mut self) -> &mut EventMetadata {
                match self { $(Self::$variant(e) => e.metadata_mut()),* }
            }
            /// Partition key.
            pub fn key(&self) -> &str {
                match self { $(Self::$variant(e) => e.key()),* }
            }
            /// The event as JSON.
            pub fn to_json(&self) -> serde_json::Value {
                match self { $(Self::$variant(e) => e.to_json()),* }
            }
        }

        $(impl From<$ty> for AnyEvent {
            fn from(e: $ty) -> Self { Self::$variant(e) }
        })*
    };
}

any_event!(
    Order(OrderEvent),
    Payment(PaymentEvent),
    Fulfillment(FulfillmentEvent),
    Loyalty(LoyaltyEvent),
    Contract(ContractEvent),
    Property(PropertyEvent),
    Evaluation(EvaluationEvent),
);

impl AnyEvent {
    /// Parses a JSON object of record `name` (the inner record's fields) into an event.
    pub fn from_record_json(name: &str, value: serde_json::Value) -> Result<AnyEvent, String> {
        fn parse<T: for<'de> Deserialize<'de>>(v: serde_json::Value) -> Result<T, String> {
            serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    e.into_inner().to_string()
                } else {
                    format!("field `{path}`: {}", e.into_inner())
                }
            })
        }
        Ok(match name {
            "OrderPlaced" => OrderEvent::from(parse::<OrderPlaced>(value)?).into(),
            "OrderCancelled" => OrderEvent::from(parse::<OrderCancelled>(value)?).into(),
            "PaymentAuthorized" => PaymentEvent::from(parse::<PaymentAuthorized>(value)?).into(),
            "PaymentDeclined" => PaymentEvent::from(parse::<PaymentDeclined>(value)?).into(),
            "PaymentVoided" => PaymentEvent::from(parse::<PaymentVoided>(value)?).into(),
            "OrderFulfilled" => FulfillmentEvent::from(parse::<OrderFulfilled>(value)?).into(),
            "FulfillmentCancelled" => FulfillmentEvent::from(parse::<FulfillmentCancelled>(value)?).into(),
            "PointsAwarded" => LoyaltyEvent::from(parse::<PointsAwarded>(value)?).into(),
            "PointsRevoked" => LoyaltyEvent::from(parse::<PointsRevoked>(value)?).into(),
            "ContractStatusChanged" => ContractEvent::from(parse::<ContractStatusChanged>(value)?).into(),
            "PublicationApprovalRequested" => PropertyEvent::from(parse::<PublicationApprovalRequested>(value)?).into(),
            "PublicationEvaluationCompleted" => {
                EvaluationEvent::from(parse::<PublicationEvaluationCompleted>(value)?).into()
            }
            other => return Err(format!("unknown event type '{other}'")),
        })
    }
}
