//! Topics: names, ids, configs and partitions, persisted in `meta.json`
//! (written atomically); each partition's log lives in
//! `topics/<topic>-<partition>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::batch::Header;
use crate::errors::Code;
use crate::log::{self, LogConfig, PartitionLog, ReadError, Recovered, Slice};
use crate::producers::{Aborted, Check, ProducerInfo};

/// A topic config the broker knows: its default and how a value is checked.
pub struct ConfigKey {
    pub name: &'static str,
    pub default: &'static str,
    /// What values are allowed, for the error message.
    pub allowed: &'static str,
    valid: fn(&str) -> bool,
}

fn long(v: &str) -> bool {
    v.parse::<i64>().is_ok_and(|n| n >= -1)
}
fn positive(v: &str) -> bool {
    v.parse::<i64>().is_ok_and(|n| n > 0)
}

/// Every topic config, with Kafka's defaults. Values the broker does not
/// implement (`LogAppendTime`, broker-side recompression) are refused at
/// creation rather than silently ignored.
pub const CONFIGS: &[ConfigKey] = &[
    ConfigKey {
        name: "cleanup.policy",
        default: "delete",
        allowed: "delete, compact, compact,delete",
        valid: |v| matches!(v, "delete" | "compact" | "compact,delete" | "delete,compact"),
    },
    ConfigKey { name: "compression.type", default: "producer", allowed: "producer", valid: |v| v == "producer" },
    ConfigKey { name: "delete.retention.ms", default: "86400000", allowed: "a number of ms ≥ 0", valid: long },
    ConfigKey { name: "max.message.bytes", default: "1048588", allowed: "a positive number of bytes", valid: positive },
    ConfigKey {
        name: "message.timestamp.type",
        default: "CreateTime",
        allowed: "CreateTime",
        valid: |v| v == "CreateTime",
    },
    ConfigKey { name: "min.compaction.lag.ms", default: "0", allowed: "a number of ms ≥ 0", valid: long },
    ConfigKey { name: "min.insync.replicas", default: "1", allowed: "1", valid: |v| v == "1" },
    ConfigKey { name: "retention.bytes", default: "-1", allowed: "a number of bytes, or -1", valid: long },
    ConfigKey { name: "retention.ms", default: "604800000", allowed: "a number of ms, or -1", valid: long },
    ConfigKey { name: "segment.bytes", default: "1073741824", allowed: "a positive number of bytes", valid: positive },
    ConfigKey { name: "segment.ms", default: "604800000", allowed: "a positive number of ms", valid: positive },
    ConfigKey {
        name: "unclean.leader.election.enable",
        default: "false",
        allowed: "true or false",
        valid: |v| matches!(v, "true" | "false"),
    },
];

/// Checks one config; the error names the key and what it allows.
pub fn check_config(name: &str, value: &str) -> Result<(), String> {
    let Some(k) = CONFIGS.iter().find(|k| k.name == name) else {
        return Err(format!("unknown topic config '{name}'"));
    };
    if (k.valid)(value) {
        Ok(())
    } else {
        Err(format!("invalid value '{value}' for topic config '{name}': this broker allows {}", k.allowed))
    }
}

/// Kafka's topic-name rule: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The outcome of appending one produce request's batches to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub log_start: i64,
}

/// One partition: its log behind a lock, and a watch on its end offset that
/// wakes long-polling fetches.
pub struct Partition {
    pub index: i32,
    log: Mutex<PartitionLog>,
    end: watch::Sender<i64>,
}

