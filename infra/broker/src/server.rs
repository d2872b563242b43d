//! Connections: Kafka's framing (a 4-byte size, then the request), one task
//! per connection answering its requests in order, the version gate, and the
//! dispatch of each API to its handler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use crate::api;
use crate::errors::Code;
use crate::versions::{self, SUPPORTED};
use crate::State;

/// Kafka's `socket.request.max.bytes` default.
const MAX_FRAME: i32 = 100 * 1024 * 1024;

/// A connection's SASL state.
#[derive(Default)]
pub struct Session {
    /// SaslHandshake chose PLAIN.
    handshake: bool,
    /// The authenticated user.
    user: Option<String>,
}

/// What a handler knows about the request besides its body.
pub struct Ctx {
    pub version: i16,
    pub client_id: String,
    pub peer: SocketAddr,
}

/// Serves one connection until the client closes it or sends garbage.
pub async fn serve(state: Arc<State>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
    state.metrics.connections.inc();
    let mut session = Session::default();
    // Until the client closes the connection.
    while let Ok(size) = r.read_i32().await {
        if !(4..=MAX_FRAME).contains(&size) {
            tracing::warn!(%peer, size, "closing connection: request size out of range (malformed frame)");
            break;
        }
        let mut frame = vec![0u8; size as usize];
        if r.read_exact(&mut frame).await.is_err() {
            break;
        }
        state.metrics.bytes_in.inc_by(size as u64 + 4);
        match dispatch(&state, &mut session, Bytes::from(frame), peer).await {
            Ok(Some(resp)) => {
                state.metrics.bytes_out.inc_by(resp.len() as u64);
                if w.write_all(&resp).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(%peer, error = format!("{e:#}"), "closing connection: cannot serve request");
                break;
            }
        }
    }
    state.metrics.connections.dec();
}

/// Encodes a response: size, header (v0 for ApiVersions, KIP-511), body.
pub fn encode<T: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &T) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    let header_version = if api == ApiKey::ApiVersions { 0 } else { api.response_header_version(version) };
    ResponseHeader::default().with_correlation_id(correlation_id).encode(&mut out, header_version)?;
    body.encode(&mut out, version).with_context(|| format!("encoding {api:?} v{version} response"))?;
    let len = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

