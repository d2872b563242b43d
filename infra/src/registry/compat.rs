//! Compatibility levels and checks by Avro schema-resolution rules
//! (`apache-avro`'s `SchemaCompatibility`).
//!
//! "Partially compatible" (some writer values — union branches, enum symbols
//! without a reader default — cannot be read) counts as incompatible, as in
//! Confluent's registry.

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// The compatibility levels of the Confluent API.
pub const LEVELS: &[&str] =
    &["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"];

/// Level used when none was ever set.
pub const DEFAULT_LEVEL: &str = "BACKWARD";

/// Whether `level` is one of [`LEVELS`].
pub fn valid_level(level: &str) -> bool {
    LEVELS.contains(&level)
}

/// Parses an Avro schema, resolving named types from `referenced` schemas.
pub fn parse(schema: &str, referenced: &[String]) -> Result<Schema, String> {
    if referenced.is_empty() {
        return Schema::parse_str(schema).map_err(|e| e.to_string());
    }
    let refs: Vec<&str> = referenced.iter().map(String::as_str).collect();
    Schema::parse_str_with_list(schema, &refs).map(|(s, _)| s).map_err(|e| e.to_string())
}

/// Whether data written with `writer` can be read with `reader`; the error
/// says what broke.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("only partially compatible: some values of the writer (a union branch or an enum symbol \
             without a reader default) cannot be read"
                .into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `new` against `existing` (oldest first) under `level`. Returns the
/// messages of every failed check; empty means compatible.
pub fn check(level: &str, new: &Schema, existing: &[(u32, Schema)]) -> Vec<String> {
    let transitive = level.ends_with("_TRANSITIVE");
    let base = level.trim_end_matches("_TRANSITIVE");
    if base == "NONE" || existing.is_empty() {
        return vec![];
    }
    let against: Vec<&(u32, Schema)> =
        if transitive { existing.iter().collect() } else { existing.last().into_iter().collect() };
    let mut messages = Vec::new();
    for (version, old) in against {
        if matches!(base, "BACKWARD" | "FULL") {
            if let Err(e) = can_read(old, new) {
                messages.push(format!("{level}: the new schema cannot read data written with version {version}: {e}"));
            }
        }
        if matches!(base, "FORWARD" | "FULL") {
            if let Err(e) = can_read(new, old) {
                messages.push(format!("{level}: version {version} cannot read data written with the new schema: {e}"));
            }
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Schema {
        Schema::parse_str(text).unwrap()
    }

    fn rec(fields: &str) -> Schema {
        s(&format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#))
    }

    fn ok(level: &str, new: &Schema, old: &[Schema]) -> bool {
        let existing: Vec<(u32, Schema)> = old.iter().cloned().enumerate().map(|(i, s)| (i as u32 + 1, s)).collect();
        check(level, new, &existing).is_empty()
    }

    #[test]
    fn backward_accepts_new_field_with_default_and_rejects_without() {
        let v1 = rec(r#"{"name":"a","type":"string"}"#);
        let with_default = rec(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let without = rec(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert!(ok("BACKWARD", &with_default, std::slice::from_ref(&v1)));
        assert!(!ok("BACKWARD", &without, std::slice::from_ref(&v1)));
        assert!(ok("FORWARD", &without, std::slice::from_ref(&v1)), "old readers ignore the new field");
        assert!(ok("NONE", &s(r#""int""#), &[v1]));
    }

    #[test]
    fn logical_types_follow_their_underlying_type() {
        let ts = rec(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}"#);
        let long = rec(r#"{"name":"t","type":"long"}"#);
        let string = rec(r#"{"name":"t","type":"string"}"#);
        let uuid = rec(r#"{"name":"t","type":{"type":"string","logicalType":"uuid"}}"#);
        assert!(ok("FULL", &ts, std::slice::from_ref(&long)));
        assert!(ok("FULL", &uuid, std::slice::from_ref(&string)));
        assert!(!ok("BACKWARD", &string, std::slice::from_ref(&ts)));
        let dec = rec(r#"{"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}}"#);
        let bytes = rec(r#"{"name":"d","type":"bytes"}"#);
        assert!(ok("BACKWARD", &bytes, &[dec]));
    }

    #[test]
    fn enum_symbol_removal_needs_a_reader_default() {
        let abc = s(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#);
        let ab = s(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
        let ab_default = s(r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#);
        assert!(!ok("BACKWARD", &ab, std::slice::from_ref(&abc)));
        assert!(ok("BACKWARD", &ab_default, std::slice::from_ref(&abc)));
        assert!(ok("BACKWARD", &abc, &[ab]), "adding a symbol is backward compatible");
    }

    #[test]
    fn unions_widened_are_backward_and_narrowed_are_not() {
        let narrow = rec(r#"{"name":"u","type":["null","string"],"default":null}"#);
        let wide = rec(r#"{"name":"u","type":["null","string","long"],"default":null}"#);
        assert!(ok("BACKWARD", &wide, std::slice::from_ref(&narrow)));
        assert!(!ok("BACKWARD", &narrow, std::slice::from_ref(&wide)));
        assert!(!ok("FULL", &wide, &[narrow]));
    }

    #[test]
    fn transitive_levels_check_every_version() {
        let v1 = rec(r#"{"name":"a","type":"string"}"#);
        let v2 = rec(r#"{"name":"a","type":"string","default":"x"}"#);
        // v3 drops `a`'s default and adds `b` with a default: readable from v2 data...
        let v3 = rec(r#"{"name":"b","type":"int","default":1}"#);
        assert!(ok("BACKWARD", &v3, &[v1.clone(), v2.clone()]));
        // ...and from v1 data too (unknown writer fields are skipped).
        assert!(ok("BACKWARD_TRANSITIVE", &v3, &[v1.clone(), v2.clone()]));
        // FORWARD: v1 (a without default) cannot read v3 data, v2 can.
        assert!(ok("FORWARD", &v3, &[v1.clone(), v2.clone()]));
        assert!(!ok("FORWARD_TRANSITIVE", &v3, &[v1, v2]));
    }

    #[test]
    fn named_type_references_resolve_from_the_referenced_schemas() {
        let meta = r#"{"type":"record","name":"Meta","namespace":"t","fields":[{"name":"id","type":"string"}]}"#;
        let parsed = parse(
            r#"{"type":"record","name":"E","namespace":"t","fields":[{"name":"m","type":"t.Meta"}]}"#,
            &[meta.to_string()],
        )
        .unwrap();
        assert!(matches!(parsed, Schema::Record(_)));
        assert!(parse(r#"{"type":"record","name":"E","fields":[{"name":"m","type":"t.Meta"}]}"#, &[]).is_err());
    }

    #[test]
    fn every_level_is_recognised() {
        for l in LEVELS {
            assert!(valid_level(l));
        }
        assert!(!valid_level("SIDEWAYS"));
    }
}
