//! A Confluent-compatible schema registry (REST API v1), small enough to run
//! inside the dev stack and durable enough that schema ids survive restarts
//! and kill -9 (see [`store`]).
//!
//! It speaks what `schema_registry_converter` and Confluent's own clients
//! use: register/lookup, versions, schemas by id, compatibility config and
//! checks by Avro resolution rules ([`compat`]), soft and permanent deletes,
//! and Confluent's JSON errors (`{"error_code", "message"}`) everywhere.
//! Only the AVRO schema type is supported.

pub mod compat;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use store::{Entry, Reference, Store};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

const ACCEPTED_TYPES: &[&str] =
    &["application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json", "application/json"];

type Shared = Arc<Mutex<Store>>;
type Params = Query<HashMap<String, String>>;

/// A Confluent-style error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn subject_not_found(s: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 40401, format!("Subject '{s}' not found."))
    }
    fn version_not_found(v: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 40402, format!("Version {v} not found."))
    }
    fn schema_not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, format!("Schema {what} not found"))
    }
    fn invalid_schema(msg: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, format!("Invalid schema: {msg}"))
    }
    fn invalid_version(v: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{v}' is not a valid version id. Allowed values are between \
                 [1, 2^31-1] and the string \"latest\""
            ),
        )
    }
    fn invalid_level(l: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!("Invalid compatibility level '{l}'. Valid values are: {}", compat::LEVELS.join(", ")),
        )
    }
    fn storage(e: store::StoreError) -> Self {
        tracing::error!(error = %e, "schema log write failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, format!("Error in the backend data store: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        reply(self.status, body)
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, body))
}

fn lock(s: &Shared) -> MutexGuard<'_, Store> {
    // A panic while holding the lock would be a bug in this module; the
    // state itself is only changed after the log write succeeded.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Parses a JSON request body after checking its type and size.
fn json_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !ACCEPTED_TYPES.contains(&ct.as_str()) && ct != "application/octet-stream" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                415,
                format!("HTTP 415 Unsupported Media Type: {ct} (use one of {})", ACCEPTED_TYPES.join(", ")),
            ));
        }
    }
    let body = body.map_err(|e| {
        let status = e.status();
        ApiError::new(status, status.as_u16() as u32, format!("HTTP {}: {}", status.as_u16(), e.body_text()))
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, 422, format!("Unrecognized request body: {e}")))
}

#[derive(Debug, Deserialize)]
struct SchemaRequest {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

/// A version selector: a number or `latest`/`-1`.
enum VersionSel {
    Latest,
    Number(u32),
}

fn parse_version(v: &str) -> Result<VersionSel, ApiError> {
    if v == "latest" || v == "-1" {
        return Ok(VersionSel::Latest);
    }
    match v.parse::<u32>() {
        Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionSel::Number(n)),
        _ => Err(ApiError::invalid_version(v)),
    }
}

impl Store {
    fn level_of(&self, subject: &str) -> String {
        self.state
            .subjects
            .get(subject)
            .and_then(|s| s.level.clone())
            .or_else(|| self.state.global_level.clone())
            .unwrap_or_else(|| compat::DEFAULT_LEVEL.to_string())
    }

    /// Resolves a version selector to (version, schema id).
    fn find_version(&self, subject: &str, v: &str, deleted: bool) -> Result<(u32, u32), ApiError> {
        let sel = parse_version(v)?;
        let s = self.state.subjects.get(subject).filter(|s| s.versions.values().any(|v| deleted || !v.deleted));
        let s = s.ok_or_else(|| ApiError::subject_not_found(subject))?;
        let found = match sel {
            VersionSel::Latest => s.versions.iter().rev().find(|(_, r)| deleted || !r.deleted),
            VersionSel::Number(n) => s.versions.get_key_value(&n).filter(|(_, r)| deleted || !r.deleted),
        };
        found.map(|(n, r)| (*n, r.id)).ok_or_else(|| ApiError::version_not_found(v))
    }

    fn version_json(&self, subject: &str, version: u32, id: u32) -> Value {
        let rec = &self.state.schemas[&id];
        let mut v = json!({"subject": subject, "version": version, "id": id, "schema": rec.schema});
        decorate(&mut v, rec);
        v
    }

    /// Texts of the referenced schemas (depth-first), for parsing.
    fn referenced_texts(&self, refs: &[Reference], out: &mut Vec<String>, depth: usize) -> Result<(), ApiError> {
        if depth > 32 {
            return Err(ApiError::invalid_schema("schema references nest deeper than 32 levels"));
        }
        for r in refs {
            let (_, id) = self.find_version(&r.subject, &r.version.to_string(), false).map_err(|_| {
                ApiError::invalid_schema(format!(
                    "reference '{}' points at subject '{}' version {}, which does not exist",
                    r.name, r.subject, r.version
                ))
            })?;
            let rec = &self.state.schemas[&id];
            self.referenced_texts(&rec.references, out, depth + 1)?;
            out.push(rec.schema.clone());
        }
        Ok(())
    }

