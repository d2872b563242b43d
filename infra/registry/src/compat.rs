//! Compatibility levels and checks by Avro schema-resolution rules
//! (`apache-avro`'s `SchemaCompatibility`), with explanations.
//!
//! "Partially compatible" (some writer values — union branches, enum symbols
//! without a reader default — cannot be read) counts as incompatible, as in
//! Confluent's registry.
//!
//! apache-avro's verdict decides compatible / incompatible. Its errors only
//! name the outermost field (and a partial match says nothing at all), so
//! when a check fails, [`explain`] walks the writer and reader schemas side
//! by side and says what broke, with a path: the field inside a nested named
//! type, the enum symbol, the union branch.
//!
//! Schema references are resolved by inlining the referenced named types'
//! definitions at their first use ([`self_contained`]), so that a check sees
//! the referenced records' fields and not only their names.

use std::collections::{BTreeMap, HashMap, HashSet};

use apache_avro::schema::{DecimalSchema, FixedSchema, InnerDecimalSchema, RecordField, UuidSchema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use serde_json::Value;

/// The compatibility levels of the Confluent API.
pub const LEVELS: &[&str] =
    &["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"];

/// Level used when none was ever set.
pub const DEFAULT_LEVEL: &str = "BACKWARD";

/// Whether `level` is one of [`LEVELS`].
pub fn valid_level(level: &str) -> bool {
    LEVELS.contains(&level)
}

/// Parses an Avro schema, resolving named types from `referenced` schemas
/// (their texts, references of references first). The referenced
/// definitions are inlined (see [`self_contained`]), so the parsed schema
/// holds every referenced record's fields.
pub fn parse(schema: &str, referenced: &[String]) -> Result<Schema, String> {
    if referenced.is_empty() {
        return Schema::parse_str(schema).map_err(|e| e.to_string());
    }
    let text = self_contained(schema, referenced)?;
    Schema::parse_str(&text).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// schema references: inlining the referenced definitions

const PRIMITIVES: &[&str] = &["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
const NAMED_KINDS: &[&str] = &["record", "error", "enum", "fixed"];

/// Returns `schema` as compact JSON with every named type it uses from the
/// `referenced` schema texts defined inline at its first use (later uses
/// stay names). References of references are followed (their texts must be
/// in `referenced` too); names are resolved as Avro does: a dotted name is
/// full, a bare one is relative to the enclosing namespace. Names no
/// referenced schema defines are left for the parser to reject.
pub fn self_contained(schema: &str, referenced: &[String]) -> Result<String, String> {
    let mut definitions = BTreeMap::new();
    for (i, text) in referenced.iter().enumerate() {
        let node: Value =
            serde_json::from_str(text).map_err(|e| format!("referenced schema {} is not JSON: {e}", i + 1))?;
        collect_definitions(&node, None, &mut definitions);
    }
    let mut root: Value = serde_json::from_str(schema).map_err(|e| e.to_string())?;
    Inliner { definitions: &definitions, defined: HashSet::new() }.walk(&mut root, None, false);
    Ok(root.to_string())
}

/// The full name and namespace of a named type's JSON definition.
fn qualify(def: &serde_json::Map<String, Value>, enclosing: Option<&str>) -> (String, Option<String>) {
    let name = def.get("name").and_then(Value::as_str).unwrap_or_default();
    if let Some(bare) = name.strip_prefix('.') {
        return (bare.to_string(), None);
    }
    if let Some((ns, _)) = name.rsplit_once('.') {
        return (name.to_string(), Some(ns.to_string()));
    }
    let ns = match def.get("namespace") {
        Some(Value::String(ns)) => Some(ns.as_str()),
        _ => enclosing,
    }
    .filter(|ns| !ns.is_empty());
    match ns {
        Some(ns) => (format!("{ns}.{name}"), Some(ns.to_string())),
        None => (name.to_string(), None),
    }
}

/// The full name a type name written inside `ns` refers to; `None` for
/// primitive type names.
fn resolve_name(name: &str, ns: Option<&str>) -> Option<String> {
    if PRIMITIVES.contains(&name) {
        return None;
    }
    if let Some(bare) = name.strip_prefix('.') {
        return Some(bare.to_string());
    }
    match ns {
        Some(ns) if !name.contains('.') && !ns.is_empty() => Some(format!("{ns}.{name}")),
        _ => Some(name.to_string()),
    }
}

/// A name that means `full` wherever it is written.
fn absolute_name(full: &str) -> String {
    if full.contains('.') {
        full.to_string()
    } else {
        format!(".{full}")
    }
}

/// The named type definitions of a schema, by full name (first wins). Each
/// is stored with its namespace spelled out, so it means the same thing
/// wherever it is inlined.
fn collect_definitions(node: &Value, ns: Option<&str>, out: &mut BTreeMap<String, Value>) {
    match node {
        Value::Array(items) => items.iter().for_each(|v| collect_definitions(v, ns, out)),
        Value::Object(map) => match map.get("type") {
            Some(Value::String(kind))
                if NAMED_KINDS.contains(&kind.as_str()) && map.get("name").is_some_and(Value::is_string) =>
            {
                let (full, own_ns) = qualify(map, ns);
                let mut def = map.clone();
                let short = full.rsplit('.').next().unwrap_or(&full).to_string();
                def.insert("name".into(), Value::String(short));
                def.insert("namespace".into(), Value::String(own_ns.clone().unwrap_or_default()));
                out.entry(full).or_insert(Value::Object(def));
                if let Some(Value::Array(fields)) = map.get("fields") {
                    for field in fields {
                        if let Some(t) = field.get("type") {
                            collect_definitions(t, own_ns.as_deref(), out);
                        }
                    }
                }
            }
            Some(Value::String(kind)) if kind == "array" => {
                if let Some(items) = map.get("items") {
                    collect_definitions(items, ns, out);
                }
            }
            Some(Value::String(kind)) if kind == "map" => {
                if let Some(values) = map.get("values") {
                    collect_definitions(values, ns, out);
                }
            }
            Some(t) => collect_definitions(t, ns, out),
            None => {}
        },
        _ => {}
    }
}

struct Inliner<'a> {
    definitions: &'a BTreeMap<String, Value>,
    /// Full names defined so far, in the parser's order.
    defined: HashSet<String>,
}

impl Inliner<'_> {
    /// Replaces the first use of each referenced name by its definition.
    /// `inlined`: `node` comes from a referenced schema; a definition in it
    /// of an already defined name becomes a use of that name (a definition
    /// of the root schema is left alone, for the parser to judge).
    fn walk(&mut self, node: &mut Value, ns: Option<&str>, inlined: bool) {
        match node {
            Value::String(name) => {
                let Some(full) = resolve_name(name, ns) else { return };
                if self.defined.contains(&full) {
                    return;
                }
                if let Some(def) = self.definitions.get(&full) {
                    let mut def = def.clone();
                    self.walk(&mut def, ns, true);
                    *node = def;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.walk(v, ns, inlined)),
            Value::Object(map) => {
                let kind = map.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
                if NAMED_KINDS.contains(&kind.as_str()) && map.get("name").is_some_and(Value::is_string) {
                    let (full, own_ns) = qualify(map, ns);
                    if !self.defined.insert(full.clone()) && inlined {
                        *node = Value::String(absolute_name(&full));
                        return;
                    }
                    if let Some(Value::Array(fields)) = map.get_mut("fields") {
                        for field in fields {
                            if let Some(t) = field.get_mut("type") {
                                self.walk(t, own_ns.as_deref(), inlined);
                            }
                        }
                    }
                    return;
                }
                let key = match kind.as_str() {
                    "array" => "items",
                    "map" => "values",
                    _ => "type",
                };
                if let Some(child) = map.get_mut(key) {
                    self.walk(child, ns, inlined);
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// checks

/// Whether data written with `writer` can be read with `reader`. apache-avro
/// decides; on failure the reasons say what broke (see [`explain`]).
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), Vec<String>> {
    let verdict = SchemaCompatibility::can_read(writer, reader);
    if let Ok(Compatibility::Full) = verdict {
        return Ok(());
    }
    let reasons = explain(writer, reader);
    if !reasons.is_empty() {
        return Err(reasons);
    }
    // The walker found nothing apache-avro's verdict could rest on; say what
    // apache-avro said.
    Err(vec![match verdict {
        Err(e) => shorten(&e.to_string()),
        Ok(_) => "only partially compatible: some values of the writer (a union branch or an enum symbol \
                  without a reader default) cannot be read"
            .to_string(),
    }])
}

/// Cuts very long texts (apache-avro's type errors print whole schemas).
fn shorten(text: &str) -> String {
    const MAX: usize = 400;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Checks `new` against `existing` (oldest first) under `level`. Returns one
/// message per thing that broke, naming the level, the version and the
/// direction; empty means compatible.
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
            if let Err(reasons) = can_read(old, new) {
                messages.extend(
                    reasons.iter().map(|r| {
                        format!("{level}: the new schema cannot read data written with version {version}: {r}")
                    }),
                );
            }
        }
        if matches!(base, "FORWARD" | "FULL") {
            if let Err(reasons) = can_read(new, old) {
                messages.extend(
                    reasons.iter().map(|r| {
                        format!("{level}: version {version} cannot read data written with the new schema: {r}")
                    }),
                );
            }
        }
    }
    messages
}

// ---------------------------------------------------------------------------
// explanations

/// Why data written with `writer` cannot (always) be read with `reader`, by
/// Avro's resolution rules: one human-readable reason per thing that broke,
/// each with its path (`billing.zone`; `[]` is an array's items, `{}` a
/// map's values). Empty when the walk finds nothing wrong.
///
/// Named types are compared by their definitions (uses by name are looked up
/// in the schema that holds them); a recursive type is assumed compatible
/// where it recurs.
pub fn explain(writer: &Schema, reader: &Schema) -> Vec<String> {
    let mut walker = Explainer {
        writer_types: named_types(writer),
        reader_types: named_types(reader),
        in_progress: HashSet::new(),
        verdicts: HashMap::new(),
    };
    let mut out = Vec::new();
    walker.explain(writer, reader, "", &mut out);
    out
}

/// Every named type defined in `schema`, by full name (first definition wins).
fn named_types(schema: &Schema) -> HashMap<String, &Schema> {
    fn walk<'a>(s: &'a Schema, out: &mut HashMap<String, &'a Schema>) {
        if let Some(name) = definition_name(s) {
            if out.insert(name, s).is_some() {
                return;
            }
        }
        match s {
            Schema::Record(r) => r.fields.iter().for_each(|f| walk(&f.schema, out)),
            Schema::Array(a) => walk(&a.items, out),
            Schema::Map(m) => walk(&m.types, out),
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(schema, &mut out);
    out
}

/// The full name a schema defines (not a use by name).
fn definition_name(s: &Schema) -> Option<String> {
    match s {
        Schema::Ref { .. } => None,
        _ => s.name().map(|n| n.fullname(None)),
    }
}

/// The fixed type under a fixed-based schema.
fn fixed_of(s: &Schema) -> Option<&FixedSchema> {
    match s {
        Schema::Fixed(f)
        | Schema::Duration(f)
        | Schema::Uuid(UuidSchema::Fixed(f))
        | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Fixed(f), .. }) => Some(f),
        _ => None,
    }
}

/// A short description of a schema: `long (timestamp-millis)`, `record
/// \`t.Address\``, `array<int>`, `union [null, string]`.
fn describe(s: &Schema) -> String {
    let logical = |base: &str, logical: &str| format!("{base} ({logical})");
    match s {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Array(a) => format!("array<{}>", describe(&a.items)),
        Schema::Map(m) => format!("map<{}>", describe(&m.types)),
        Schema::Union(u) => format!("union [{}]", u.variants().iter().map(describe).collect::<Vec<_>>().join(", ")),
        Schema::Record(r) => format!("record `{}`", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum `{}`", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed `{}` (size {})", f.name.fullname(None), f.size),
        Schema::Decimal(d) => {
            let base = match &d.inner {
                InnerDecimalSchema::Bytes => "bytes".to_string(),
                InnerDecimalSchema::Fixed(f) => format!("fixed `{}` (size {})", f.name.fullname(None), f.size),
            };
            logical(&base, &format!("decimal({}, {})", d.precision, d.scale))
        }
        Schema::BigDecimal => logical("bytes", "big-decimal"),
        Schema::Uuid(UuidSchema::String) => logical("string", "uuid"),
        Schema::Uuid(UuidSchema::Bytes) => logical("bytes", "uuid"),
        Schema::Uuid(UuidSchema::Fixed(f)) => logical(&format!("fixed `{}`", f.name.fullname(None)), "uuid"),
        Schema::Date => logical("int", "date"),
        Schema::TimeMillis => logical("int", "time-millis"),
        Schema::TimeMicros => logical("long", "time-micros"),
        Schema::TimestampMillis => logical("long", "timestamp-millis"),
        Schema::TimestampMicros => logical("long", "timestamp-micros"),
        Schema::TimestampNanos => logical("long", "timestamp-nanos"),
        Schema::LocalTimestampMillis => logical("long", "local-timestamp-millis"),
        Schema::LocalTimestampMicros => logical("long", "local-timestamp-micros"),
        Schema::LocalTimestampNanos => logical("long", "local-timestamp-nanos"),
        Schema::Duration(f) => logical(&format!("fixed `{}`", f.name.fullname(None)), "duration"),
        Schema::Ref { name } => format!("`{}`", name.fullname(None)),
    }
}

/// Where a path points, for messages.
fn at(path: &str) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        format!("`{path}`")
    }
}

/// `path.child` (or `child` at the top level).
fn join(path: &str, child: &str) -> String {
    if path.is_empty() {
        child.to_string()
    } else {
        format!("{path}.{child}")
    }
}

/// The underlying value family of an int- or long-based schema (logical
/// types read as their base type).
fn is_int_based(s: &Schema) -> bool {
    matches!(s, Schema::Int | Schema::Date | Schema::TimeMillis)
}

fn is_long_based(s: &Schema) -> bool {
    matches!(
        s,
        Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
    )
}

/// Bytes and strings are interchangeable (and so are the logical types over them).
fn is_bytes_or_string_based(s: &Schema) -> bool {
    matches!(
        s,
        Schema::Bytes
            | Schema::String
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::String | UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Bytes, .. })
    )
}

