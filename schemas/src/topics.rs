//! The topic catalog: names, keys, families and per-worker internal topics,
//! read from the one declarative definition in `infra/topics.toml`.
//!
//! Every binary takes its default topic names from here; the names stay
//! configurable per run.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// The declarative definition, embedded at compile time.
pub const TOPICS_TOML: &str = include_str!("../../infra/topics.toml");

/// One topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic configs set at creation (`cleanup.policy`, `retention.ms`).
    pub config: BTreeMap<String, String>,
    /// Co-partitioning family (`order`, `property`), `None` for DLQs.
    pub family: Option<String>,
    /// Short names of the records this topic carries (empty for internal topics).
    pub events: Vec<String>,
}

impl TopicSpec {
    /// A topic outside the catalog (tests, benchmarks): no family, no
    /// configs, replication factor 1.
    pub fn new(name: &str, partitions: i32) -> Self {
        TopicSpec {
            name: name.to_string(),
            partitions,
            replication_factor: 1,
            config: Default::default(),
            family: None,
            events: vec![],
        }
    }
}

/// The parsed catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub defaults: Defaults,
    pub family: Vec<Family>,
    pub workers: BTreeMap<String, WorkerTopics>,
    pub internal: Internal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub name: String,
    pub key: String,
    pub topics: Vec<FamilyTopic>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyTopic {
    pub name: String,
    pub events: Vec<String>,
    pub writer: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTopics {
    pub family: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Internal {
    pub dlq_partitions: i32,
    pub dlq_retention_ms: i64,
    pub state_retention_ms: i64,
    /// `segment.bytes` of the changelogs: a trimmed changelog frees whole
    /// segments below its latest snapshot, so smaller segments free sooner.
    pub state_segment_bytes: i64,
}

/// Per-run topic renames (`--topic orders=orders-v2`); every topic name a
/// binary uses goes through [`TopicNames::get`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopicNames {
    /// Use another topic name: `DEFAULT=ACTUAL`, repeatable (e.g. `--topic orders=orders-eu`).
    #[arg(long = "topic", value_name = "DEFAULT=ACTUAL", value_parser = crate::client::parse_kv)]
    pub renames: Vec<(String, String)>,
}

impl TopicNames {
    /// The actual name of a topic known by its default name.
    pub fn get(&self, default: &str) -> String {
        self.renames.iter().rev().find(|(d, _)| d == default).map_or_else(|| default.to_string(), |(_, a)| a.clone())
    }
}

/// Name of a worker's dead-letter topic.
pub fn dlq_topic(worker: &str) -> String {
    format!("{worker}.dlq")
}

/// Name of a worker's state changelog.
pub fn state_topic(worker: &str) -> String {
    format!("{worker}-state")
}

/// The embedded catalog.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    // The file is embedded at compile time and parsed by the tests below.
    CATALOG.get_or_init(|| toml::from_str(TOPICS_TOML).expect("infra/topics.toml is valid"))
}

impl Catalog {
    /// Every topic to create, with `partitions` overriding the default count
    /// of the co-partitioned topics (families and changelogs).
    pub fn specs(&self, partitions: Option<i32>) -> Vec<TopicSpec> {
        let parts = partitions.unwrap_or(self.defaults.partitions);
        let base = |retention: i64| {
            BTreeMap::from([
                ("cleanup.policy".to_string(), "delete".to_string()),
                ("retention.ms".to_string(), retention.to_string()),
            ])
        };
        let mut out = Vec::new();
        for fam in &self.family {
            for t in &fam.topics {
                out.push(TopicSpec {
                    name: t.name.clone(),
                    partitions: parts,
                    replication_factor: self.defaults.replication_factor,
                    config: base(self.defaults.retention_ms),
                    family: Some(fam.name.clone()),
                    events: t.events.clone(),
                });
            }
        }
        for (worker, w) in &self.workers {
            out.push(TopicSpec { family: Some(w.family.clone()), ..self.state_spec(worker, parts) });
            out.push(TopicSpec {
                name: dlq_topic(worker),
                partitions: self.internal.dlq_partitions,
                replication_factor: self.defaults.replication_factor,
                config: base(self.internal.dlq_retention_ms),
                family: None,
                events: vec![],
            });
        }
        out
    }