impl Partition {
    fn open(dir: &Path, index: i32, cfg: LogConfig) -> std::io::Result<(Partition, Recovered)> {
        let (log, rec) = PartitionLog::open(dir, cfg)?;
        let (end, _) = watch::channel(log.end());
        Ok((Partition { index, log: Mutex::new(log), end }, rec))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartitionLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends validated batches, checking producer sequences first.
    pub fn append(&self, batches: &[(Header, Bytes)]) -> Result<Appended, Code> {
        let mut log = self.lock();
        let mut first = None;
        for (h, raw) in batches {
            let base = match log.producers().check(h) {
                Check::Append => log.append(h, raw).map_err(|e| {
                    tracing::error!(error = %e, "append failed; answering KAFKA_STORAGE_ERROR");
                    Code::KafkaStorageError
                })?,
                Check::Duplicate(base) => base,
                Check::Refuse(code) => return Err(code),
            };
            first.get_or_insert(base);
        }
        self.end.send_replace(log.end());
        Ok(Appended { base_offset: first.unwrap_or(-1), log_start: log.log_start() })
    }

    /// Writes a transaction marker for `producer_id` (the transaction
    /// coordinator ending its transaction here); returns its offset.
    pub fn append_marker(&self, producer_id: i64, epoch: i16, commit: bool) -> std::io::Result<i64> {
        let raw = crate::batch::control_batch(producer_id, epoch, commit, 0, crate::now_ms());
        let h = Header::parse(&raw).expect("a marker the broker built");
        let mut log = self.lock();
        let offset = log.append(&h, &raw)?;
        self.end.send_replace(log.end());
        Ok(offset)
    }

    /// (log start, end offset).
    pub fn bounds(&self) -> (i64, i64) {
        let log = self.lock();
        (log.log_start(), log.end())
    }

    /// (log start, last stable offset, end offset).
    pub fn offsets(&self) -> (i64, i64, i64) {
        let log = self.lock();
        (log.log_start(), log.last_stable(), log.end())
    }

    /// Batches from `offset` on; read_committed stops at the last stable offset.
    pub fn read(&self, offset: i64, max_bytes: usize, read_committed: bool) -> Result<Option<Slice>, ReadError> {
        let log = self.lock();
        let limit = if read_committed { log.last_stable() } else { i64::MAX };
        log.read(offset, max_bytes, limit)
    }

    /// The aborted transactions with records between `from` and `to`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<Aborted> {
        self.lock().producers().aborted_between(from, to)
    }

    /// Every producer that wrote here.
    pub fn producers(&self) -> Vec<ProducerInfo> {
        self.lock().producers().describe()
    }

    pub fn watch_end(&self) -> watch::Receiver<i64> {
        self.end.subscribe()
    }

    /// The offset and timestamp of the first record at or after `ts`.
    pub fn offset_for_time(&self, ts: i64) -> std::io::Result<Option<(i64, i64)>> {
        let slice = self.lock().batch_at_time(ts);
        match slice {
            Some(s) => Ok(crate::batch::first_offset_at_or_after(&s.read()?, ts)),
            None => Ok(None),
        }
    }

    /// The offset and timestamp of the record with the highest timestamp.
    pub fn max_timestamp(&self) -> std::io::Result<Option<(i64, i64)>> {
        let found = self.lock().max_timestamp();
        match found {
            Some((ts, s)) => Ok(crate::batch::first_offset_at_or_after(&s.read()?, ts)),
            None => Ok(None),
        }
    }

    pub fn delete_before(&self, offset: i64) -> std::io::Result<i64> {
        self.lock().delete_before(offset)
    }

    pub fn enforce_retention(&self, now_ms: i64, retention_ms: i64, retention_bytes: i64) -> std::io::Result<i64> {
        self.lock().enforce_retention(now_ms, retention_ms, retention_bytes)
    }

    pub fn size(&self) -> u64 {
        self.lock().size()
    }

    /// Compacts the closed segments (a topic with `cleanup.policy=compact`).
    pub fn compact(&self, s: crate::compact::Settings) -> std::io::Result<crate::compact::Stats> {
        crate::compact::compact(&self.log, s)
    }

    pub fn max_producer_id(&self) -> i64 {
        self.lock().producers().max_id()
    }
}

/// A topic.
pub struct Topic {
    pub name: String,
    pub id: uuid::Uuid,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// A config's value: set explicitly, or the default.
    pub fn config(&self, name: &str) -> &str {
        self.configs
            .get(name)
            .map(String::as_str)
            .or_else(|| CONFIGS.iter().find(|k| k.name == name).map(|k| k.default))
            .unwrap_or("")
    }