/// For two non-union, non-composite schemas: `None` when a writer value can
/// be read (same type or an Avro promotion), otherwise why not. Mirrors
/// apache-avro's table: int → long/float/double, long → float/double,
/// float → double, string ↔ bytes, logical types as their base types.
fn scalar_mismatch(w: &Schema, r: &Schema) -> Option<String> {
    let readable = match (w, r) {
        (Schema::Null, Schema::Null) | (Schema::Boolean, Schema::Boolean) => true,
        (w, r) if is_int_based(w) => is_int_based(r) || is_long_based(r) || matches!(r, Schema::Float | Schema::Double),
        (w, r) if is_long_based(w) => is_long_based(r) || matches!(r, Schema::Float | Schema::Double),
        (Schema::Float, r) => matches!(r, Schema::Float | Schema::Double),
        (Schema::Double, r) => matches!(r, Schema::Double),
        (Schema::Decimal(wd), Schema::Decimal(rd)) => {
            if (wd.precision, wd.scale) != (rd.precision, rd.scale) {
                return Some(format!(
                    "writer decimal({}, {}) cannot be read as reader decimal({}, {}): precision and scale must match",
                    wd.precision, wd.scale, rd.precision, rd.scale
                ));
            }
            true
        }
        (w, r) if is_bytes_or_string_based(w) && is_bytes_or_string_based(r) => true,
        (Schema::Uuid(_), Schema::Uuid(_)) => true,
        (w, r) => match (fixed_of(w), fixed_of(r)) {
            (Some(wf), Some(rf)) => {
                if wf.size != rf.size {
                    return Some(format!(
                        "writer fixed `{}` has size {} but reader fixed `{}` has size {}",
                        wf.name.fullname(None),
                        wf.size,
                        rf.name.fullname(None),
                        rf.size
                    ));
                }
                true
            }
            _ => false,
        },
    };
    (!readable).then(|| format!("writer type `{}` cannot be read as reader type `{}`", describe(w), describe(r)))
}

