//! `producer replay FILE`: events written by hand as JSON lines, one event
//! per line, like putting test events on a bus:
//!
//! ```json
//! {"type": "OrderPlaced", "order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "A", "quantity": 1, "unit_price_minor": 500}], "total_minor": 500, "currency": "EUR", "shipping_address": {"country": "NL", "city": "Utrecht", "street": "Main", "number": "1", "postal_code": "1234"}, "payment_method_token": "tok_visa"}
//! ```
//!
//! `metadata` may be omitted or partial: `event_id` defaults to a fresh
//! UUID, `event_type` to `type`, `source` to `replay`, `occurred_at` to the
//! run's start time, `idempotency_key` to the event id, `correlation_id` to
//! the order/request/contract id, `causation_id` to null. Every line is
//! validated against its Avro schema before anything is sent; a bad line is
//! reported with its number and field, and then nothing is sent.

use keyflow_schemas::contracts;
use keyflow_schemas::events::AnyEvent;
use serde_json::{Map, Value};

/// One problem with one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// How to fill in omitted metadata.
pub struct Defaults<'a> {
    /// Event time for lines without `occurred_at`.
    pub occurred_at: i64,
    /// Makes a fresh event id for line `n`.
    pub new_id: &'a mut dyn FnMut(usize) -> String,
}

/// Field names of a record schema.
fn field_names(schema: &apache_avro::Schema) -> Vec<String> {
    match schema {
        apache_avro::Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
        _ => vec![],
    }
}

fn unknown_fields(obj: &Map<String, Value>, known: &[String], prefix: &str) -> Option<String> {
    obj.keys()
        .find(|k| !known.iter().any(|f| f == *k))
        .map(|k| format!("unknown field `{prefix}{k}` (known: {})", known.join(", ")))
}

/// Parses and validates one line.
fn parse_line(n: usize, text: &str, d: &mut Defaults<'_>) -> Result<AnyEvent, String> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object_mut().ok_or("not a JSON object")?;
    let ty = match obj.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err("field `type` must be a string such as \"OrderPlaced\"".into()),
        None => return Err("missing field `type` (the event type, e.g. \"OrderPlaced\")".into()),
    };
    let contract = contracts::get(&ty).ok_or_else(|| {
        let names: Vec<&str> = contracts::all().iter().map(|c| c.name).collect();
        format!("unknown event type '{ty}' (one of: {})", names.join(", "))
    })?;
    let known = field_names(&contract.parsed);
    if let Some(e) = unknown_fields(obj, &known, "") {
        return Err(e);
    }
    let correlation = ["order_id", "request_id", "contract_id"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let meta = meta.as_object_mut().ok_or("field `metadata` must be an object")?;
    let meta_fields =
        ["event_id", "event_type", "source", "occurred_at", "idempotency_key", "correlation_id", "causation_id"]
            .map(String::from);
    if let Some(e) = unknown_fields(meta, &meta_fields, "metadata.") {
        return Err(e);
    }
    let event_id = match meta.get("event_id") {
        Some(Value::String(s)) => s.clone(),
        _ => (d.new_id)(n),
    };
    meta.entry("event_id").or_insert_with(|| Value::String(event_id.clone()));
    meta.entry("event_type").or_insert_with(|| Value::String(ty.clone()));
    meta.entry("source").or_insert_with(|| Value::String("replay".into()));
    meta.entry("occurred_at").or_insert_with(|| Value::from(d.occurred_at));
    meta.entry("idempotency_key").or_insert_with(|| Value::String(event_id.clone()));
    meta.entry("correlation_id").or_insert_with(|| Value::String(correlation));
    meta.entry("causation_id").or_insert(Value::Null);
    let event = AnyEvent::from_record_json(&ty, v)?;
    // The typed record is Avro-encodable by construction; check it against the
    // registered schema anyway, so a drift between struct and .avsc is caught here.
    let avro = apache_avro::to_value(&event).map_err(|e| e.to_string())?;
    avro.resolve(&contract.parsed).map_err(|e| format!("does not match the {ty} schema: {e}"))?;
    Ok(event)
}

/// Parses a whole file; returns every event, or every bad line (nothing is sent then).
pub fn parse(text: &str, mut defaults: Defaults<'_>) -> Result<Vec<AnyEvent>, Vec<LineError>> {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(n, trimmed, &mut defaults) {
            Ok(e) => events.push(e),
            Err(message) => errors.push(LineError { line: n, message }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"type": "OrderPlaced", "order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "A", "quantity": 2, "unit_price_minor": 500}], "total_minor": 1000, "currency": "EUR", "shipping_address": {"country": "NL", "city": "Utrecht", "street": "Main", "number": "1", "postal_code": "1234"}, "payment_method_token": "tok_visa"}"#;

    fn run(text: &str) -> Result<Vec<AnyEvent>, Vec<LineError>> {
        let mut next = |n: usize| format!("id-{n}");
        parse(text, Defaults { occurred_at: 42, new_id: &mut next })
    }

    #[test]
    fn hand_written_lines_get_metadata_defaults() {
        let cancel = r#"{"type": "OrderCancelled", "order_id": "o-1", "customer_id": "c-1", "reason": "x", "metadata": {"event_id": "mine"}}"#;
        let events = run(&format!("{GOOD}\n\n# comment\n{cancel}\n")).unwrap();
        assert_eq!(events.len(), 2);
        let m = events[0].metadata();
        assert_eq!((m.event_id.as_str(), m.event_type.as_str(), m.occurred_at), ("id-1", "OrderPlaced", 42));
        assert_eq!(m.correlation_id, "o-1");
        assert_eq!(events[1].metadata().event_id, "mine");
        assert_eq!(events[1].metadata().idempotency_key, "mine");
    }

    #[test]
    fn bad_lines_name_the_line_and_the_field_and_nothing_is_returned() {
        let wrong_type = GOOD.replace(r#""quantity": 2"#, r#""quantity": "two""#);
        let missing = GOOD.replace(r#""customer_id": "c-1", "#, "");
        let typo = GOOD.replace(r#""currency""#, r#""curency""#);
        let text = format!("{GOOD}\n{wrong_type}\n{missing}\n{{\"type\":\"Nope\"}}\nnot json\n{typo}\n");
        let errors = run(&text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6], "{errors:?}");
        assert!(errors[0].message.contains("items[0].quantity"), "{}", errors[0]);
        assert!(errors[1].message.contains("customer_id"), "{}", errors[1]);
        assert!(errors[2].message.contains("unknown event type 'Nope'"), "{}", errors[2]);
        assert!(errors[3].message.contains("not JSON"), "{}", errors[3]);
        assert!(errors[4].message.contains("curency"), "{}", errors[4]);
        assert_eq!(errors[0].to_string().split(':').next(), Some("line 2"));
    }

    #[test]
    fn enum_values_are_checked() {
        let bad = r#"{"type": "ContractStatusChanged", "property_id": "NL/U/S/1", "contract_id": "c", "contract_status": "SIGNED", "contract_last_modified_on": 5}"#;
        let errors = run(bad).unwrap_err();
        assert!(errors[0].message.contains("contract_status"), "{}", errors[0]);
    }
}