    /// A worker's changelog `<worker>-state` as the catalog creates it (no
    /// family: callers co-partition it with the worker's inputs).
    pub fn state_spec(&self, worker: &str, partitions: i32) -> TopicSpec {
        let config = BTreeMap::from([
            ("cleanup.policy".to_string(), "delete".to_string()),
            ("retention.ms".to_string(), self.internal.state_retention_ms.to_string()),
            ("segment.bytes".to_string(), self.internal.state_segment_bytes.to_string()),
        ]);
        TopicSpec {
            name: state_topic(worker),
            partitions,
            replication_factor: self.defaults.replication_factor,
            config,
            family: None,
            events: vec![],
        }
    }

    /// The family a topic belongs to.
    pub fn family_of(&self, topic: &str) -> Option<&Family> {
        self.family.iter().find(|f| f.topics.iter().any(|t| t.name == topic))
    }

    /// The topic that carries a record type.
    pub fn topic_of_record(&self, record: &str) -> Option<&str> {
        self.family
            .iter()
            .flat_map(|f| &f.topics)
            .find(|t| t.events.iter().any(|e| e == record))
            .map(|t| t.name.as_str())
    }
}

/// Checks that co-partitioned topics have one partition count.
///
/// `counts` maps topic name → partition count as the cluster reports it.
/// Returns one line naming the topics and their counts when they differ.
pub fn check_co_partitioned(counts: &[(String, i32)]) -> Result<i32, String> {
    let Some((first, n)) = counts.first() else {
        return Err("no topics to check".into());
    };
    if let Some((other, m)) = counts.iter().find(|(_, m)| m != n) {
        let all: Vec<String> = counts.iter().map(|(t, c)| format!("{t}={c}")).collect();
        return Err(format!(
            "co-partitioned topics differ in partition count ({first} has {n}, {other} has {m}; {}): \
             recreate them with one partition count",
            all.join(", ")
        ));
    }
    Ok(*n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts;
    use crate::events::*;

    #[test]
    fn catalog_parses_and_names_every_contract_once() {
        let c = catalog();
        let mut events: Vec<&str> =
            c.family.iter().flat_map(|f| &f.topics).flat_map(|t| t.events.iter().map(String::as_str)).collect();
        events.sort();
        let mut contracts: Vec<&str> = contracts::all().iter().map(|c| c.name).collect();
        contracts.sort();
        assert_eq!(events, contracts);
    }

    #[test]
    fn topic_enums_agree_with_the_catalog() {
        fn check<E: TopicEvent>() {
            let t = catalog().family.iter().flat_map(|f| &f.topics).find(|t| t.name == E::DEFAULT_TOPIC).unwrap();
            assert_eq!(t.events, E::RECORDS, "{}", E::DEFAULT_TOPIC);
        }
        check::<OrderEvent>();
        check::<PaymentEvent>();
        check::<FulfillmentEvent>();
        check::<LoyaltyEvent>();
        check::<ContractEvent>();
        check::<PropertyEvent>();
        check::<EvaluationEvent>();
    }

    #[test]
    fn specs_include_state_and_dlq_topics_and_never_compaction() {
        let specs = catalog().specs(Some(3));
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        for n in ["orders", "payment-state", "payment.dlq", "publication-state", "publication-evaluations"] {
            assert!(names.contains(&n), "{n} missing");
        }
        assert!(specs.iter().all(|s| s.config["cleanup.policy"] == "delete"));
        assert!(specs.iter().filter(|s| s.family.is_some()).all(|s| s.partitions == 3));
    }

    #[test]
    fn co_partition_check_names_the_topics_that_differ() {
        assert_eq!(check_co_partitioned(&[("a".into(), 6), ("b".into(), 6)]), Ok(6));
        let err = check_co_partitioned(&[("orders".into(), 6), ("payments".into(), 3)]).unwrap_err();
        assert!(err.contains("orders has 6") && err.contains("payments has 3"), "{err}");
    }
}