struct Explainer<'a> {
    writer_types: HashMap<String, &'a Schema>,
    reader_types: HashMap<String, &'a Schema>,
    /// Record pairs (writer, reader full names) being compared: where they
    /// recur they are assumed compatible.
    in_progress: HashSet<(String, String)>,
    /// Whether a (writer, reader) pair of schema nodes is compatible, by address.
    verdicts: HashMap<(usize, usize), bool>,
}

impl<'a> Explainer<'a> {
    /// A use by name → the definition it names.
    fn resolve(types: &HashMap<String, &'a Schema>, s: &'a Schema) -> &'a Schema {
        match s {
            Schema::Ref { name } => types.get(&name.fullname(None)).copied().unwrap_or(s),
            _ => s,
        }
    }

    /// Whether every `w` value can be read as `r` (no reason found).
    fn compatible(&mut self, w: &'a Schema, r: &'a Schema) -> bool {
        let w = Self::resolve(&self.writer_types, w);
        let r = Self::resolve(&self.reader_types, r);
        let key = (w as *const Schema as usize, r as *const Schema as usize);
        if let Some(v) = self.verdicts.get(&key) {
            return *v;
        }
        let mut scratch = Vec::new();
        self.explain(w, r, "", &mut scratch);
        let ok = scratch.is_empty();
        self.verdicts.insert(key, ok);
        ok
    }

    /// A reader branch worth explaining a writer branch against: the same
    /// named type, or the same kind of container.
    fn counterpart(&self, w: &'a Schema, branches: &'a [Schema]) -> Option<&'a Schema> {
        let w = Self::resolve(&self.writer_types, w);
        branches.iter().map(|b| Self::resolve(&self.reader_types, b)).find(|r| match (w, *r) {
            (Schema::Array(_), Schema::Array(_)) | (Schema::Map(_), Schema::Map(_)) => true,
            _ => matches!((w.name(), r.name()), (Some(a), Some(b)) if a.name() == b.name()),
        })
    }

    fn explain(&mut self, w: &'a Schema, r: &'a Schema, path: &str, out: &mut Vec<String>) {
        let w = Self::resolve(&self.writer_types, w);
        let r = Self::resolve(&self.reader_types, r);
        if let (Some(wn), Some(rn)) = (w.name(), r.name()) {
            if wn.name() != rn.name() {
                out.push(format!(
                    "type at {}: writer type `{}` and reader type `{}` have different names",
                    at(path),
                    wn.fullname(None),
                    rn.fullname(None)
                ));
                return;
            }
        }
        match (w, r) {
            (Schema::Union(wu), Schema::Union(ru)) => {
                for wb in wu.variants() {
                    if !ru.variants().iter().any(|rb| self.compatible(wb, rb)) {
                        out.push(format!(
                            "union at {}: writer branch `{}` cannot be read by the reader (reader branches: {})",
                            at(path),
                            describe(Self::resolve(&self.writer_types, wb)),
                            branch_list(ru.variants())
                        ));
                        if let Some(rb) = self.counterpart(wb, ru.variants()) {
                            self.explain(wb, rb, path, out);
                        }
                    }
                }
            }
            (Schema::Union(wu), _) => {
                for wb in wu.variants() {
                    if !self.compatible(wb, r) {
                        out.push(format!(
                            "union at {}: writer branch `{}` cannot be read by the reader, whose type there is `{}`",
                            at(path),
                            describe(Self::resolve(&self.writer_types, wb)),
                            describe(r)
                        ));
                        if self.counterpart(wb, std::slice::from_ref(r)).is_some() {
                            self.explain(wb, r, path, out);
                        }
                    }
                }
            }
            (_, Schema::Union(ru)) => {
                if !ru.variants().iter().any(|rb| self.compatible(w, rb)) {
                    out.push(format!(
                        "union at {}: no reader branch ({}) can read the writer's `{}`",
                        at(path),
                        branch_list(ru.variants()),
                        describe(w)
                    ));
                    if let Some(rb) = self.counterpart(w, ru.variants()) {
                        self.explain(w, rb, path, out);
                    }
                }
            }
            (Schema::Record(wr), Schema::Record(rr)) => {
                let key = (wr.name.fullname(None), rr.name.fullname(None));
                if !self.in_progress.insert(key.clone()) {
                    return;
                }
                for rf in &rr.fields {
                    let field_path = join(path, &rf.name);
                    match writer_field(&wr.fields, rf) {
                        Some(wf) => self.explain(&wf.schema, &rf.schema, &field_path, out),
                        None if rf.default.is_none() => out.push(format!(
                            "field `{field_path}`: reader field has no default and the writer has no such field{}",
                            aliases_note(rf)
                        )),
                        None => {}
                    }
                }
                self.in_progress.remove(&key);
            }
            (Schema::Enum(we), Schema::Enum(re)) => {
                if re.default.is_some() {
                    return;
                }
                for symbol in we.symbols.iter().filter(|s| !re.symbols.contains(s)) {
                    out.push(format!(
                        "enum `{}` at {}: writer symbol `{symbol}` is not in the reader and the reader has no default",
                        re.name.name(),
                        at(path)
                    ));
                }
            }
            (Schema::Array(wa), Schema::Array(ra)) => self.explain(&wa.items, &ra.items, &format!("{path}[]"), out),
            (Schema::Map(wm), Schema::Map(rm)) => self.explain(&wm.types, &rm.types, &format!("{path}{{}}"), out),
            _ => {
                if let Some(why) = scalar_mismatch(w, r) {
                    let what = if path.is_empty() { "the top level".to_string() } else { format!("field `{path}`") };
                    out.push(format!("{what}: {why}"));
                }
            }
        }
    }
}