    pub fn config_i64(&self, name: &str) -> i64 {
        self.config(name).parse().unwrap_or(-1)
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct TopicMeta {
    /// The topic id (a UUID), kept as text.
    id: String,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Meta {
    cluster_id: String,
    #[serde(default)]
    topics: BTreeMap<String, TopicMeta>,
}

/// Why a topic could not be created.
#[derive(Debug)]
pub struct CreateError {
    pub code: Code,
    pub message: String,
}

fn create_error(code: Code, message: impl Into<String>) -> CreateError {
    CreateError { code, message: message.into() }
}

/// All topics.
pub struct Topics {
    dir: PathBuf,
    fsync: bool,
    cluster_id: String,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises creations and deletions (and their `meta.json` writes).
    admin: Mutex<()>,
}

fn log_config(configs: &BTreeMap<String, String>, fsync: bool) -> LogConfig {
    let segment_bytes = configs.get("segment.bytes").and_then(|v| v.parse().ok()).unwrap_or(1 << 30);
    LogConfig { segment_bytes, fsync }
}

impl Topics {
    /// Opens (and recovers) every topic under `dir`.
    pub fn open(dir: &Path, fsync: bool) -> anyhow::Result<Topics> {
        std::fs::create_dir_all(dir.join("topics"))?;
        let meta_path = dir.join("meta.json");
        let meta: Meta = match std::fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{} is not valid broker metadata: {e}", meta_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let m = Meta { cluster_id: uuid::Uuid::new_v4().simple().to_string(), topics: BTreeMap::new() };
                log::write_atomically(&meta_path, &serde_json::to_vec_pretty(&m)?)?;
                m
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", meta_path.display())),
        };
        let topics = Topics {
            dir: dir.into(),
            fsync,
            cluster_id: meta.cluster_id.clone(),
            map: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
        };
        for (name, t) in &meta.topics {
            let topic = topics.open_topic(name, t)?;
            topics.map.write().unwrap().insert(name.clone(), Arc::new(topic));
        }
        Ok(topics)
    }

    fn open_topic(&self, name: &str, t: &TopicMeta) -> anyhow::Result<Topic> {
        let cfg = log_config(&t.configs, self.fsync);
        let mut partitions = vec![];
        for p in 0..t.partitions {
            let dir = self.dir.join("topics").join(format!("{name}-{p}"));
            let (part, rec) =
                Partition::open(&dir, p, cfg).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.display()))?;
            if let Some(reason) = &rec.reason {
                tracing::warn!(topic = name, partition = p, bytes = rec.truncated_bytes, %reason, "cut a torn or corrupt log tail (never acknowledged)");
            }
            partitions.push(Arc::new(part));
        }
        let id = uuid::Uuid::parse_str(&t.id)
            .map_err(|e| anyhow::anyhow!("topic '{name}' has an invalid id in meta.json: {e}"))?;
        Ok(Topic { name: name.into(), id, configs: t.configs.clone(), partitions })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.read().unwrap().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.map.read().unwrap().values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.get(topic).and_then(|t| usize::try_from(index).ok().and_then(|i| t.partitions.get(i).cloned()))
    }

    fn save(&self) -> anyhow::Result<()> {
        let map = self.map.read().unwrap();
        let meta = Meta {
            cluster_id: self.cluster_id.clone(),
            topics: map
                .values()
                .map(|t| {
                    let m = TopicMeta {
                        id: t.id.to_string(),
                        partitions: t.partitions.len() as i32,
                        configs: t.configs.clone(),
                    };
                    (t.name.clone(), m)
                })
                .collect(),
        };
        log::write_atomically(&self.dir.join("meta.json"), &serde_json::to_vec_pretty(&meta)?)?;
        Ok(())
    }

    /// Checks a creation request; returns the configs to store.
    pub fn validate(
        &self,
        name: &str,
        partitions: i32,
        replication: i16,
        configs: &[(String, Option<String>)],
    ) -> Result<BTreeMap<String, String>, CreateError> {
        if !valid_name(name) {
            return Err(create_error(
                Code::InvalidTopicException,
                format!("'{name}' is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"),
            ));
        }
        if self.get(name).is_some() {
            return Err(create_error(Code::TopicAlreadyExists, format!("topic '{name}' already exists")));
        }
        if partitions < 1 {
            return Err(create_error(Code::InvalidPartitions, "the number of partitions must be at least 1"));
        }
        if replication != 1 && replication != -1 {
            return Err(create_error(
                Code::InvalidReplicationFactor,
                format!("replication factor {replication} is larger than the 1 broker of this cluster"),
            ));
        }
        let mut out = BTreeMap::new();
        for (k, v) in configs {
            let Some(v) = v else { continue };
            check_config(k, v).map_err(|m| create_error(Code::InvalidConfig, m))?;
            out.insert(k.clone(), v.clone());
        }
        Ok(out)
    }

