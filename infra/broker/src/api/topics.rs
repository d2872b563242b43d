//! Metadata and topic administration: Metadata, CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeConfigs, IncrementalAlterConfigs.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{s, topic_name, NODE};
use crate::errors::Code;
use crate::server::Ctx;
use crate::topics::{valid_name, Topic, CONFIGS};
use crate::State;

/// Authorized-operation bit sets (bit n = ACL operation n), answered when a
/// client asks for them: everything a resource allows (no ACLs here).
/// Topic: READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
const TOPIC_OPERATIONS: i32 = 1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 10 | 1 << 11;
/// Cluster: CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE.
const CLUSTER_OPERATIONS: i32 = 1 << 5 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn topic_metadata(t: &Topic, version: i16, with_operations: bool) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            let mut m = MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(NODE)
                .with_replica_nodes(vec![NODE])
                .with_isr_nodes(vec![NODE]);
            if version >= 7 {
                m = m.with_leader_epoch(0);
            }
            m
        })
        .collect();
    let mut m = MetadataResponseTopic::default().with_name(Some(topic_name(&t.name))).with_partitions(partitions);
    if version >= 10 {
        m = m.with_topic_id(t.id);
    }
    if version >= 8 && with_operations {
        m = m.with_topic_authorized_operations(TOPIC_OPERATIONS);
    }
    m
}

fn unknown_topic(name: &str, code: Code) -> MetadataResponseTopic {
    MetadataResponseTopic::default().with_name(Some(topic_name(name))).with_error_code(code.code())
}

pub async fn metadata(st: &State, req: MetadataRequest, ctx: &Ctx) -> MetadataResponse {
    let v = ctx.version;
    let broker = MetadataResponseBroker::default()
        .with_node_id(NODE)
        .with_host(s(&st.advertised.0))
        .with_port(st.advertised.1 as i32);
    let mut resp = MetadataResponse::default().with_brokers(vec![broker]);
    if v >= 1 {
        resp = resp.with_controller_id(NODE);
    }
    if v >= 2 {
        resp = resp.with_cluster_id(Some(s(st.topics.cluster_id())));
    }
    if (8..=10).contains(&v) && req.include_cluster_authorized_operations {
        resp = resp.with_cluster_authorized_operations(CLUSTER_OPERATIONS);
    }
    let ops = req.include_topic_authorized_operations;
    let all = match &req.topics {
        None => true,
        Some(ts) => v == 0 && ts.is_empty(),
    };
    resp.topics = if all {
        st.topics.all().iter().map(|t| topic_metadata(t, v, ops)).collect()
    } else {
        let mut out = vec![];
        for rt in req.topics.unwrap_or_default() {
            let name = match (&rt.name, rt.topic_id.is_nil()) {
                (Some(n), _) => n.to_string(),
                (None, false) => match st.topics.all().into_iter().find(|t| t.id == rt.topic_id) {
                    Some(t) => t.name.clone(),
                    None => {
                        out.push(
                            MetadataResponseTopic::default()
                                .with_topic_id(rt.topic_id)
                                .with_error_code(Code::UnknownTopicOrPartition.code()),
                        );
                        continue;
                    }
                },
                (None, true) => continue,
            };
            if !valid_name(&name) {
                out.push(unknown_topic(&name, Code::InvalidTopicException));
                continue;
            }
            let topic = match st.topics.get(&name) {
                Some(t) => Some(t),
                None if st.cfg.auto_create_topics && (req.allow_auto_topic_creation || v < 4) => {
                    st.topics.create(&name, st.cfg.default_partitions, BTreeMap::new()).ok()
                }
                None => None,
            };
            match topic {
                Some(t) => out.push(topic_metadata(&t, v, ops)),
                None => out.push(unknown_topic(&name, Code::UnknownTopicOrPartition)),
            }
        }
        out
    };
    resp
}

pub async fn describe_cluster(st: &State, req: DescribeClusterRequest, _ctx: &Ctx) -> DescribeClusterResponse {
    let broker = describe_cluster_response::DescribeClusterBroker::default()
        .with_broker_id(NODE)
        .with_host(s(&st.advertised.0))
        .with_port(st.advertised.1 as i32);
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(s(st.topics.cluster_id()))
        .with_controller_id(NODE)
        .with_brokers(vec![broker]);
    if req.include_cluster_authorized_operations {
        resp.with_cluster_authorized_operations(CLUSTER_OPERATIONS)
    } else {
        resp
    }
}