/// The writer field a reader field reads: by name, then by the reader's aliases.
fn writer_field<'a>(fields: &'a [RecordField], reader: &RecordField) -> Option<&'a RecordField> {
    std::iter::once(&reader.name).chain(reader.aliases.iter()).find_map(|name| fields.iter().find(|f| &f.name == name))
}

fn aliases_note(field: &RecordField) -> String {
    if field.aliases.is_empty() {
        String::new()
    } else {
        format!(" (nor one named by its aliases {})", field.aliases.join(", "))
    }
}

fn branch_list(branches: &[Schema]) -> String {
    branches.iter().map(describe).collect::<Vec<_>>().join(", ")
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

    /// The reasons `reader` cannot read `writer` data; asserts apache-avro agrees.
    fn reasons(writer: &Schema, reader: &Schema) -> Vec<String> {
        let got = can_read(writer, reader).expect_err("expected incompatible");
        assert!(!got.is_empty());
        got
    }

    fn mentions(reasons: &[String], parts: &[&str]) -> bool {
        reasons.iter().any(|r| parts.iter().all(|p| r.contains(p)))
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

    // -- references: inlining

    const EVENT: &str = r#"{"type":"record","name":"Event","namespace":"t","fields":[
        {"name":"meta","type":"t.Meta"},{"name":"order_id","type":"string"}]}"#;
    const META_V1: &str =
        r#"{"type":"record","name":"Meta","namespace":"t","fields":[{"name":"event_id","type":"string"}]}"#;
    const META_V2: &str = r#"{"type":"record","name":"Meta","namespace":"t","fields":[
        {"name":"event_id","type":"string"},{"name":"tenant","type":"string"}]}"#;
    const META_V3: &str = r#"{"type":"record","name":"Meta","namespace":"t","fields":[
        {"name":"event_id","type":"string"},{"name":"tenant","type":"string","default":""}]}"#;

    fn field_type<'a>(schema: &'a Value, field: &str) -> &'a Value {
        let fields = schema["fields"].as_array().unwrap();
        &fields.iter().find(|f| f["name"] == field).unwrap()["type"]
    }

    #[test]
    fn reference_upgrade_that_breaks_the_nested_record_is_incompatible_and_named() {
        let v1 = parse(EVENT, &[META_V1.into()]).unwrap();
        let with_v2 = parse(EVENT, &[META_V2.into()]).unwrap();
        let with_v3 = parse(EVENT, &[META_V3.into()]).unwrap();
        let problems = check("BACKWARD", &with_v2, &[(1, v1.clone())]);
        assert!(mentions(&problems, &["field `meta.tenant`", "no default"]), "{problems:?}");
        assert!(ok("BACKWARD", &with_v3, &[v1]));
    }

    #[test]
    fn references_of_references_are_inlined_at_their_first_use_only() {
        let address =
            r#"{"type":"record","name":"Address","namespace":"geo","fields":[{"name":"city","type":"string"}]}"#;
        let customer = r#"{"type":"record","name":"Customer","namespace":"crm","fields":[
            {"name":"home","type":"geo.Address"},{"name":"work","type":["null","geo.Address"],"default":null}]}"#;
        let root = r#"{"type":"record","name":"Order","namespace":"t","fields":[
            {"name":"buyer","type":"crm.Customer"},{"name":"ship_to","type":"geo.Address"}]}"#;
        let text = self_contained(root, &[address.into(), customer.into()]).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let buyer = field_type(&v, "buyer");
        assert_eq!(buyer["name"], "Customer");
        assert_eq!(field_type(buyer, "home")["name"], "Address", "{text}");
        assert_eq!(field_type(buyer, "work")[1], "geo.Address");
        assert_eq!(field_type(&v, "ship_to"), "geo.Address");
        assert_eq!(text.matches(r#""name":"Address""#).count(), 1, "{text}");
        assert!(Schema::parse_str(&text).is_ok(), "{text}");
    }

    #[test]
    fn reference_names_resolve_relative_to_the_enclosing_namespace() {
        // `Meta` inside namespace `t` is `t.Meta`; `Plain` has no namespace
        // and stays namespace-less when inlined under `t`.
        let plain = r#"{"type":"enum","name":"Plain","symbols":["A"]}"#;
        let root = r#"{"type":"record","name":"Event","namespace":"t","fields":[
            {"name":"meta","type":"Meta"},{"name":"p","type":".Plain"},{"name":"again","type":"t.Meta"}]}"#;
        let parsed = parse(root, &[META_V1.into(), plain.into()]).unwrap();
        let Schema::Record(r) = &parsed else { panic!("not a record") };
        assert!(matches!(&r.fields[0].schema, Schema::Record(m) if m.name.fullname(None) == "t.Meta"));
        assert!(matches!(&r.fields[1].schema, Schema::Enum(e) if e.name.fullname(None) == "Plain"));
        assert!(matches!(&r.fields[2].schema, Schema::Ref { name } if name.fullname(None) == "t.Meta"));
    }

    #[test]
    fn referenced_definitions_keep_their_nested_types_namespace() {
        // `Inner` is defined inside `a.Outer` without a namespace: it is `a.Inner`,
        // also when `Outer` is inlined into a record of namespace `b`.
        let outer = r#"{"type":"record","name":"Outer","namespace":"a","fields":[
            {"name":"i","type":{"type":"record","name":"Inner","fields":[{"name":"x","type":"int"}]}}]}"#;
        let root = r#"{"type":"record","name":"Root","namespace":"b","fields":[
            {"name":"o","type":"a.Outer"},{"name":"i","type":"a.Inner"}]}"#;
        let parsed = parse(root, &[outer.into()]).unwrap();
        let Schema::Record(r) = &parsed else { panic!("not a record") };
        assert!(matches!(&r.fields[1].schema, Schema::Ref { name } if name.fullname(None) == "a.Inner"));
        // used first on its own, then inside Outer: Outer's copy becomes a use by name
        let root = r#"{"type":"record","name":"Root","namespace":"b","fields":[
            {"name":"i","type":"a.Inner"},{"name":"o","type":"a.Outer"}]}"#;
        assert!(parse(root, &[outer.into()]).is_ok());
    }

    #[test]
    fn names_no_reference_defines_stay_invalid() {
        let root = r#"{"type":"record","name":"E","namespace":"t","fields":[{"name":"m","type":"t.Other"}]}"#;
        assert!(parse(root, &[META_V1.into()]).is_err());
        let relative = r#"{"type":"record","name":"E","namespace":"u","fields":[{"name":"m","type":"Meta"}]}"#;
        assert!(parse(relative, &[META_V1.into()]).is_err(), "`Meta` in namespace `u` is `u.Meta`");
    }

    #[test]
    fn recursive_referenced_types_are_inlined_once() {
        let node = r#"{"type":"record","name":"Node","namespace":"t","fields":[
            {"name":"v","type":"int"},{"name":"next","type":["null","Node"],"default":null}]}"#;
        let root = r#"{"type":"record","name":"List","namespace":"t","fields":[{"name":"head","type":"Node"}]}"#;
        let parsed = parse(root, &[node.into()]).unwrap();
        assert!(can_read(&parsed, &parsed).is_ok());
    }

    // -- explanations

    #[test]
    fn explains_a_new_reader_field_without_default() {
        let old = rec(r#"{"name":"a","type":"string"}"#);
        let new = rec(r#"{"name":"a","type":"string"},{"name":"loyalty_tier","type":"int"}"#);
        let r = reasons(&old, &new);
        assert!(mentions(&r, &["field `loyalty_tier`", "reader field has no default"]), "{r:?}");
    }

    #[test]
    fn explains_a_field_inside_a_nested_named_type() {
        let addr = r#"{"type":"record","name":"Address","fields":[{"name":"city","type":"string"}]}"#;
        let addr_zone = r#"{"type":"record","name":"Address","fields":[
            {"name":"city","type":"string"},{"name":"zone","type":"string"}]}"#;
        let old = rec(&format!(r#"{{"name":"billing","type":{addr}}},{{"name":"shipping","type":"t.Address"}}"#));
        let new = rec(&format!(r#"{{"name":"billing","type":{addr_zone}}},{{"name":"shipping","type":"t.Address"}}"#));
        let r = reasons(&old, &new);
        assert!(
            mentions(&r, &["field `billing.zone`: reader field has no default and the writer has no such field"]),
            "{r:?}"
        );
    }

    #[test]
    fn named_refs_are_explained_by_their_definitions() {
        // the writer defines Address in `a` and uses it by name in `b`; the
        // reader dropped `a` and defines Address (with a new field) in `b`
        let old =
            rec(r#"{"name":"a","type":{"type":"record","name":"Address","fields":[{"name":"city","type":"string"}]}},
                         {"name":"b","type":"Address"}"#);
        let new = rec(r#"{"name":"b","type":{"type":"record","name":"Address","fields":[
                         {"name":"city","type":"string"},{"name":"zone","type":"string"}]}}"#);
        let r = reasons(&old, &new);
        assert!(mentions(&r, &["field `b.zone`"]), "{r:?}");
        // and uses by name inside a union branch
        let new = rec(r#"{"name":"a","type":{"type":"record","name":"Address","fields":[
                            {"name":"city","type":"string"},{"name":"zone","type":"string"}]}},
                         {"name":"b","type":["null","Address"]}"#);
        assert!(explain(&old, &new).iter().any(|m| m.contains("field `a.zone`")));
        assert!(explain(&old, &new).iter().any(|m| m.contains("field `b.zone`")), "{:?}", explain(&old, &new));
    }

    #[test]
    fn reader_field_aliases_and_defaults_are_honoured() {
        let old = rec(r#"{"name":"old_name","type":"string"}"#);
        let aliased = rec(r#"{"name":"new_name","type":"string","aliases":["old_name"]}"#);
        assert!(can_read(&old, &aliased).is_ok());
        assert!(explain(&old, &aliased).is_empty());
        let defaulted = rec(r#"{"name":"new_name","type":"string","default":""}"#);
        assert!(explain(&old, &defaulted).is_empty());
        let aliased_wrong = rec(r#"{"name":"new_name","type":"long","aliases":["old_name"]}"#);
        let r = reasons(&old, &aliased_wrong);
        assert!(mentions(&r, &["field `new_name`", "`string`", "`long`"]), "{r:?}");
    }

    #[test]
    fn explains_an_enum_symbol_the_reader_lacks() {
        let with_platinum =
            rec(r#"{"name":"tier","type":{"type":"enum","name":"Tier","symbols":["BRONZE","PLATINUM"]}}"#);
        let without = rec(r#"{"name":"tier","type":{"type":"enum","name":"Tier","symbols":["BRONZE"]}}"#);
        let r = reasons(&with_platinum, &without);
        assert!(
            mentions(
                &r,
                &["enum `Tier` at `tier`: writer symbol `PLATINUM` is not in the reader and the reader has no default"]
            ),
            "{r:?}"
        );
        // FORWARD: the old schema (reader) lacks the added symbol
        let problems = check("FORWARD", &with_platinum, &[(1, without)]);
        assert!(mentions(&problems, &["FORWARD", "version 1", "`PLATINUM`"]), "{problems:?}");
    }

    #[test]
    fn explains_a_union_branch_the_reader_cannot_read() {
        let wide = rec(r#"{"name":"contact","type":["null","string","long"],"default":null}"#);
        let narrow = rec(r#"{"name":"contact","type":["null","string"],"default":null}"#);
        let r = reasons(&wide, &narrow);
        assert!(mentions(&r, &["union at `contact`: writer branch `long` cannot be read by the reader"]), "{r:?}");
        assert_eq!(r.len(), 1, "only the long branch broke: {r:?}");
    }

    #[test]
    fn explains_a_union_narrowed_to_a_plain_type() {
        let union = rec(r#"{"name":"contact","type":["null","string"],"default":null}"#);
        let plain = rec(r#"{"name":"contact","type":"string"}"#);
        let r = reasons(&union, &plain);
        assert!(mentions(&r, &["union at `contact`", "writer branch `null`"]), "{r:?}");
        // widening a plain type to a union is fine
        assert!(can_read(&plain, &union).is_ok());
    }

    #[test]
    fn explains_a_plain_writer_type_no_reader_branch_reads() {
        let long = rec(r#"{"name":"contact","type":"long"}"#);
        let union = rec(r#"{"name":"contact","type":["null","string"],"default":null}"#);
        let r = reasons(&long, &union);
        assert!(mentions(&r, &["union at `contact`", "can read the writer's `long`"]), "{r:?}");
    }

    #[test]
    fn explains_a_record_inside_a_union_branch() {
        let addr = r#"{"type":"record","name":"Address","fields":[{"name":"city","type":"string"}]}"#;
        let addr_zone = r#"{"type":"record","name":"Address","fields":[
            {"name":"city","type":"string"},{"name":"zone","type":"string"}]}"#;
        let old = rec(&format!(r#"{{"name":"alt","type":["null",{addr}],"default":null}}"#));
        let new = rec(&format!(r#"{{"name":"alt","type":["null",{addr_zone}],"default":null}}"#));
        let r = reasons(&old, &new);
        assert!(mentions(&r, &["union at `alt`", "`t.Address`"]), "{r:?}");
        assert!(mentions(&r, &["field `alt.zone`"]), "{r:?}");
    }

    #[test]
    fn explains_primitive_type_changes_and_allows_promotions() {
        let of = |t: &str| rec(&format!(r#"{{"name":"amount","type":{t}}}"#));
        for (w, r) in [
            (r#""int""#, r#""long""#),
            (r#""int""#, r#""float""#),
            (r#""int""#, r#""double""#),
            (r#""long""#, r#""float""#),
            (r#""long""#, r#""double""#),
            (r#""float""#, r#""double""#),
            (r#""string""#, r#""bytes""#),
            (r#""bytes""#, r#""string""#),
        ] {
            assert!(can_read(&of(w), &of(r)).is_ok(), "{w} -> {r}");
            assert!(explain(&of(w), &of(r)).is_empty(), "{w} -> {r}");
        }
        for (w, r) in [(r#""long""#, r#""int""#), (r#""double""#, r#""float""#), (r#""string""#, r#""int""#)] {
            let got = reasons(&of(w), &of(r));
            let (wt, rt) = (w.trim_matches('"'), r.trim_matches('"'));
            assert!(
                mentions(&got, &[&format!("field `amount`: writer type `{wt}` cannot be read as reader type `{rt}`")]),
                "{got:?}"
            );
        }
    }

    #[test]
    fn explains_logical_types_by_their_base_types() {
        let of = |t: &str| rec(&format!(r#"{{"name":"occurred_at","type":{t}}}"#));
        let ts = of(r#"{"type":"long","logicalType":"timestamp-millis"}"#);
        let r = reasons(&ts, &of(r#""string""#));
        assert!(mentions(&r, &["field `occurred_at`", "long (timestamp-millis)", "`string`"]), "{r:?}");
        let r = reasons(&ts, &of(r#""int""#));
        assert!(mentions(&r, &["field `occurred_at`", "`int`"]), "{r:?}");
        assert!(explain(&of(r#""int""#), &ts).is_empty(), "int promotes to a long-based logical type");
        let dec = |p: u32| of(&format!(r#"{{"type":"bytes","logicalType":"decimal","precision":{p},"scale":2}}"#));
        let r = reasons(&dec(10), &dec(12));
        assert!(mentions(&r, &["field `occurred_at`", "precision and scale"]), "{r:?}");
        assert!(explain(&dec(10), &of(r#""bytes""#)).is_empty());
    }

    #[test]
    fn explains_fixed_size_changes() {
        let of = |n: u32| rec(&format!(r#"{{"name":"hash","type":{{"type":"fixed","name":"H","size":{n}}}}}"#));
        let r = reasons(&of(16), &of(32));
        assert!(mentions(&r, &["field `hash`", "size 16", "size 32"]), "{r:?}");
        assert!(explain(&of(16), &of(16)).is_empty());
    }

    #[test]
    fn explains_array_items_and_map_values_by_recursing() {
        let arr = |t: &str| rec(&format!(r#"{{"name":"tags","type":{{"type":"array","items":{t}}}}}"#));
        let r = reasons(&arr(r#""string""#), &arr(r#""int""#));
        assert!(mentions(&r, &["field `tags[]`", "`string`", "`int`"]), "{r:?}");
        assert!(explain(&arr(r#""int""#), &arr(r#""long""#)).is_empty());
        let map = |t: &str| rec(&format!(r#"{{"name":"attrs","type":{{"type":"map","values":{t}}}}}"#));
        let e = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        let e_a = r#"{"type":"enum","name":"E","symbols":["A"]}"#;
        let r = reasons(&map(e), &map(e_a));
        assert!(mentions(&r, &["enum `E` at `attrs{}`", "`B`"]), "{r:?}");
        let r = reasons(&arr(r#""int""#), &map(r#""int""#));
        assert!(!r.is_empty());
    }

    #[test]
    fn explains_named_types_whose_names_differ() {
        let of = |n: &str| rec(&format!(r#"{{"name":"x","type":{{"type":"enum","name":"{n}","symbols":["A"]}}}}"#));
        let r = reasons(&of("Old"), &of("New"));
        assert!(mentions(&r, &["`x`", "`t.Old`", "`t.New`", "different names"]), "{r:?}");
    }

    #[test]
    fn recursive_types_are_explained_without_looping() {
        let list = |extra: &str| {
            s(&format!(
                r#"{{"type":"record","name":"Node","fields":[{{"name":"v","type":"int"}}{extra},
                   {{"name":"next","type":["null","Node"],"default":null}}]}}"#
            ))
        };
        let old = list("");
        let new = list(r#",{"name":"w","type":"int"}"#);
        let r = reasons(&old, &new);
        assert!(mentions(&r, &["field `w`"]), "{r:?}");
        assert!(can_read(&old, &old).is_ok());
    }

    #[test]
    fn apache_avro_decides_and_its_error_is_kept_when_nothing_else_is_found() {
        // apache-avro compares a named type's later uses by name only, so a
        // use by name against a definition counts as a type mismatch even
        // when the definitions agree; the walker finds nothing, the verdict
        // stands, and apache-avro's message is reported.
        let addr = r#"{"type":"record","name":"Address","fields":[{"name":"city","type":"string"}]}"#;
        let old = rec(&format!(r#"{{"name":"billing","type":{addr}}},{{"name":"shipping","type":"Address"}}"#));
        let new = rec(&format!(r#"{{"name":"shipping","type":{addr}}},{{"name":"billing","type":"Address"}}"#));
        assert!(explain(&old, &new).is_empty());
        let r = can_read(&old, &new).expect_err("apache-avro's verdict");
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("shipping") && r[0].chars().count() <= 401, "{r:?}");
    }

    #[test]
    fn verbose_messages_name_level_version_and_direction() {
        let v1 = rec(r#"{"name":"a","type":"string"}"#);
        let v2 = rec(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        let problems = check("FULL", &v2, &[(7, v1)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("FULL: the new schema cannot read data written with version 7: field `b`"));
    }
}