fn api_versions(error: Code, sasl: bool) -> ApiVersionsResponse {
    let keys = SUPPORTED
        .iter()
        .filter(|(api, _, _)| sasl || !versions::is_sasl(*api))
        .map(|(api, min, max)| {
            ApiVersion::default().with_api_key(*api as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect();
    ApiVersionsResponse::default().with_error_code(error.code()).with_api_keys(keys)
}

/// SASL/PLAIN: `authzid NUL user NUL password`; the user if the password matches.
fn plain_user(users: &std::collections::BTreeMap<String, String>, token: &[u8]) -> Option<String> {
    let mut parts = token.split(|b| *b == 0);
    let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    let user = std::str::from_utf8(user).ok()?;
    (users.get(user).map(String::as_bytes) == Some(password)).then(|| user.to_string())
}

fn sasl_handshake(state: &State, session: &mut Session, req: SaslHandshakeRequest) -> SaslHandshakeResponse {
    let resp = SaslHandshakeResponse::default().with_mechanisms(vec![StrBytes::from_static_str("PLAIN")]);
    if req.mechanism.as_str() != "PLAIN" || state.cfg.sasl_plain.is_none() {
        return resp.with_error_code(Code::UnsupportedSaslMechanism.code());
    }
    session.handshake = true;
    resp
}

fn sasl_authenticate(
    state: &State,
    session: &mut Session,
    req: SaslAuthenticateRequest,
    peer: SocketAddr,
) -> SaslAuthenticateResponse {
    let resp = SaslAuthenticateResponse::default();
    let Some(users) = state.cfg.sasl_plain.as_ref().filter(|_| session.handshake) else {
        return resp.with_error_code(Code::IllegalSaslState.code());
    };
    match plain_user(users, &req.auth_bytes) {
        Some(user) => {
            tracing::debug!(%peer, user, "authenticated");
            session.user = Some(user);
            resp
        }
        None => {
            tracing::warn!(%peer, "SASL/PLAIN authentication failed");
            resp.with_error_code(Code::SaslAuthenticationFailed.code()).with_error_message(Some(
                StrBytes::from_static_str("Authentication failed: invalid username or password"),
            ))
        }
    }
}

async fn dispatch(
    state: &State,
    session: &mut Session,
    mut frame: Bytes,
    peer: SocketAddr,
) -> anyhow::Result<Option<BytesMut>> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|_| anyhow!("unknown API key {key}"))?;
    let sasl = state.cfg.sasl_plain.is_some();
    if !versions::supported(api, version, sasl) {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with our range; the client retries with a version we have.
            let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            return Ok(Some(encode(api, 0, correlation_id, &api_versions(Code::UnsupportedVersion, sasl))?));
        }
        bail!("{api:?} v{version} is not supported (see ApiVersions)");
    }
    if sasl && session.user.is_none() && !(api == ApiKey::ApiVersions || versions::is_sasl(api)) {
        bail!("{api:?} before SASL authentication (this listener requires SASL/PLAIN)");
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))?;
    let ctx = Ctx { version, client_id: header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default(), peer };
    let started = Instant::now();
    let corr = header.correlation_id;
    let body = &mut frame;
    macro_rules! call {
        ($req:ty, $handler:path) => {{
            let req = <$req>::decode(body, version).with_context(|| format!("decoding {api:?} v{version}"))?;
            encode(api, version, corr, &$handler(state, req, &ctx).await)?
        }};
    }
    let out = match api {
        ApiKey::ApiVersions => {
            let _ = ApiVersionsRequest::decode(body, version)?;
            encode(api, version, corr, &api_versions(Code::None, sasl))?
        }
        ApiKey::SaslHandshake => {
            let req = SaslHandshakeRequest::decode(body, version)?;
            encode(api, version, corr, &sasl_handshake(state, session, req))?
        }
        ApiKey::SaslAuthenticate => {
            let req = SaslAuthenticateRequest::decode(body, version)?;
            encode(api, version, corr, &sasl_authenticate(state, session, req, peer))?
        }
        ApiKey::Metadata => call!(MetadataRequest, api::topics::metadata),
        ApiKey::DescribeCluster => call!(DescribeClusterRequest, api::topics::describe_cluster),
        ApiKey::CreateTopics => call!(CreateTopicsRequest, api::topics::create_topics),
        ApiKey::DeleteTopics => call!(DeleteTopicsRequest, api::topics::delete_topics),
        ApiKey::CreatePartitions => call!(CreatePartitionsRequest, api::topics::create_partitions),
        ApiKey::DescribeConfigs => call!(DescribeConfigsRequest, api::topics::describe_configs),
        ApiKey::IncrementalAlterConfigs => {
            call!(IncrementalAlterConfigsRequest, api::topics::incremental_alter_configs)
        }
        ApiKey::AlterConfigs => call!(AlterConfigsRequest, api::topics::alter_configs),
        ApiKey::Produce => {
            let req = ProduceRequest::decode(body, version)?;
            let acks = req.acks;
            let resp = api::records::produce(state, req, &ctx).await;
            if acks == 0 {
                state.metrics.observe(api, started);
                return Ok(None);
            }
            encode(api, version, corr, &resp)?
        }
        ApiKey::Fetch => call!(FetchRequest, api::records::fetch),
        ApiKey::ListOffsets => call!(ListOffsetsRequest, api::records::list_offsets),
        ApiKey::DeleteRecords => call!(DeleteRecordsRequest, api::records::delete_records),
        ApiKey::InitProducerId => call!(InitProducerIdRequest, api::records::init_producer_id),
        ApiKey::OffsetForLeaderEpoch => call!(OffsetForLeaderEpochRequest, api::records::offset_for_leader_epoch),
        ApiKey::AddPartitionsToTxn => call!(AddPartitionsToTxnRequest, api::txn::add_partitions_to_txn),
        ApiKey::AddOffsetsToTxn => call!(AddOffsetsToTxnRequest, api::txn::add_offsets_to_txn),
        ApiKey::TxnOffsetCommit => call!(TxnOffsetCommitRequest, api::txn::txn_offset_commit),
        ApiKey::EndTxn => call!(EndTxnRequest, api::txn::end_txn),
        ApiKey::DescribeProducers => call!(DescribeProducersRequest, api::txn::describe_producers),
        ApiKey::ListTransactions => call!(ListTransactionsRequest, api::txn::list_transactions),
        ApiKey::FindCoordinator => call!(FindCoordinatorRequest, api::groups::find_coordinator),
        ApiKey::JoinGroup => call!(JoinGroupRequest, api::groups::join_group),
        ApiKey::SyncGroup => call!(SyncGroupRequest, api::groups::sync_group),
        ApiKey::Heartbeat => call!(HeartbeatRequest, api::groups::heartbeat),
        ApiKey::LeaveGroup => call!(LeaveGroupRequest, api::groups::leave_group),
        ApiKey::OffsetCommit => call!(OffsetCommitRequest, api::groups::offset_commit),
        ApiKey::OffsetFetch => call!(OffsetFetchRequest, api::groups::offset_fetch),
        ApiKey::DescribeGroups => call!(DescribeGroupsRequest, api::groups::describe_groups),
        ApiKey::ListGroups => call!(ListGroupsRequest, api::groups::list_groups),
        ApiKey::DeleteGroups => call!(DeleteGroupsRequest, api::groups::delete_groups),
        _ => bail!("{api:?} is not implemented"),
    };
    state.metrics.observe(api, started);
    Ok(Some(out))
}
