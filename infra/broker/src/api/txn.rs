//! Transactions: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit,
//! EndTxn (the coordinator's logic is in [`crate::txn`]), DescribeProducers
//! and ListTransactions.

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;

use super::s;
use crate::errors::Code;
use crate::offsets::Committed;
use crate::server::Ctx;
use crate::{txn, State};

/// The error code of an outcome, fencing as the client's version knows it.
fn code(r: Result<(), Code>, version: i16, fenced_since: i16) -> i16 {
    r.err().unwrap_or(Code::None).for_version(version, fenced_since).code()
}

pub async fn add_partitions_to_txn(
    st: &State,
    req: AddPartitionsToTxnRequest,
    ctx: &Ctx,
) -> AddPartitionsToTxnResponse {
    let asked: Vec<(String, i32)> =
        req.v3_and_below_topics.iter().flat_map(|t| t.partitions.iter().map(|p| (t.name.to_string(), *p))).collect();
    let outcome = txn::add_partitions(
        st,
        &req.v3_and_below_transactional_id,
        req.v3_and_below_producer_id.0,
        req.v3_and_below_producer_epoch,
        &asked,
    );
    // Kafka names the unknown partitions and marks the others not attempted.
    let per_partition = |topic: &str, p: i32| match outcome {
        Err(Code::UnknownTopicOrPartition) if st.topics.partition(topic, p).is_some() => {
            Code::OperationNotAttempted.code()
        }
        _ => code(outcome, ctx.version, 2),
    };
    let results = req
        .v3_and_below_topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(per_partition(&t.name, *p))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default().with_name(t.name.clone()).with_results_by_partition(partitions)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub async fn add_offsets_to_txn(st: &State, req: AddOffsetsToTxnRequest, ctx: &Ctx) -> AddOffsetsToTxnResponse {
    let r = txn::add_offsets(st, &req.transactional_id, req.producer_id.0, req.producer_epoch, &req.group_id);
    AddOffsetsToTxnResponse::default().with_error_code(code(r, ctx.version, 2))
}

pub async fn txn_offset_commit(st: &State, req: TxnOffsetCommitRequest, ctx: &Ctx) -> TxnOffsetCommitResponse {
    let group = req.group_id.to_string();
    let mut offsets = vec![];
    let mut unknown = vec![];
    for t in &req.topics {
        for p in &t.partitions {
            if st.topics.partition(&t.name, p.partition_index).is_none() {
                unknown.push((t.name.to_string(), p.partition_index));
                continue;
            }
            let c = Committed {
                offset: p.committed_offset,
                leader_epoch: if ctx.version >= 2 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            };
            offsets.push((t.name.to_string(), p.partition_index, c));
        }
    }
    // KIP-447: a member of an older generation (a zombie) is fenced here.
    let member = if ctx.version >= 3 && (req.generation_id >= 0 || !req.member_id.is_empty()) {
        match st.groups.check_commit(&group, req.generation_id, &req.member_id, req.group_instance_id.as_deref()) {
            Code::None => Ok(()),
            c => Err(c),
        }
    } else {
        Ok(())
    };
    let outcome = member.and_then(|()| {
        txn::commit_offsets(st, &req.transactional_id, req.producer_id.0, req.producer_epoch, &group, offsets)
    });
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let c = if unknown.contains(&(t.name.to_string(), p.partition_index)) {
                        Code::UnknownTopicOrPartition.code()
                    } else {
                        code(outcome, ctx.version, 3)
                    };
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(c)
                })
                .collect();
            TxnOffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub async fn end_txn(st: &State, req: EndTxnRequest, ctx: &Ctx) -> EndTxnResponse {
    let r = txn::end(st, &req.transactional_id, req.producer_id.0, req.producer_epoch, req.committed);
    if let Err(e) = r {
        tracing::info!(transactional_id = %req.transactional_id.0, error = ?e, commit = req.committed, client = ctx.client_id, "EndTxn refused");
    }
    EndTxnResponse::default().with_error_code(code(r, ctx.version, 2))
}

pub async fn describe_producers(st: &State, req: DescribeProducersRequest, _ctx: &Ctx) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&i| {
                    let r = PartitionResponse::default().with_partition_index(i);
                    let Some(p) = st.topics.partition(&t.name, i) else {
                        return r.with_error_code(Code::UnknownTopicOrPartition.code());
                    };
                    let active = p
                        .producers()
                        .into_iter()
                        .map(|pr| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(pr.producer_id))
                                .with_producer_epoch(pr.epoch as i32)
                                .with_last_sequence(pr.last_sequence)
                                .with_last_timestamp(pr.last_timestamp)
                                .with_coordinator_epoch(0)
                                .with_current_txn_start_offset(pr.txn_start_offset)
                        })
                        .collect();
                    r.with_active_producers(active)
                })
                .collect();
            TopicResponse::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

pub async fn list_transactions(st: &State, req: ListTransactionsRequest, _ctx: &Ctx) -> ListTransactionsResponse {
    let states: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    let transaction_states = st
        .txns
        .list()
        .into_iter()
        .filter(|(_, pid, phase)| {
            (states.is_empty() || states.iter().any(|s| s == phase.name()))
                && (req.producer_id_filters.is_empty() || req.producer_id_filters.iter().any(|p| p.0 == *pid))
        })
        .map(|(id, _, phase)| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(s(&id)))
                .with_transaction_state(s(phase.name()))
        })
        .collect();
    ListTransactionsResponse::default().with_transaction_states(transaction_states)
}
