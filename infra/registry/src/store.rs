//! The registry's state and its durable, crash-safe log.
//!
//! Every change is one JSON line appended to `schemas.log` and fsynced before
//! the answer is sent, so an acknowledged registration survives kill -9. On
//! start the log is replayed; a torn last line (a crash mid-write) is cut off
//! and reported. Ids are never reused: the next id is one above the highest
//! ever logged, so a restart can never hand an old id to a new schema.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the log inside the data directory.
pub const LOG_FILE: &str = "schemas.log";

/// A reference from one schema to another subject's version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

/// One logged change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Entry {
    /// A new schema got a global id.
    Schema { id: u32, schema_type: String, schema: String, references: Vec<Reference> },
    /// A subject got a new version pointing at a schema id.
    Version { subject: String, version: u32, id: u32 },
    /// A version was soft- or permanently deleted.
    DeleteVersion { subject: String, version: u32, permanent: bool },
    /// A compatibility level was set (`level = None`: removed); `subject = None` is global.
    Config { subject: Option<String>, level: Option<String> },
}

#[derive(Debug, Clone)]
pub struct SchemaRec {
    pub id: u32,
    pub schema_type: String,
    /// The text as first registered.
    pub schema: String,
    pub references: Vec<Reference>,
}

#[derive(Debug, Clone, Copy)]
pub struct VersionRec {
    pub id: u32,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub versions: BTreeMap<u32, VersionRec>,
    /// Highest version ever used (deleted ones count).
    pub max_version: u32,
    pub level: Option<String>,
}

impl Subject {
    /// Live (not soft-deleted) versions, ascending.
    pub fn live(&self) -> impl DoubleEndedIterator<Item = (u32, u32)> + '_ {
        self.versions.iter().filter(|(_, v)| !v.deleted).map(|(n, v)| (*n, v.id))
    }
}

/// In-memory state rebuilt from the log.
#[derive(Debug, Default)]
pub struct State {
    pub schemas: BTreeMap<u32, SchemaRec>,
    /// (type, canonical text, references) → id.
    pub by_canonical: HashMap<(String, String, Vec<Reference>), u32>,
    pub subjects: BTreeMap<String, Subject>,
    pub global_level: Option<String>,
    pub max_id: u32,
}

/// The canonical form used to recognise "the same schema": the JSON value
/// re-serialized compactly with sorted keys, so whitespace and key order do
/// not matter but docs, defaults and aliases do. Non-JSON text is kept as is.
pub fn canonical(schema: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(schema) {
        Ok(v) => v.to_string(),
        Err(_) => schema.trim().to_string(),
    }
}

impl State {
    fn apply(&mut self, e: Entry) {
        match e {
            Entry::Schema { id, schema_type, schema, references } => {
                let key = (schema_type.clone(), canonical(&schema), references.clone());
                self.by_canonical.entry(key).or_insert(id);
                self.max_id = self.max_id.max(id);
                self.schemas.insert(id, SchemaRec { id, schema_type, schema, references });
            }
            Entry::Version { subject, version, id } => {
                let s = self.subjects.entry(subject).or_default();
                s.versions.insert(version, VersionRec { id, deleted: false });
                s.max_version = s.max_version.max(version);
            }
            Entry::DeleteVersion { subject, version, permanent } => {
                if let Some(s) = self.subjects.get_mut(&subject) {
                    if permanent {
                        s.versions.remove(&version);
                    } else if let Some(v) = s.versions.get_mut(&version) {
                        v.deleted = true;
                    }
                }
            }
            Entry::Config { subject: None, level } => self.global_level = level,
            Entry::Config { subject: Some(s), level } => self.subjects.entry(s).or_default().level = level,
        }
    }

