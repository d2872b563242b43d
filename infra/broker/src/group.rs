//! The classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup), after apache/kafka's `GroupCoordinator`:
//!
//! - **Phases.** Empty → PreparingRebalance (members rejoin) →
//!   CompletingRebalance (the leader's SyncGroup brings the assignment) →
//!   Stable. A join from a new member, a member leaving or timing out, or a
//!   changed subscription starts a rebalance.
//! - **Join phase.** Ends when every member has rejoined and no member id
//!   handed out with MEMBER_ID_REQUIRED is still pending, or when the
//!   largest rebalance timeout has passed; members that did not rejoin are
//!   dropped. LeaveGroup removes joining and pending members at once.
//! - **Static members** (`group.instance.id`) keep their assignment across a
//!   restart: a rejoin with an empty member id replaces the old id (which is
//!   fenced); in a Stable group a follower gets the current generation back
//!   without a rebalance.
//! - **Sessions.** Any request of a member counts as a heartbeat; a member
//!   silent past its session timeout is dropped (not while a Join or Sync of
//!   it is pending).
//! - **Commits** are checked here (generation and member), so a member
//!   dropped from the group cannot commit offsets.
//!
//! The whole state is in memory: after a broker restart members rejoin, as
//! after a coordinator move in Kafka; committed offsets are in [`crate::offsets`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::errors::Code;

/// Limits and timings of the coordinator.
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    /// Kafka's `group.initial.rebalance.delay.ms` (3 s there; 0 by default here:
    /// a dev broker should not make every test wait).
    pub initial_delay: Duration,
    pub min_session: Duration,
    pub max_session: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_delay: Duration::ZERO,
            min_session: Duration::from_millis(1000),
            max_session: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new member first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
}

/// One member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone)]
pub struct JoinMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone)]
pub struct JoinResponse {
    pub error: Code,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub members: Vec<JoinMember>,
}

impl JoinResponse {
    fn error(error: Code, member_id: &str) -> JoinResponse {
        JoinResponse {
            error,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.into(),
            members: vec![],
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone)]
pub struct SyncResponse {
    pub error: Code,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    fn error(error: Code) -> SyncResponse {
        SyncResponse { error, protocol_type: None, protocol: None, assignment: Bytes::new() }
    }
}

/// A member, as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    join: Option<oneshot::Sender<JoinResponse>>,
    sync: Option<oneshot::Sender<SyncResponse>>,
    assignment: Bytes,
    deadline: Instant,
    /// Order of arrival: the first member becomes the leader.
    seq: u64,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

struct Group {
    phase: Phase,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they expire.
    pending: HashMap<String, Instant>,
    /// group.instance.id → member id.
    statics: HashMap<String, String>,
    /// When the join phase ends at the latest.
    deadline: Instant,
    /// The join phase does not end before this (initial rebalance delay).
    not_before: Instant,
    next_seq: u64,
}

impl Group {
    fn new(now: Instant) -> Group {
        Group {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            deadline: now,
            not_before: now,
            next_seq: 0,
        }
    }