    /// Creates a topic (after [`Topics::validate`]).
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, CreateError> {
        let _admin = self.admin.lock().unwrap();
        if self.get(name).is_some() {
            return Err(create_error(Code::TopicAlreadyExists, format!("topic '{name}' already exists")));
        }
        let meta = TopicMeta { id: uuid::Uuid::new_v4().to_string(), partitions, configs };
        let topic = self.open_topic(name, &meta).map_err(|e| create_error(Code::KafkaStorageError, e.to_string()))?;
        let topic = Arc::new(topic);
        self.map.write().unwrap().insert(name.into(), topic.clone());
        self.save().map_err(|e| create_error(Code::KafkaStorageError, e.to_string()))?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Deletes a topic and its logs.
    pub fn delete(&self, name: &str) -> Result<(), Code> {
        let _admin = self.admin.lock().unwrap();
        let Some(topic) = self.map.write().unwrap().remove(name) else {
            return Err(Code::UnknownTopicOrPartition);
        };
        self.save().map_err(|_| Code::KafkaStorageError)?;
        for p in 0..topic.partitions.len() {
            let _ = std::fs::remove_dir_all(self.dir.join("topics").join(format!("{name}-{p}")));
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Adds partitions to a topic.
    pub fn add_partitions(&self, name: &str, count: i32) -> Result<(), CreateError> {
        let _admin = self.admin.lock().unwrap();
        let Some(old) = self.get(name) else {
            return Err(create_error(Code::UnknownTopicOrPartition, format!("no topic '{name}'")));
        };
        if count <= old.partitions.len() as i32 {
            return Err(create_error(
                Code::InvalidPartitions,
                format!("topic '{name}' has {} partitions; the new count must be larger", old.partitions.len()),
            ));
        }
        let cfg = log_config(&old.configs, self.fsync);
        let mut partitions = old.partitions.clone();
        for p in old.partitions.len() as i32..count {
            let dir = self.dir.join("topics").join(format!("{name}-{p}"));
            let (part, _) =
                Partition::open(&dir, p, cfg).map_err(|e| create_error(Code::KafkaStorageError, e.to_string()))?;
            partitions.push(Arc::new(part));
        }
        let topic = Topic { name: old.name.clone(), id: old.id, configs: old.configs.clone(), partitions };
        self.map.write().unwrap().insert(name.into(), Arc::new(topic));
        self.save().map_err(|e| create_error(Code::KafkaStorageError, e.to_string()))
    }

    /// Sets (`Some`) or removes (`None`) topic configs; `replace` starts from
    /// no configs at all (AlterConfigs) instead of the current ones
    /// (IncrementalAlterConfigs).
    pub fn alter_configs(
        &self,
        name: &str,
        changes: &[(String, Option<String>)],
        replace: bool,
        validate_only: bool,
    ) -> Result<(), CreateError> {
        let _admin = self.admin.lock().unwrap();
        let Some(old) = self.get(name) else {
            return Err(create_error(Code::UnknownTopicOrPartition, format!("no topic '{name}'")));
        };
        let mut configs = if replace { BTreeMap::new() } else { old.configs.clone() };
        for (k, v) in changes {
            match v {
                Some(v) => {
                    check_config(k, v).map_err(|m| create_error(Code::InvalidConfig, m))?;
                    configs.insert(k.clone(), v.clone());
                }
                None => {
                    configs.remove(k);
                }
            }
        }
        if validate_only {
            return Ok(());
        }
        let topic = Topic { name: old.name.clone(), id: old.id, configs, partitions: old.partitions.clone() };
        self.map.write().unwrap().insert(name.into(), Arc::new(topic));
        self.save().map_err(|e| create_error(Code::KafkaStorageError, e.to_string()))
    }
}