    fn parse(&self, schema: &str, refs: &[Reference]) -> Result<apache_avro::Schema, ApiError> {
        let mut texts = Vec::new();
        self.referenced_texts(refs, &mut texts, 0)?;
        compat::parse(schema, &texts).map_err(ApiError::invalid_schema)
    }

    /// Live versions of a subject with their parsed schemas, oldest first.
    fn live_parsed(&self, subject: &str) -> Result<Vec<(u32, apache_avro::Schema)>, ApiError> {
        let Some(s) = self.state.subjects.get(subject) else { return Ok(vec![]) };
        s.live()
            .map(|(n, id)| {
                let rec = &self.state.schemas[&id];
                self.parse(&rec.schema, &rec.references).map(|p| (n, p))
            })
            .collect()
    }

    /// The live version of `subject` holding the same canonical schema.
    fn lookup(&self, subject: &str, req: &SchemaRequest, deleted: bool) -> Option<(u32, u32)> {
        let canon = store::canonical(&req.schema);
        let s = self.state.subjects.get(subject)?;
        s.versions.iter().filter(|(_, r)| deleted || !r.deleted).find_map(|(n, r)| {
            let rec = &self.state.schemas[&r.id];
            (store::canonical(&rec.schema) == canon && rec.references == req.references).then_some((*n, r.id))
        })
    }
}

fn decorate(v: &mut Value, rec: &store::SchemaRec) {
    if rec.schema_type != "AVRO" {
        v["schemaType"] = json!(rec.schema_type);
    }
    if !rec.references.is_empty() {
        v["references"] = json!(rec.references);
    }
}

fn schema_type(req: &SchemaRequest) -> Result<String, ApiError> {
    let t = req.schema_type.clone().unwrap_or_else(|| "AVRO".into()).to_ascii_uppercase();
    if t != "AVRO" {
        return Err(ApiError::invalid_schema(format!("schema type {t} is not supported by this registry (AVRO only)")));
    }
    Ok(t)
}

async fn register(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: SchemaRequest = json_body(&headers, body)?;
    let schema_type = schema_type(&req)?;
    let mut store = lock(&st);
    let parsed = store.parse(&req.schema, &req.references)?;
    if let Some((version, id)) = store.lookup(&subject, &req, false) {
        return ok(store.version_json(&subject, version, id));
    }
    let level = store.level_of(&subject);
    let existing = store.live_parsed(&subject)?;
    let problems = compat::check(&level, &parsed, &existing);
    if !problems.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\": {}",
                problems.join("; ")
            ),
        ));
    }
    let key = (schema_type.clone(), store::canonical(&req.schema), req.references.clone());
    let mut entries = Vec::new();
    let id = match store.state.by_canonical.get(&key) {
        Some(id) => *id,
        None => {
            let id = store.state.max_id + 1;
            entries.push(Entry::Schema {
                id,
                schema_type,
                schema: req.schema.clone(),
                references: req.references.clone(),
            });
            id
        }
    };
    let version = store.state.subjects.get(&subject).map_or(0, |s| s.max_version) + 1;
    entries.push(Entry::Version { subject: subject.clone(), version, id });
    store.commit(entries).map_err(ApiError::storage)?;
    tracing::debug!(%subject, version, id, "schema registered");
    ok(store.version_json(&subject, version, id))
}

async fn lookup(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: SchemaRequest = json_body(&headers, body)?;
    schema_type(&req)?;
    let store = lock(&st);
    let deleted = flag(&q, "deleted");
    if !store.state.subjects.get(&subject).is_some_and(|s| s.versions.values().any(|v| deleted || !v.deleted)) {
        return Err(ApiError::subject_not_found(&subject));
    }
    store.parse(&req.schema, &req.references)?;
    match store.lookup(&subject, &req, deleted) {
        Some((version, id)) => ok(store.version_json(&subject, version, id)),
        None => Err(ApiError::schema_not_found("")),
    }
}

async fn list_subjects(AxState(st): AxState<Shared>, Query(q): Params) -> Result<Response, ApiError> {
    let store = lock(&st);
    let deleted = flag(&q, "deleted");
    let prefix = q.get("subjectPrefix").cloned().unwrap_or_default();
    let names: Vec<&String> = store
        .state
        .subjects
        .iter()
        .filter(|(n, s)| n.starts_with(&prefix) && s.versions.values().any(|v| deleted || !v.deleted))
        .map(|(n, _)| n)
        .collect();
    ok(json!(names))
}

