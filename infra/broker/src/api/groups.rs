//! Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups,
//! DeleteGroups. The group state machine is in [`crate::group`].

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{s, topic_name, NODE};
use crate::errors::Code;
use crate::group::{JoinRequest, SyncRequest};
use crate::offsets::Committed;
use crate::server::Ctx;
use crate::State;

fn opt(x: &Option<StrBytes>) -> Option<String> {
    x.as_ref().map(|v| v.to_string())
}

pub async fn find_coordinator(st: &State, req: FindCoordinatorRequest, ctx: &Ctx) -> FindCoordinatorResponse {
    let (host, port) = (s(&st.advertised.0), st.advertised.1 as i32);
    if ctx.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| Coordinator::default().with_key(key).with_node_id(NODE).with_host(host.clone()).with_port(port))
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default().with_node_id(NODE).with_host(host).with_port(port)
}

pub async fn join_group(st: &State, req: JoinGroupRequest, ctx: &Ctx) -> JoinGroupResponse {
    let rebalance_timeout = if ctx.version >= 1 { req.rebalance_timeout_ms } else { req.session_timeout_ms };
    let r = st
        .groups
        .join(JoinRequest {
            group: req.group_id.to_string(),
            member_id: req.member_id.to_string(),
            instance_id: opt(&req.group_instance_id),
            client_id: ctx.client_id.clone(),
            client_host: format!("/{}", ctx.peer.ip()),
            session_timeout: Duration::from_millis(req.session_timeout_ms.max(0) as u64),
            rebalance_timeout: Duration::from_millis(rebalance_timeout.max(0) as u64),
            protocol_type: req.protocol_type.to_string(),
            protocols: req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
            require_known_member_id: ctx.version >= 4,
        })
        .await;
    let mut resp = JoinGroupResponse::default()
        .with_error_code(r.error.code())
        .with_generation_id(r.generation)
        .with_leader(s(&r.leader))
        .with_member_id(s(&r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|m| {
                    let jm =
                        JoinGroupResponseMember::default().with_member_id(s(&m.member_id)).with_metadata(m.metadata);
                    if ctx.version >= 5 {
                        jm.with_group_instance_id(m.instance_id.as_deref().map(s))
                    } else {
                        jm
                    }
                })
                .collect(),
        );
    // Before v7 the protocol name is a non-null string.
    resp.protocol_name = Some(s(r.protocol.as_deref().unwrap_or("")));
    if ctx.version >= 7 {
        resp.protocol_name = r.protocol.as_deref().map(s);
        resp.protocol_type = r.protocol_type.as_deref().map(s);
    }
    resp
}

pub async fn sync_group(st: &State, req: SyncGroupRequest, ctx: &Ctx) -> SyncGroupResponse {
    let r = st
        .groups
        .sync(SyncRequest {
            group: req.group_id.to_string(),
            generation: req.generation_id,
            member_id: req.member_id.to_string(),
            instance_id: opt(&req.group_instance_id),
            protocol_type: opt(&req.protocol_type),
            protocol: opt(&req.protocol_name),
            assignments: req.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect(),
        })
        .await;
    let resp = SyncGroupResponse::default().with_error_code(r.error.code()).with_assignment(r.assignment);
    if ctx.version >= 5 {
        resp.with_protocol_type(r.protocol_type.as_deref().map(s)).with_protocol_name(r.protocol.as_deref().map(s))
    } else {
        resp
    }
}

pub async fn heartbeat(st: &State, req: HeartbeatRequest, _ctx: &Ctx) -> HeartbeatResponse {
    let code = st.groups.heartbeat(&req.group_id, req.generation_id, &req.member_id, req.group_instance_id.as_deref());
    HeartbeatResponse::default().with_error_code(code.code())
}