    fn join_response(&self, member_id: &str) -> JoinResponse {
        let protocol = self.protocol.clone().unwrap_or_default();
        let is_leader = self.leader.as_deref() == Some(member_id);
        let members = if is_leader {
            let mut ms: Vec<(&String, &Member)> = self.members.iter().collect();
            ms.sort_by_key(|(_, m)| m.seq);
            ms.into_iter()
                .map(|(id, m)| JoinMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata(&protocol),
                })
                .collect()
        } else {
            vec![]
        };
        JoinResponse {
            error: Code::None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.into(),
            members,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.phase == Phase::PreparingRebalance {
            return;
        }
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync.take() {
                let _ = tx.send(SyncResponse::error(Code::RebalanceInProgress));
            }
        }
        let timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::ZERO);
        self.not_before = if self.phase == Phase::Empty { now + initial_delay.min(timeout) } else { now };
        self.deadline = now + timeout;
        self.phase = Phase::PreparingRebalance;
    }

    fn maybe_complete(&mut self, now: Instant) {
        if self.phase != Phase::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join.is_some()) && self.pending.is_empty();
        if (all_joined && now >= self.not_before) || now >= self.deadline {
            self.complete(now);
        }
    }

    fn complete(&mut self, now: Instant) {
        let gone: Vec<String> =
            self.members.iter().filter(|(_, m)| m.join.is_none()).map(|(id, _)| id.clone()).collect();
        for id in gone {
            self.remove(&id);
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.iter().min_by_key(|(_, m)| m.seq).map(|(id, _)| id.clone());
        }
        self.phase = Phase::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let resp = self.join_response(&id);
            let m = self.members.get_mut(&id).unwrap();
            m.deadline = now + m.session_timeout;
            if let Some(tx) = m.join.take() {
                let _ = tx.send(resp);
            }
        }
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let mut first = self.members.values().next()?.protocols.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        first.retain(|p| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == p)));
        let mut votes: Vec<(usize, String)> = first
            .iter()
            .map(|p| {
                let n = self
                    .members
                    .values()
                    .filter(|m| m.protocols.iter().find(|(n, _)| first.contains(n)).is_some_and(|(n, _)| n == p))
                    .count();
                (n, p.clone())
            })
            .collect();
        // Most votes; among equals, the first listed.
        votes.reverse();
        votes.into_iter().max_by_key(|(n, _)| *n).map(|(_, p)| p)
    }

    fn remove(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            if let Some(inst) = &m.instance_id {
                if self.statics.get(inst).map(String::as_str) == Some(id) {
                    self.statics.remove(inst);
                }
            }
            if let Some(tx) = m.join {
                let _ = tx.send(JoinResponse::error(Code::UnknownMemberId, id));
            }
            if let Some(tx) = m.sync {
                let _ = tx.send(SyncResponse::error(Code::UnknownMemberId));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// After a member left or expired: rebalance, or finish the join phase.
    fn member_gone(&mut self, now: Instant, initial_delay: Duration) {
        if self.phase == Phase::PreparingRebalance {
            self.maybe_complete(now);
        } else if self.members.is_empty() {
            self.generation += 1;
            self.phase = Phase::Empty;
            self.protocol = None;
            self.leader = None;
        } else {
            self.prepare_rebalance(now, initial_delay);
            self.maybe_complete(now);
        }
    }

    fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), Code> {
        if !self.members.contains_key(member_id) {
            return Err(Code::UnknownMemberId);
        }
        if let Some(inst) = instance_id {
            if self.statics.get(inst).map(String::as_str) != Some(member_id) {
                return Err(Code::FencedInstanceId);
            }
        }
        Ok(())
    }
}

/// All groups.
pub struct Coordinator {
    cfg: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
}