async fn list_versions(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let store = lock(&st);
    let deleted = flag(&q, "deleted");
    let versions: Vec<u32> = store
        .state
        .subjects
        .get(&subject)
        .map(|s| s.versions.iter().filter(|(_, v)| deleted || !v.deleted).map(|(n, _)| *n).collect())
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    ok(json!(versions))
}

async fn get_version(
    AxState(st): AxState<Shared>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let store = lock(&st);
    let (version, id) = store.find_version(&subject, &v, flag(&q, "deleted"))?;
    ok(store.version_json(&subject, version, id))
}

async fn get_version_schema(
    AxState(st): AxState<Shared>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let store = lock(&st);
    let (_, id) = store.find_version(&subject, &v, flag(&q, "deleted"))?;
    raw_schema(&store.state.schemas[&id].schema)
}

fn raw_schema(text: &str) -> Result<Response, ApiError> {
    let mut r = (StatusCode::OK, text.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(r)
}

async fn referenced_by(
    AxState(st): AxState<Shared>,
    Path((subject, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = lock(&st);
    let (version, _) = store.find_version(&subject, &v, false)?;
    let mut ids: Vec<u32> = store
        .state
        .schemas
        .values()
        .filter(|r| r.references.iter().any(|x| x.subject == subject && x.version == version))
        .filter(|r| store.state.id_in_use(r.id))
        .map(|r| r.id)
        .collect();
    ids.sort();
    ok(json!(ids))
}

fn schema_by_id<'a>(store: &'a Store, id: &str) -> Result<&'a store::SchemaRec, ApiError> {
    id.parse::<u32>()
        .ok()
        .filter(|id| store.state.id_in_use(*id))
        .and_then(|id| store.state.schemas.get(&id))
        .ok_or_else(|| ApiError::schema_not_found(id))
}

async fn get_schema(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let store = lock(&st);
    let rec = schema_by_id(&store, &id)?;
    let mut v = json!({"schema": rec.schema});
    decorate(&mut v, rec);
    ok(v)
}

async fn get_schema_text(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let store = lock(&st);
    raw_schema(&schema_by_id(&store, &id)?.schema)
}

/// (subject, version) pairs that point at schema `id`, sorted.
fn usages(store: &Store, id: u32, deleted: bool) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = store
        .state
        .subjects
        .iter()
        .flat_map(|(s, sub)| {
            sub.versions
                .iter()
                .filter(move |(_, v)| v.id == id && (deleted || !v.deleted))
                .map(move |(n, _)| (s.clone(), *n))
        })
        .collect();
    out.sort();
    out
}

async fn get_schema_subjects(
    AxState(st): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let store = lock(&st);
    let rec = schema_by_id(&store, &id)?;
    let mut subjects: Vec<String> = usages(&store, rec.id, flag(&q, "deleted")).into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn get_schema_versions(
    AxState(st): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let store = lock(&st);
    let rec = schema_by_id(&store, &id)?;
    let list: Vec<Value> = usages(&store, rec.id, flag(&q, "deleted"))
        .into_iter()
        .map(|(s, v)| json!({"subject": s, "version": v}))
        .collect();
    ok(json!(list))
}

async fn schema_types() -> Result<Response, ApiError> {
    ok(json!(["AVRO"]))
}

async fn delete_subject(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let mut store = lock(&st);
    let permanent = flag(&q, "permanent");
    let Some(s) = store.state.subjects.get(&subject).filter(|s| !s.versions.is_empty()) else {
        return Err(ApiError::subject_not_found(&subject));
    };
    let live: Vec<u32> = s.live().map(|(n, _)| n).collect();
    let all: Vec<u32> = s.versions.keys().copied().collect();
    let targets = if permanent {
        if !live.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40405,
                format!("Subject '{subject}' was not deleted first before being permanently deleted"),
            ));
        }
        all
    } else {
        if live.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40404,
                format!("Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"),
            ));
        }
        live
    };
    let entries =
        targets.iter().map(|v| Entry::DeleteVersion { subject: subject.clone(), version: *v, permanent }).collect();
    store.commit(entries).map_err(ApiError::storage)?;
    ok(json!(targets))
}

async fn delete_version(
    AxState(st): AxState<Shared>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let mut store = lock(&st);
    let permanent = flag(&q, "permanent");
    let (version, _) = store.find_version(&subject, &v, permanent)?;
    let deleted = store.state.subjects[&subject].versions[&version].deleted;
    if permanent && !deleted {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40407,
            format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"),
        ));
    }
    store.commit(vec![Entry::DeleteVersion { subject, version, permanent }]).map_err(ApiError::storage)?;
    ok(json!(version))
}

