//! Registering the pipeline's contracts and setting the compatibility policy
//! on any Confluent-compatible schema registry.
//!
//! The policy is BACKWARD (a new schema must read data written with the
//! previous one). An incompatible evolution is refused with an error that
//! names the subject and what broke.

use std::time::Duration;

use serde_json::json;

use crate::codec::RegistryConfig;
use crate::contracts::{self, Contract};
use crate::topics;

/// The compatibility level the pipeline sets on the registry.
pub const DEFAULT_COMPATIBILITY: &str = "BACKWARD";

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("schema registry {url} unreachable after {attempts} attempts over {waited:?}: {message}")]
    Unreachable { url: String, attempts: u32, waited: Duration, message: String },
    #[error("schema for subject {subject} is incompatible with the registered versions: {message}")]
    Incompatible { subject: String, message: String },
    #[error("schema registry {url} refused {what} (HTTP {status}, error {code}): {message}")]
    Refused { url: String, what: String, status: u16, code: i64, message: String },
    #[error("schema registry {url}: {message}")]
    Client { url: String, message: String },
}

/// An error and its causes, `a: b: c` (reqwest's own text leaves out why a
/// request failed, e.g. "Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

/// One subject registered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registered {
    pub subject: String,
    pub id: u32,
}

/// A small admin client for the Confluent REST API.
pub struct RegistryAdmin {
    cfg: RegistryConfig,
    http: reqwest::Client,
}

impl RegistryAdmin {
    pub fn new(cfg: RegistryConfig) -> Result<Self, AdminError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .no_proxy()
            .build()
            .map_err(|e| AdminError::Client { url: cfg.url.clone(), message: e.to_string() })?;
        Ok(Self { cfg, http })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.cfg.url))
            .header("Accept", CONTENT_TYPE)
            .header("Content-Type", CONTENT_TYPE);
        if let Some((u, p)) = &self.cfg.basic_auth {
            r = r.basic_auth(u, Some(p));
        }
        r
    }

    async fn call(&self, what: &str, r: reqwest::RequestBuilder) -> Result<serde_json::Value, AdminError> {
        let url = self.cfg.url.clone();
        let resp = r.send().await.map_err(|e| AdminError::Unreachable {
            url: url.clone(),
            attempts: 1,
            waited: Duration::ZERO,
            message: error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let code = body["error_code"].as_i64().unwrap_or(status as i64);
        let message = body["message"].as_str().unwrap_or("no message").to_string();
        if status >= 500 || status == 429 {
            return Err(AdminError::Unreachable { url, attempts: 1, waited: Duration::ZERO, message });
        }
        Err(AdminError::Refused { url, what: what.to_string(), status, code, message })
    }

    /// Waits until the registry answers, retrying with capped exponential
    /// backoff for at most `patience` (each retry logged); the error names the URL.
    pub async fn wait_ready(&self, patience: Duration) -> Result<(), AdminError> {
        self.wait(patience, true).await
    }

    /// [`RegistryAdmin::wait_ready`] without logging the retries.
    pub async fn wait_answering(&self, patience: Duration) -> Result<(), AdminError> {
        self.wait(patience, false).await
    }

    async fn wait(&self, patience: Duration, log: bool) -> Result<(), AdminError> {
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.call("GET /subjects", self.req(reqwest::Method::GET, "/subjects")).await {
                Ok(_) => return Ok(()),
                Err(AdminError::Unreachable { message, .. }) => {
                    if start.elapsed() + delay > patience {
                        return Err(AdminError::Unreachable {
                            url: self.cfg.url.clone(),
                            attempts,
                            waited: start.elapsed(),
                            message,
                        });
                    }
                    if log {
                        tracing::warn!(url = %self.cfg.url, attempt = attempts, retry_in = ?delay, %message, "schema registry not reachable yet");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Sets the compatibility level globally (`subject = None`) or for a subject.
    pub async fn set_compatibility(&self, subject: Option<&str>, level: &str) -> Result<(), AdminError> {
        let path = match subject {
            Some(s) => format!("/config/{}", encode_path(s)),
            None => "/config".to_string(),
        };
        self.call("PUT config", self.req(reqwest::Method::PUT, &path).json(&json!({"compatibility": level})))
            .await
            .map(|_| ())
    }

    /// Registers `schema` under `subject` (returns the existing id when the
    /// same schema is already registered).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, AdminError> {
        let path = format!("/subjects/{}/versions", encode_path(subject));
        let body = json!({"schema": schema, "schemaType": "AVRO"});
        match self.call(&format!("register {subject}"), self.req(reqwest::Method::POST, &path).json(&body)).await {
            Ok(v) => v["id"].as_u64().map(|id| id as u32).ok_or_else(|| AdminError::Client {
                url: self.cfg.url.clone(),
                message: format!("register {subject}: answer has no id: {v}"),
            }),
            Err(AdminError::Refused { status: 409, message, .. }) => {
                Err(AdminError::Incompatible { subject: subject.to_string(), message })
            }
            Err(e) => Err(e),
        }
    }

    /// Registers every contract on the topic the catalog puts it on
    /// (`topic_of` may rename topics), after setting the global policy to
    /// [`DEFAULT_COMPATIBILITY`].
    pub async fn register_all(&self, topic_of: impl Fn(&str) -> String) -> Result<Vec<Registered>, AdminError> {
        self.set_compatibility(None, DEFAULT_COMPATIBILITY).await?;
        let mut out = Vec::new();
        for c in contracts::all() {
            let subject = contracts::subject(&topic_of(default_topic(c)), c.name);
            let id = self.register(&subject, &c.schema).await?;
            out.push(Registered { subject, id });
        }
        Ok(out)
    }
}

/// The catalog's topic for a contract.
fn default_topic(c: &Contract) -> &'static str {
    // Every contract is listed in infra/topics.toml; a test checks it.
    topics::catalog().topic_of_record(c.name).expect("contract listed in the topic catalog")
}

/// Percent-encodes a subject for a URL path segment.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