pub async fn create_topics(st: &State, req: CreateTopicsRequest, ctx: &Ctx) -> CreateTopicsResponse {
    let mut results = vec![];
    for t in req.topics {
        let name = t.name.to_string();
        let partitions = if t.num_partitions == -1 { st.cfg.default_partitions } else { t.num_partitions };
        let configs: Vec<(String, Option<String>)> =
            t.configs.iter().map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))).collect();
        let mut r = CreatableTopicResult::default().with_name(t.name.clone());
        let outcome =
            if !t.assignments.is_empty() && t.assignments.iter().any(|a| a.broker_ids.iter().any(|b| *b != NODE)) {
                Err(crate::topics::CreateError {
                    code: Code::InvalidRequest,
                    message: "replica assignment names a broker other than 0".into(),
                })
            } else {
                let partitions = if t.assignments.is_empty() { partitions } else { t.assignments.len() as i32 };
                st.topics.validate(&name, partitions, t.replication_factor, &configs).and_then(|cfg| {
                    if req.validate_only {
                        Ok((uuid::Uuid::nil(), partitions, cfg))
                    } else {
                        st.topics.create(&name, partitions, cfg.clone()).map(|topic| (topic.id, partitions, cfg))
                    }
                })
            };
        match outcome {
            Ok((id, partitions, cfg)) => {
                if ctx.version >= 5 {
                    r = r.with_num_partitions(partitions).with_replication_factor(1).with_configs(Some(
                        CONFIGS
                            .iter()
                            .map(|k| {
                                let set = cfg.get(k.name);
                                CreatableTopicConfigs::default()
                                    .with_name(s(k.name))
                                    .with_value(Some(s(set.map(String::as_str).unwrap_or(k.default))))
                                    .with_config_source(if set.is_some() { SOURCE_TOPIC } else { SOURCE_DEFAULT })
                            })
                            .collect(),
                    ));
                }
                if ctx.version >= 7 {
                    r = r.with_topic_id(id);
                }
            }
            Err(e) => {
                tracing::info!(topic = name, error = e.message, "refused to create topic");
                r = r.with_error_code(e.code.code());
                if ctx.version >= 1 {
                    r = r.with_error_message(Some(s(&e.message)));
                }
            }
        }
        results.push(r);
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(st: &State, req: DeleteTopicsRequest, ctx: &Ctx) -> DeleteTopicsResponse {
    let mut names: Vec<String> = req.topic_names.iter().map(|n| n.to_string()).collect();
    names.extend(req.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.to_string())));
    let responses = names
        .into_iter()
        .map(|name| {
            let code = match st.topics.delete(&name) {
                Ok(()) => {
                    if let Err(e) = st.offsets.delete_topic(&name) {
                        tracing::error!(topic = name, error = %e, "could not delete the topic's committed offsets");
                    }
                    Code::None
                }
                Err(c) => c,
            };
            let mut r = DeletableTopicResult::default().with_name(Some(topic_name(&name))).with_error_code(code.code());
            if ctx.version >= 5 && code != Code::None {
                r = r.with_error_message(Some(s(&format!("cannot delete topic '{name}'"))));
            }
            r
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(st: &State, req: CreatePartitionsRequest, _ctx: &Ctx) -> CreatePartitionsResponse {
    let results = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.to_string();
            let outcome = if req.validate_only {
                match st.topics.get(&name) {
                    Some(old) if t.count > old.partitions.len() as i32 => Ok(()),
                    Some(_) => Err((Code::InvalidPartitions, "the new partition count must be larger".to_string())),
                    None => Err((Code::UnknownTopicOrPartition, format!("no topic '{name}'"))),
                }
            } else {
                st.topics.add_partitions(&name, t.count).map_err(|e| (e.code, e.message))
            };
            let r = CreatePartitionsTopicResult::default().with_name(t.name);
            match outcome {
                Ok(()) => r,
                Err((code, msg)) => r.with_error_code(code.code()).with_error_message(Some(s(&msg))),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

/// The broker-level configs DescribeConfigs shows for the node.
fn broker_configs(st: &State) -> Vec<(&'static str, String)> {
    vec![
        ("auto.create.topics.enable", st.cfg.auto_create_topics.to_string()),
        ("num.partitions", st.cfg.default_partitions.to_string()),
        ("group.initial.rebalance.delay.ms", st.cfg.groups.initial_delay.as_millis().to_string()),
        ("group.min.session.timeout.ms", st.cfg.groups.min_session.as_millis().to_string()),
        ("group.max.session.timeout.ms", st.cfg.groups.max_session.as_millis().to_string()),
        ("log.dirs", st.cfg.data_dir.display().to_string()),
        ("message.max.bytes", "1048588".into()),
        ("broker.id", "0".into()),
    ]
}

pub async fn describe_configs(st: &State, req: DescribeConfigsRequest, _ctx: &Ctx) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let wanted = |k: &str| res.configuration_keys.as_ref().is_none_or(|ks| ks.iter().any(|w| w.as_str() == k));
            let r = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let entry = |name: &str, value: &str, source: i8| {
                DescribeConfigsResourceResult::default()
                    .with_name(s(name))
                    .with_value(Some(s(value)))
                    .with_config_source(source)
                    .with_read_only(source != SOURCE_TOPIC && source != SOURCE_DEFAULT)
            };
            match res.resource_type {
                RESOURCE_TOPIC => match st.topics.get(&res.resource_name) {
                    Some(t) => r.with_configs(
                        CONFIGS
                            .iter()
                            .filter(|k| wanted(k.name))
                            .map(|k| {
                                let source = if t.configs.contains_key(k.name) { SOURCE_TOPIC } else { SOURCE_DEFAULT };
                                entry(k.name, t.config(k.name), source)
                            })
                            .collect(),
                    ),
                    None => r
                        .with_error_code(Code::UnknownTopicOrPartition.code())
                        .with_error_message(Some(s(&format!("no topic '{}'", res.resource_name.as_str())))),
                },
                RESOURCE_BROKER => r.with_configs(
                    broker_configs(st)
                        .iter()
                        .filter(|(k, _)| wanted(k))
                        .map(|(k, v)| entry(k, v, SOURCE_STATIC_BROKER))
                        .collect(),
                ),
                other => r
                    .with_error_code(Code::InvalidRequest.code())
                    .with_error_message(Some(s(&format!("resource type {other} has no configs here")))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn alter_result(resource_type: i8, name: &StrBytes) -> AlterConfigsResourceResponse {
    AlterConfigsResourceResponse::default().with_resource_type(resource_type).with_resource_name(name.clone())
}

/// Applies one resource's changes; `replace`: AlterConfigs (the given set replaces all).
fn alter_topic(
    st: &State,
    resource_type: i8,
    name: &StrBytes,
    changes: Result<Vec<(String, Option<String>)>, String>,
    replace: bool,
    validate_only: bool,
) -> (i16, Option<String>) {
    if resource_type != RESOURCE_TOPIC {
        return (Code::InvalidRequest.code(), Some("only topic configs can be altered on this broker".into()));
    }
    let changes = match changes {
        Ok(c) => c,
        Err(msg) => return (Code::InvalidConfig.code(), Some(msg)),
    };
    match st.topics.alter_configs(name, &changes, replace, validate_only) {
        Ok(()) => (0, None),
        Err(e) => (e.code.code(), Some(e.message)),
    }
}

pub async fn incremental_alter_configs(
    st: &State,
    req: IncrementalAlterConfigsRequest,
    _ctx: &Ctx,
) -> IncrementalAlterConfigsResponse {
    let responses = req
        .resources
        .into_iter()
        .map(|res| {
            // Operations: 0 set, 1 delete (APPEND/SUBTRACT apply to list configs, none here).
            let changes = res
                .configs
                .iter()
                .map(|c| match c.config_operation {
                    0 => Ok((c.name.to_string(), Some(c.value.as_ref().map(|v| v.to_string()).unwrap_or_default()))),
                    1 => Ok((c.name.to_string(), None)),
                    op => Err(format!("operation {op} on '{}' is not supported", c.name.as_str())),
                })
                .collect();
            let (code, msg) = alter_topic(st, res.resource_type, &res.resource_name, changes, false, req.validate_only);
            alter_result(res.resource_type, &res.resource_name)
                .with_error_code(code)
                .with_error_message(msg.as_deref().map(s))
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

pub async fn alter_configs(st: &State, req: AlterConfigsRequest, _ctx: &Ctx) -> AlterConfigsResponse {
    let responses = req
        .resources
        .into_iter()
        .map(|res| {
            let changes =
                Ok(res.configs.iter().map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))).collect());
            let (code, msg) = alter_topic(st, res.resource_type, &res.resource_name, changes, true, req.validate_only);
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name)
                .with_error_code(code)
                .with_error_message(msg.as_deref().map(s))
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}