fn new_member_id(prefix: &str) -> String {
    let prefix = if prefix.is_empty() { "member" } else { prefix };
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl Coordinator {
    pub fn new(cfg: GroupConfig) -> Coordinator {
        Coordinator { cfg, groups: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        let rx = match self.join_now(req) {
            Ok(resp) => return resp,
            Err(rx) => rx,
        };
        rx.await.unwrap_or_else(|_| JoinResponse::error(Code::UnknownMemberId, ""))
    }

    /// Answers at once, or returns the receiver of the answer at the end of the join phase.
    fn join_now(&self, req: JoinRequest) -> Result<JoinResponse, oneshot::Receiver<JoinResponse>> {
        let now = Instant::now();
        if req.group.is_empty() {
            return Ok(JoinResponse::error(Code::InvalidGroupId, &req.member_id));
        }
        if req.session_timeout < self.cfg.min_session || req.session_timeout > self.cfg.max_session {
            return Ok(JoinResponse::error(Code::InvalidSessionTimeout, &req.member_id));
        }
        let mut groups = self.lock();
        let g = groups.entry(req.group.clone()).or_insert_with(|| Group::new(now));
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Ok(JoinResponse::error(Code::InconsistentGroupProtocol, &req.member_id));
        }
        if !g.members.is_empty() {
            let same_type = g.protocol_type.as_deref() == Some(req.protocol_type.as_str());
            let shared = req.protocols.iter().any(|(p, _)| {
                g.members
                    .iter()
                    .filter(|(id, _)| **id != req.member_id)
                    .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == p))
            });
            if !same_type || !shared {
                return Ok(JoinResponse::error(Code::InconsistentGroupProtocol, &req.member_id));
            }
        }
        let mut member_id = req.member_id.clone();
        let mut immediate = false;
        if member_id.is_empty() {
            if let Some(inst) = &req.instance_id {
                member_id = new_member_id(inst);
                if let Some(old_id) = g.statics.get(inst).cloned() {
                    // A restarted static member takes over its old place.
                    let old = g.members.remove(&old_id).expect("static member");
                    let unchanged = old.protocols == req.protocols;
                    if let Some(tx) = old.join {
                        let _ = tx.send(JoinResponse::error(Code::FencedInstanceId, &old_id));
                    }
                    if let Some(tx) = old.sync {
                        let _ = tx.send(SyncResponse::error(Code::FencedInstanceId));
                    }
                    let was_leader = g.leader.as_deref() == Some(old_id.as_str());
                    if was_leader {
                        g.leader = Some(member_id.clone());
                    }
                    g.statics.insert(inst.clone(), member_id.clone());
                    self.add_member(g, &member_id, &req, old.assignment, now);
                    immediate = g.phase == Phase::Stable && unchanged && !was_leader;
                } else {
                    g.statics.insert(inst.clone(), member_id.clone());
                    self.add_member(g, &member_id, &req, Bytes::new(), now);
                }
            } else if req.require_known_member_id {
                member_id = new_member_id(&req.client_id);
                g.pending.insert(member_id.clone(), now + req.session_timeout);
                return Ok(JoinResponse::error(Code::MemberIdRequired, &member_id));
            } else {
                member_id = new_member_id(&req.client_id);
                self.add_member(g, &member_id, &req, Bytes::new(), now);
            }
        } else if g.pending.remove(&member_id).is_some() {
            self.add_member(g, &member_id, &req, Bytes::new(), now);
        } else {
            if let Err(code) = g.check_member(&member_id, req.instance_id.as_deref()) {
                return Ok(JoinResponse::error(code, &member_id));
            }
            let is_leader = g.leader.as_deref() == Some(member_id.as_str());
            let m = g.members.get_mut(&member_id).unwrap();
            let unchanged = m.protocols == req.protocols;
            m.protocols = req.protocols.clone();
            m.session_timeout = req.session_timeout;
            m.rebalance_timeout = req.rebalance_timeout;
            m.deadline = now + req.session_timeout;
            immediate =
                unchanged && (g.phase == Phase::CompletingRebalance || (g.phase == Phase::Stable && !is_leader));
        }
        if immediate {
            return Ok(g.join_response(&member_id));
        }
        let (tx, rx) = oneshot::channel();
        if let Some(old) = g.members.get_mut(&member_id).unwrap().join.replace(tx) {
            let _ = old.send(JoinResponse::error(Code::RebalanceInProgress, &member_id));
        }
        g.prepare_rebalance(now, self.cfg.initial_delay);
        g.maybe_complete(now);
        Err(rx)
    }

    fn add_member(&self, g: &mut Group, id: &str, req: &JoinRequest, assignment: Bytes, now: Instant) {
        if g.members.is_empty() {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        g.next_seq += 1;
        g.members.insert(
            id.into(),
            Member {
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: req.protocols.clone(),
                join: None,
                sync: None,
                assignment,
                deadline: now + req.session_timeout,
                seq: g.next_seq,
            },
        );
    }

    pub async fn sync(&self, req: SyncRequest) -> SyncResponse {
        let rx = match self.sync_now(req) {
            Ok(resp) => return resp,
            Err(rx) => rx,
        };
        rx.await.unwrap_or_else(|_| SyncResponse::error(Code::UnknownMemberId))
    }

    fn sync_now(&self, req: SyncRequest) -> Result<SyncResponse, oneshot::Receiver<SyncResponse>> {
        let now = Instant::now();
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(&req.group) else {
            return Ok(SyncResponse::error(Code::UnknownMemberId));
        };
        if let Err(code) = g.check_member(&req.member_id, req.instance_id.as_deref()) {
            return Ok(SyncResponse::error(code));
        }
        if req.generation != g.generation {
            return Ok(SyncResponse::error(Code::IllegalGeneration));
        }
        let mismatch = |mine: &Option<String>, theirs: &Option<String>| theirs.is_some() && theirs != mine;
        if mismatch(&g.protocol_type, &req.protocol_type) || mismatch(&g.protocol, &req.protocol) {
            return Ok(SyncResponse::error(Code::InconsistentGroupProtocol));
        }
        let ok = |g: &Group, assignment: Bytes| SyncResponse {
            error: Code::None,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            assignment,
        };
        match g.phase {
            Phase::Empty => Ok(SyncResponse::error(Code::UnknownMemberId)),
            Phase::PreparingRebalance => Ok(SyncResponse::error(Code::RebalanceInProgress)),
            Phase::Stable => {
                let m = g.members.get_mut(&req.member_id).unwrap();
                m.deadline = now + m.session_timeout;
                let a = m.assignment.clone();
                Ok(ok(g, a))
            }
            Phase::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = g.members.get_mut(&req.member_id).unwrap();
                m.deadline = now + m.session_timeout;
                m.sync = Some(tx);
                if g.leader.as_deref() == Some(req.member_id.as_str()) {
                    let given: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    for (id, m) in g.members.iter_mut() {
                        m.assignment = given.get(id).cloned().unwrap_or_default();
                    }
                    g.phase = Phase::Stable;
                    let (pt, p) = (g.protocol_type.clone(), g.protocol.clone());
                    for m in g.members.values_mut() {
                        if let Some(tx) = m.sync.take() {
                            let _ = tx.send(SyncResponse {
                                error: Code::None,
                                protocol_type: pt.clone(),
                                protocol: p.clone(),
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                }
                Err(rx)
            }
        }
    }

    pub fn heartbeat(&self, group: &str, generation: i32, member_id: &str, instance_id: Option<&str>) -> Code {
        let now = Instant::now();
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else { return Code::UnknownMemberId };
        if let Err(code) = g.check_member(member_id, instance_id) {
            return code;
        }
        let m = g.members.get_mut(member_id).unwrap();
        m.deadline = now + m.session_timeout;
        if generation != g.generation {
            return Code::IllegalGeneration;
        }
        match g.phase {
            Phase::PreparingRebalance => Code::RebalanceInProgress,
            Phase::Empty => Code::UnknownMemberId,
            Phase::CompletingRebalance | Phase::Stable => Code::None,
        }
    }

    /// Removes members (by id, or by instance id when the id is empty).
    pub fn leave(&self, group: &str, members: &[(String, Option<String>)]) -> (Code, Vec<Code>) {
        let now = Instant::now();
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return (Code::UnknownMemberId, members.iter().map(|_| Code::UnknownMemberId).collect());
        };
        let mut codes = vec![];
        for (id, inst) in members {
            let id = match (id.is_empty(), inst) {
                (true, Some(inst)) => g.statics.get(inst).cloned().unwrap_or_default(),
                _ => id.clone(),
            };
            if g.pending.remove(&id).is_some() {
                codes.push(Code::None);
            } else if g.members.contains_key(&id) {
                if let Some(inst) = inst {
                    if g.statics.get(inst) != Some(&id) {
                        codes.push(Code::FencedInstanceId);
                        continue;
                    }
                }
                g.remove(&id);
                codes.push(Code::None);
            } else {
                codes.push(Code::UnknownMemberId);
                continue;
            }
            g.member_gone(now, self.cfg.initial_delay);
        }
        let top = if members.len() == 1 { codes[0] } else { Code::None };
        (top, codes)
    }

    /// Whether a member may commit offsets for this generation.
    pub fn check_commit(&self, group: &str, generation: i32, member_id: &str, instance_id: Option<&str>) -> Code {
        let now = Instant::now();
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return if generation < 0 { Code::None } else { Code::IllegalGeneration };
        };
        if generation < 0 && g.members.is_empty() {
            return Code::None;
        }
        if g.phase == Phase::CompletingRebalance {
            return Code::RebalanceInProgress;
        }
        if let Err(code) = g.check_member(member_id, instance_id) {
            return code;
        }
        if generation != g.generation {
            return Code::IllegalGeneration;
        }
        let m = g.members.get_mut(member_id).unwrap();
        m.deadline = now + m.session_timeout;
        Code::None
    }

    /// Ends expired sessions, pending member ids and join phases.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.lock();
        for (name, g) in groups.iter_mut() {
            let before = g.pending.len();
            g.pending.retain(|_, expiry| *expiry > now);
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.join.is_none() && m.sync.is_none() && m.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                tracing::info!(group = name, member = id, "member's session expired; removing it");
                g.remove(id);
            }
            if !expired.is_empty() {
                g.member_gone(now, self.cfg.initial_delay);
            } else if before != g.pending.len() || g.phase == Phase::PreparingRebalance {
                g.maybe_complete(now);
            }
        }
    }

    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let groups = self.lock();
        let g = groups.get(group)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        let mut ms: Vec<(&String, &Member)> = g.members.iter().collect();
        ms.sort_by_key(|(_, m)| m.seq);
        Some(GroupDescription {
            state: g.phase.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: ms
                .into_iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group: (name, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let groups = self.lock();
        let mut out: Vec<_> = groups
            .iter()
            .map(|(n, g)| (n.clone(), g.protocol_type.clone().unwrap_or_default(), g.phase.name()))
            .collect();
        out.sort();
        out
    }

    /// Forgets an empty group; NON_EMPTY_GROUP while it has members.
    pub fn delete(&self, group: &str) -> Result<bool, Code> {
        let mut groups = self.lock();
        match groups.get(group) {
            Some(g) if !g.members.is_empty() => Err(Code::NonEmptyGroup),
            Some(_) => {
                groups.remove(group);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// (groups, members) in each phase, for /metrics.
    pub fn phase_counts(&self) -> Vec<(&'static str, usize, usize)> {
        let groups = self.lock();
        [Phase::Empty, Phase::PreparingRebalance, Phase::CompletingRebalance, Phase::Stable]
            .iter()
            .map(|p| {
                let gs: Vec<&Group> = groups.values().filter(|g| g.phase == *p).collect();
                (p.name(), gs.len(), gs.iter().map(|g| g.members.len()).sum())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member: &str) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    async fn join(c: &Coordinator) -> String {
        let r = c.join(req("")).await;
        assert_eq!(r.error, Code::MemberIdRequired);
        r.member_id
    }

    fn sync(leader: &str, generation: i32, members: &[&str]) -> SyncRequest {
        SyncRequest {
            group: "g".into(),
            generation,
            member_id: leader.into(),
            instance_id: None,
            protocol_type: None,
            protocol: None,
            assignments: members.iter().map(|m| (m.to_string(), Bytes::from(m.to_string()))).collect(),
        }
    }

    #[tokio::test]
    async fn two_members_join_one_generation_and_the_leader_assigns_both() {
        let c = std::sync::Arc::new(Coordinator::new(GroupConfig::default()));
        let a = join(&c).await;
        let ra = c.join(req(&a)).await;
        assert_eq!((ra.error, ra.generation, ra.members.len()), (Code::None, 1, 1));
        c.sync(sync(&a, 1, &[&a])).await;
        // b joins: a must rejoin (heartbeat says so), then both get generation 2.
        let b = join(&c).await;
        let c2 = c.clone();
        let b2 = b.clone();
        let jb = tokio::spawn(async move { c2.join(req(&b2)).await });
        tokio::task::yield_now().await;
        assert_eq!(c.heartbeat("g", 1, &a, None), Code::RebalanceInProgress);
        let ra = c.join(req(&a)).await;
        let rb = jb.await.unwrap();
        assert_eq!((ra.generation, rb.generation), (2, 2));
        assert_eq!((ra.leader.as_str(), ra.members.len(), rb.members.len()), (a.as_str(), 2, 0));
        let c3 = c.clone();
        let b3 = b.clone();
        let sb = tokio::spawn(async move { c3.sync(sync(&b3, 2, &[])).await });
        let sa = c.sync(sync(&a, 2, &[&a, &b])).await;
        assert_eq!(sa.assignment, Bytes::from(a.clone()));
        assert_eq!(sb.await.unwrap().assignment, Bytes::from(b.clone()));
        assert_eq!(c.describe("g").unwrap().state, "Stable");
    }

    #[tokio::test]
    async fn a_member_that_leaves_while_the_others_rejoin_does_not_hold_up_the_rebalance() {
        let c = std::sync::Arc::new(Coordinator::new(GroupConfig::default()));
        let a = join(&c).await;
        let b = join(&c).await;
        let (c2, a2) = (c.clone(), a.clone());
        let ja = tokio::spawn(async move { c2.join(req(&a2)).await });
        tokio::task::yield_now().await;
        // b has a pending id and would be waited for; it leaves instead.
        c.leave("g", &[(b.clone(), None)]);
        let ra = ja.await.unwrap();
        assert_eq!((ra.error, ra.members.len()), (Code::None, 1));
    }

    #[tokio::test]
    async fn a_dropped_member_cannot_commit() {
        let c = Coordinator::new(GroupConfig::default());
        let a = join(&c).await;
        c.join(req(&a)).await;
        assert_eq!(c.check_commit("g", 1, &a, None), Code::RebalanceInProgress);
        c.sync(sync(&a, 1, &[&a])).await;
        assert_eq!(c.check_commit("g", 1, &a, None), Code::None);
        c.leave("g", &[(a.clone(), None)]);
        assert_eq!(c.check_commit("g", 1, &a, None), Code::UnknownMemberId);
        assert_eq!(c.check_commit("g", -1, "", None), Code::None, "simple commit on an empty group");
    }

    #[tokio::test]
    async fn a_restarted_static_member_gets_its_assignment_back_without_a_rebalance() {
        let c = std::sync::Arc::new(Coordinator::new(GroupConfig::default()));
        let stat = |id: &str, inst: &str| JoinRequest { instance_id: Some(inst.into()), ..req(id) };
        let ra = c.join(stat("", "i-a")).await;
        let a = ra.member_id.clone();
        c.sync(sync(&a, 1, &[&a])).await;
        let (c2,) = (c.clone(),);
        let jb = tokio::spawn(async move { c2.join(stat("", "i-b")).await });
        tokio::task::yield_now().await;
        let ra = c.join(stat(&a, "i-a")).await;
        let rb = jb.await.unwrap();
        let b = rb.member_id.clone();
        let c3 = c.clone();
        let b3 = b.clone();
        let sb =
            tokio::spawn(
                async move { c3.sync(SyncRequest { instance_id: Some("i-b".into()), ..sync(&b3, 2, &[]) }).await },
            );
        c.sync(SyncRequest { instance_id: Some("i-a".into()), ..sync(&a, ra.generation, &[&a, &b]) }).await;
        sb.await.unwrap();
        // b restarts with an empty member id: same generation, old id fenced.
        let rb2 = c.join(stat("", "i-b")).await;
        assert_eq!((rb2.error, rb2.generation), (Code::None, 2));
        assert_eq!(c.heartbeat("g", 2, &b, Some("i-b")), Code::UnknownMemberId);
        let s = c.sync(SyncRequest { instance_id: Some("i-b".into()), ..sync(&rb2.member_id, 2, &[]) }).await;
        assert_eq!(s.assignment, Bytes::from(b));
    }

    #[tokio::test]
    async fn a_silent_member_is_dropped_after_its_session_timeout() {
        let c = Coordinator::new(GroupConfig::default());
        let short = |id: &str| JoinRequest { session_timeout: Duration::from_millis(1000), ..req(id) };
        let a = c.join(short("")).await.member_id;
        c.join(short(&a)).await;
        c.sync(sync(&a, 1, &[&a])).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.tick();
        assert_eq!(c.describe("g").unwrap().state, "Empty");
        assert_eq!(c.heartbeat("g", 1, &a, None), Code::UnknownMemberId);
    }
}