pub async fn leave_group(st: &State, req: LeaveGroupRequest, ctx: &Ctx) -> LeaveGroupResponse {
    if ctx.version < 3 {
        let (code, _) = st.groups.leave(&req.group_id, &[(req.member_id.to_string(), None)]);
        return LeaveGroupResponse::default().with_error_code(code.code());
    }
    let members: Vec<(String, Option<String>)> =
        req.members.iter().map(|m| (m.member_id.to_string(), opt(&m.group_instance_id))).collect();
    let (_, codes) = st.groups.leave(&req.group_id, &members);
    let responses = req
        .members
        .into_iter()
        .zip(codes)
        .map(|(m, c)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(c.code())
        })
        .collect();
    LeaveGroupResponse::default().with_members(responses)
}

pub async fn offset_commit(st: &State, req: OffsetCommitRequest, ctx: &Ctx) -> OffsetCommitResponse {
    let group = req.group_id.to_string();
    let instance = if ctx.version >= 7 { req.group_instance_id.as_deref() } else { None };
    let mut code = st.groups.check_commit(&group, req.generation_id_or_member_epoch, &req.member_id, instance);
    let mut commits = vec![];
    let mut unknown = vec![];
    for t in &req.topics {
        let topic = st.topics.get(&t.name);
        for p in &t.partitions {
            if topic.as_ref().is_none_or(|t| p.partition_index < 0 || p.partition_index as usize >= t.partitions.len())
            {
                unknown.push((t.name.to_string(), p.partition_index));
                continue;
            }
            let c = Committed {
                offset: p.committed_offset,
                leader_epoch: if ctx.version >= 6 { p.committed_leader_epoch } else { -1 },
                metadata: opt(&p.committed_metadata),
            };
            commits.push((t.name.to_string(), p.partition_index, Some(c)));
        }
    }
    if code == Code::None && !commits.is_empty() {
        match st.offsets.commit(&group, &commits) {
            Ok(()) => {
                let partitions: Vec<(String, i32)> = commits.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
                st.txns.supersede(&group, &partitions);
            }
            Err(e) => {
                tracing::error!(group, error = %e, "cannot store committed offsets");
                code = Code::UnknownServerError;
            }
        }
    }
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let c = if unknown.contains(&(t.name.to_string(), p.partition_index)) {
                        Code::UnknownTopicOrPartition
                    } else {
                        code
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(c.code())
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// A partition's committed offset, or why it is not given.
type Fetched = (i32, Result<Option<Committed>, Code>);

/// One group's committed offsets: of the asked partitions (-1 where none),
/// or of all when `topics` is `None`. With `require_stable`, a partition
/// whose offsets an open transaction holds answers UNSTABLE_OFFSET_COMMIT
/// (the client retries), as Kafka does.
fn fetch_group(
    st: &State,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> BTreeMap<String, Vec<Fetched>> {
    let get = |t: &str, p: i32, c: Option<Committed>| {
        if require_stable && st.txns.pending(group, t, p) {
            (p, Err(Code::UnstableOffsetCommit))
        } else {
            (p, Ok(c))
        }
    };
    let mut out: BTreeMap<String, Vec<Fetched>> = BTreeMap::new();
    match topics {
        None => {
            for (t, p, c) in st.offsets.of_group(group) {
                let f = get(&t, p, Some(c));
                out.entry(t).or_default().push(f);
            }
        }
        Some(ts) => {
            for (t, ps) in ts {
                let v = ps.into_iter().map(|p| get(&t, p, st.offsets.get(group, &t, p))).collect();
                out.insert(t, v);
            }
        }
    }
    out
}

/// (offset, leader epoch, metadata, error code) as a response carries them.
fn committed_fields(c: &Result<Option<Committed>, Code>, version: i16) -> (i64, i32, Option<StrBytes>, i16) {
    match c {
        Ok(Some(c)) => {
            (c.offset, if version >= 5 { c.leader_epoch } else { -1 }, Some(s(c.metadata.as_deref().unwrap_or(""))), 0)
        }
        Ok(None) => (-1, -1, Some(s("")), 0),
        Err(code) => (-1, -1, Some(s("")), code.code()),
    }
}

pub async fn offset_fetch(st: &State, req: OffsetFetchRequest, ctx: &Ctx) -> OffsetFetchResponse {
    let v = ctx.version;
    if v >= 8 {
        let groups = req
            .groups
            .into_iter()
            .map(|g| {
                let asked =
                    g.topics.map(|ts| ts.into_iter().map(|t| (t.name.to_string(), t.partition_indexes)).collect());
                let topics = fetch_group(st, &g.group_id, asked, req.require_stable)
                    .into_iter()
                    .map(|(t, ps)| {
                        let partitions = ps
                            .into_iter()
                            .map(|(p, c)| {
                                let (offset, epoch, meta, code) = committed_fields(&c, v);
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(meta)
                                    .with_error_code(code)
                            })
                            .collect();
                        OffsetFetchResponseTopics::default().with_name(topic_name(&t)).with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let asked = req.topics.map(|ts| ts.into_iter().map(|t| (t.name.to_string(), t.partition_indexes)).collect());
    let topics = fetch_group(st, &req.group_id, asked, v >= 7 && req.require_stable)
        .into_iter()
        .map(|(t, ps)| {
            let partitions = ps
                .into_iter()
                .map(|(p, c)| {
                    let (offset, epoch, meta, code) = committed_fields(&c, v);
                    let r = OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_metadata(meta)
                        .with_error_code(code);
                    if v >= 5 {
                        r.with_committed_leader_epoch(epoch)
                    } else {
                        r
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default().with_name(topic_name(&t)).with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// Group: READ, DELETE, DESCRIBE (authorized-operation bits, no ACLs here).
const GROUP_OPERATIONS: i32 = 1 << 3 | 1 << 6 | 1 << 8;

pub async fn describe_groups(st: &State, req: DescribeGroupsRequest, ctx: &Ctx) -> DescribeGroupsResponse {
    let with_operations = ctx.version >= 3 && req.include_authorized_operations;
    let groups = req
        .groups
        .into_iter()
        .map(|g| {
            let mut d = DescribedGroup::default().with_group_id(g.clone());
            if with_operations {
                d = d.with_authorized_operations(GROUP_OPERATIONS);
            }
            match st.groups.describe(&g) {
                Some(desc) => d
                    .with_group_state(s(desc.state))
                    .with_protocol_type(s(&desc.protocol_type))
                    .with_protocol_data(s(&desc.protocol))
                    .with_members(
                        desc.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(&m.member_id))
                                    .with_group_instance_id(m.instance_id.as_deref().map(s))
                                    .with_client_id(s(&m.client_id))
                                    .with_client_host(s(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
                // Kafka describes an unknown group as Dead, without an error.
                None if st.offsets.of_group(&g).is_empty() => d.with_group_state(s("Dead")),
                None => d.with_group_state(s("Empty")).with_protocol_type(s("consumer")),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn list_groups(st: &State, req: ListGroupsRequest, ctx: &Ctx) -> ListGroupsResponse {
    let mut all: BTreeMap<String, (String, &'static str)> =
        st.offsets.groups().into_iter().map(|g| (g, ("consumer".to_string(), "Empty"))).collect();
    for (g, pt, state) in st.groups.list() {
        all.insert(g, (pt, state));
    }
    let groups = all
        .into_iter()
        .filter(|(_, (_, state))| {
            req.states_filter.is_empty() || req.states_filter.iter().any(|f| f.as_str() == *state)
        })
        .map(|(g, (pt, state))| {
            let l = ListedGroup::default().with_group_id(GroupId(s(&g))).with_protocol_type(s(&pt));
            if ctx.version >= 4 {
                l.with_group_state(s(state))
            } else {
                l
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(st: &State, req: DeleteGroupsRequest, _ctx: &Ctx) -> DeleteGroupsResponse {
    let results = req
        .groups_names
        .into_iter()
        .map(|g| {
            let code = match st.groups.delete(&g) {
                Err(c) => c,
                Ok(known) => {
                    let had_offsets = !st.offsets.of_group(&g).is_empty();
                    match st.offsets.delete_group(&g) {
                        Err(e) => {
                            tracing::error!(group = g.as_str(), error = %e, "cannot delete the group's offsets");
                            Code::UnknownServerError
                        }
                        Ok(()) if known || had_offsets => Code::None,
                        Ok(()) => Code::GroupIdNotFound,
                    }
                }
            };
            DeletableGroupResult::default().with_group_id(g).with_error_code(code.code())
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
