//! The Avro contracts: the `.avsc` files of `schemas/avro/`, embedded at
//! compile time, and their composition into self-contained schemas.
//!
//! Shared named types (today `keyflow.events.EventMetadata`) are defined in
//! exactly one file. Event schemas refer to them by full name, and
//! [`composed`] inlines the definition at its first use, so the schema that is
//! registered is self-contained and any Confluent-compatible client can read
//! it without schema references.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use serde_json::Value;

/// Avro namespace of every record of the pipeline.
pub const NAMESPACE: &str = "keyflow.events";

/// Shared named types, by full name → file text.
const SHARED: &[(&str, &str)] = &[("keyflow.events.EventMetadata", include_str!("../avro/EventMetadata.avsc"))];

/// Event records, by short name → file text.
const EVENTS: &[(&str, &str)] = &[
    ("OrderPlaced", include_str!("../avro/OrderPlaced.avsc")),
    ("OrderCancelled", include_str!("../avro/OrderCancelled.avsc")),
    ("PaymentAuthorized", include_str!("../avro/PaymentAuthorized.avsc")),
    ("PaymentDeclined", include_str!("../avro/PaymentDeclined.avsc")),
    ("PaymentVoided", include_str!("../avro/PaymentVoided.avsc")),
    ("OrderFulfilled", include_str!("../avro/OrderFulfilled.avsc")),
    ("FulfillmentCancelled", include_str!("../avro/FulfillmentCancelled.avsc")),
    ("PointsAwarded", include_str!("../avro/PointsAwarded.avsc")),
    ("PointsRevoked", include_str!("../avro/PointsRevoked.avsc")),
    ("ContractStatusChanged", include_str!("../avro/ContractStatusChanged.avsc")),
    ("PublicationApprovalRequested", include_str!("../avro/PublicationApprovalRequested.avsc")),
    ("PublicationEvaluationCompleted", include_str!("../avro/PublicationEvaluationCompleted.avsc")),
];

/// One event contract, ready to register.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Short record name (`OrderPlaced`).
    pub name: &'static str,
    /// Full Avro name (`keyflow.events.OrderPlaced`), the record part of the subject.
    pub full_name: String,
    /// The self-contained schema text that is registered.
    pub schema: String,
    /// The parsed schema.
    pub parsed: apache_avro::Schema,
}

/// Full Avro name of a short record name.
pub fn full_name(short: &str) -> String {
    format!("{NAMESPACE}.{short}")
}

/// Subject of a record on a topic: TopicRecordNameStrategy, `<topic>-<full name>`.
pub fn subject(topic: &str, short: &str) -> String {
    format!("{topic}-{}", full_name(short))
}

/// Every event contract, composed and parsed once.
pub fn all() -> &'static [Contract] {
    static ALL: OnceLock<Vec<Contract>> = OnceLock::new();
    ALL.get_or_init(|| {
        EVENTS
            .iter()
            .map(|(name, text)| {
                // The embedded files are fixed at compile time and every one is
                // parsed by the tests below, so failing here is a build defect.
                let schema = composed(text).unwrap_or_else(|e| panic!("{name}.avsc: {e}"));
                let parsed = apache_avro::Schema::parse_str(&schema).unwrap_or_else(|e| panic!("{name}.avsc: {e}"));
                Contract { name, full_name: full_name(name), schema, parsed }
            })
            .collect()
    })
}

/// The contract of one record, by short name.
pub fn get(short: &str) -> Option<&'static Contract> {
    all().iter().find(|c| c.name == short)
}

/// Inlines the shared named types an event schema refers to, at their first
/// use, and returns the compact JSON text.
pub fn composed(event_schema: &str) -> Result<String, String> {
    let shared: BTreeMap<&str, Value> = SHARED
        .iter()
        .map(|(n, t)| serde_json::from_str(t).map(|v| (*n, v)).map_err(|e| format!("{n}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut root: Value = serde_json::from_str(event_schema).map_err(|e| e.to_string())?;
    let mut defined = HashSet::new();
    inline(&mut root, &shared, &mut defined);
    Ok(root.to_string())
}

fn inline(node: &mut Value, shared: &BTreeMap<&str, Value>, defined: &mut HashSet<String>) {
    match node {
        Value::String(name) => {
            if let Some(def) = shared.get(name.as_str()) {
                if defined.insert(name.clone()) {
                    let mut def = def.clone();
                    inline(&mut def, shared, defined);
                    *node = def;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline(v, shared, defined)),
        Value::Object(map) => {
            for key in ["type", "items", "values"] {
                if let Some(v) = map.get_mut(key) {
                    inline(v, shared, defined);
                }
            }
            if let Some(Value::Array(fields)) = map.get_mut("fields") {
                fields.iter_mut().for_each(|f| inline(f, shared, defined));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_schema_parses_and_embeds_the_one_metadata_definition() {
        assert_eq!(all().len(), 12);
        for c in all() {
            assert_eq!(c.schema.matches("\"name\":\"EventMetadata\"").count(), 1, "{}", c.name);
            let apache_avro::Schema::Record(r) = &c.parsed else { panic!("{} is not a record", c.name) };
            assert_eq!(r.name.fullname(None), c.full_name);
            assert_eq!(r.fields[0].name, "metadata");
        }
    }

    #[test]
    fn metadata_is_not_pasted_into_event_files() {
        for (name, text) in EVENTS {
            assert!(!text.contains("\"event_id\""), "{name}.avsc pastes EventMetadata");
        }
    }

    #[test]
    fn subjects_follow_topic_record_name_strategy() {
        assert_eq!(subject("orders", "OrderPlaced"), "orders-keyflow.events.OrderPlaced");
    }
}