async fn get_global_config(AxState(st): AxState<Shared>) -> Result<Response, ApiError> {
    let store = lock(&st);
    let level = store.state.global_level.clone().unwrap_or_else(|| compat::DEFAULT_LEVEL.into());
    ok(json!({"compatibilityLevel": level}))
}

async fn put_config(
    st: Shared,
    subject: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ConfigRequest = json_body(&headers, body)?;
    let level = req.compatibility.to_ascii_uppercase();
    if !compat::valid_level(&level) {
        return Err(ApiError::invalid_level(&req.compatibility));
    }
    let mut store = lock(&st);
    store.commit(vec![Entry::Config { subject, level: Some(level.clone()) }]).map_err(ApiError::storage)?;
    ok(json!({"compatibility": level}))
}

async fn put_global_config(
    AxState(st): AxState<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    put_config(st, None, headers, body).await
}

async fn delete_global_config(AxState(st): AxState<Shared>) -> Result<Response, ApiError> {
    let mut store = lock(&st);
    let old = store.state.global_level.clone().unwrap_or_else(|| compat::DEFAULT_LEVEL.into());
    store.commit(vec![Entry::Config { subject: None, level: None }]).map_err(ApiError::storage)?;
    ok(json!({"compatibilityLevel": old}))
}

async fn get_subject_config(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let store = lock(&st);
    match store.state.subjects.get(&subject).and_then(|s| s.level.clone()) {
        Some(level) => ok(json!({"compatibilityLevel": level})),
        None if flag(&q, "defaultToGlobal") => ok(json!({"compatibilityLevel": store.level_of(&subject)})),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    put_config(st, Some(subject), headers, body).await
}

async fn delete_subject_config(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let mut store = lock(&st);
    let Some(old) = store.state.subjects.get(&subject).and_then(|s| s.level.clone()) else {
        return Err(ApiError::subject_not_found(&subject));
    };
    store.commit(vec![Entry::Config { subject: Some(subject), level: None }]).map_err(ApiError::storage)?;
    ok(json!({"compatibilityLevel": old}))
}

async fn check_compatibility(
    st: Shared,
    subject: String,
    version: Option<String>,
    q: HashMap<String, String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: SchemaRequest = json_body(&headers, body)?;
    schema_type(&req)?;
    let store = lock(&st);
    let parsed = store.parse(&req.schema, &req.references)?;
    let level = store.level_of(&subject);
    let against = match version.as_deref() {
        None => store.live_parsed(&subject)?,
        Some(v) => {
            let sel = parse_version(v)?;
            let live = store.live_parsed(&subject)?;
            match sel {
                VersionSel::Latest if level.ends_with("_TRANSITIVE") => live,
                VersionSel::Latest => live.into_iter().last().into_iter().collect(),
                VersionSel::Number(_) => {
                    let (n, id) = store.find_version(&subject, v, false)?;
                    let rec = &store.state.schemas[&id];
                    vec![(n, store.parse(&rec.schema, &rec.references)?)]
                }
            }
        }
    };
    let problems = compat::check(&level, &parsed, &against);
    let mut body = json!({"is_compatible": problems.is_empty()});
    if flag(&q, "verbose") {
        body["messages"] = json!(problems);
    }
    ok(body)
}

async fn compat_version(
    AxState(st): AxState<Shared>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_compatibility(st, subject, Some(v), q, headers, body).await
}

async fn compat_all(
    AxState(st): AxState<Shared>,
    Path(subject): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_compatibility(st, subject, None, q, headers, body).await
}

async fn root() -> Result<Response, ApiError> {
    ok(json!({}))
}

async fn mode() -> Result<Response, ApiError> {
    ok(json!({"mode": "READWRITE"}))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, 405, "HTTP 405 Method Not Allowed")
}

/// The registry's routes over a store.
pub fn router(store: Store) -> Router {
    let shared: Shared = Arc::new(Mutex::new(store));
    Router::new()
        .route("/", get(root))
        .route("/mode", get(mode))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(list_versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(get_version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(get_version_schema))
        .route("/subjects/{subject}/versions/{version}/referencedby", get(referenced_by))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_schema_text))
        .route("/schemas/ids/{id}/subjects", get(get_schema_subjects))
        .route("/schemas/ids/{id}/versions", get(get_schema_versions))
        .route("/config", get(get_global_config).put(put_global_config).delete(delete_global_config))
        .route("/config/{subject}", get(get_subject_config).put(put_subject_config).delete(delete_subject_config))
        .route("/compatibility/subjects/{subject}/versions", post(compat_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(compat_version))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Serves the registry on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store)).with_graceful_shutdown(shutdown).await
}