    /// Whether any version (live or soft-deleted) still refers to schema `id`.
    pub fn id_in_use(&self, id: u32) -> bool {
        self.subjects.values().any(|s| s.versions.values().any(|v| v.id == id))
    }
}

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("schema log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("schema log {path} line {line} is corrupt (not the last line, so not a torn write): {message}")]
    Corrupt { path: PathBuf, line: usize, message: String },
}

/// The state plus its log file.
pub struct Store {
    pub state: State,
    path: PathBuf,
    file: File,
    /// Bytes cut off a torn last line at open, for the startup log.
    pub torn_bytes: u64,
}

impl Store {
    /// Opens (or creates) the log in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOG_FILE);
        let io = |source| StoreError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        let mut state = State::default();
        let mut good_len = 0u64;
        let mut lines = Vec::new();
        {
            let mut reader = BufReader::new(&file);
            loop {
                let mut buf = Vec::new();
                let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                lines.push(buf);
            }
        }
        let total = lines.len();
        for (i, buf) in lines.into_iter().enumerate() {
            let complete = buf.ends_with(b"\n");
            match serde_json::from_slice::<Entry>(&buf) {
                Ok(e) if complete => {
                    state.apply(e);
                    good_len += buf.len() as u64;
                }
                Ok(_) | Err(_) if i + 1 == total => break, // torn last line
                Ok(_) => unreachable!("only the last line can lack its newline"),
                Err(e) => return Err(StoreError::Corrupt { path: path.clone(), line: i + 1, message: e.to_string() }),
            }
        }
        let len = file.metadata().map_err(io)?.len();
        let torn_bytes = len - good_len;
        if torn_bytes > 0 {
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
        }
        Ok(Self { state, path, file, torn_bytes })
    }

    /// Appends and fsyncs the entries, then applies them.
    pub fn commit(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for e in &entries {
            // Entries are plain data; serializing them cannot fail.
            serde_json::to_writer(&mut buf, e).expect("log entry serializes");
            buf.push(b'\n');
        }
        let io = |source| StoreError::Io { path: self.path.clone(), source };
        self.file.write_all(&buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        for e in entries {
            self.state.apply(e);
        }
        Ok(())
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(id: u32, text: &str) -> Entry {
        Entry::Schema { id, schema_type: "AVRO".into(), schema: text.into(), references: vec![] }
    }

    #[test]
    fn replay_restores_ids_versions_and_config() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.commit(vec![schema(1, "\"string\""), Entry::Version { subject: "a".into(), version: 1, id: 1 }]).unwrap();
            s.commit(vec![Entry::Config { subject: None, level: Some("FULL".into()) }]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.state.max_id, 1);
        assert_eq!(s.state.subjects["a"].max_version, 1);
        assert_eq!(s.state.global_level.as_deref(), Some("FULL"));
    }

    #[test]
    fn torn_last_line_is_cut_and_later_writes_follow_a_clean_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.commit(vec![schema(1, "\"string\"")]).unwrap();
        }
        let path = dir.path().join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"op":"schema","id":2,"schema_ty"#).unwrap();
        drop(f);
        let mut s = Store::open(dir.path()).unwrap();
        assert!(s.torn_bytes > 0);
        assert_eq!(s.state.max_id, 1);
        s.commit(vec![schema(2, "\"long\"")]).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.state.max_id, 2);
        assert_eq!(s.torn_bytes, 0);
    }

    #[test]
    fn corruption_before_the_last_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), "garbage\n{\"op\":\"config\",\"subject\":null,\"level\":null}\n")
            .unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Corrupt { line: 1, .. })));
    }

    #[test]
    fn canonical_ignores_whitespace_and_key_order_but_not_defaults() {
        assert_eq!(canonical(r#"{"type": "string"}"#), canonical(r#"{ "type":"string" }"#));
        let a = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        let b = r#"{"name":"R","type":"record","fields":[{"type":"int","name":"a"}]}"#;
        let c = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#;
        assert_eq!(canonical(a), canonical(b));
        assert_ne!(canonical(a), canonical(c));
    }
}
