//! The publication worker (docs/domain.md, the Unicorn Properties flow): joins
//! `contracts` and `properties` per property into exactly one
//! `PublicationEvaluationCompleted` per request.
//!
//! Per property it keeps the latest contract status; an update whose
//! `contract_last_modified_on` is older than the one held is stale and
//! ignored. A request whose description contains a moderated term, or whose
//! image matches a moderated pattern, is `DECLINED` at once with the reasons;
//! otherwise an `APPROVED` contract approves it and an ended one
//! (`CANCELLED`/`CLOSED`/`EXPIRED`) declines it with reason
//! `CONTRACT_<STATUS>`; without either (no contract, or a `DRAFT`) it waits
//! until the contract becomes one of them — the verdict is the same in
//! either arrival order.
//! A property that never gets a contract keeps its request pending (counted
//! by [`Worker::pending`]), never evaluated without one.
//!
//! An evaluation's cause (`causation_id`, and the input of its derived
//! `event_id`) is always its request, also when a contract update releases
//! it: one contract update may release several requests, and each must get
//! an id of its own. Its event time is that of the input that released it.

use std::collections::BTreeMap;

use keyflow_schemas::defaults::{MODERATED_IMAGE_PATTERNS, MODERATED_TERMS};
use keyflow_schemas::events::*;
use serde::{Deserialize, Serialize};

use super::{prune, require, Retention};
use crate::task::{Decision, Input, Rejected, Worker};

/// The publication worker's settings.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Terms that decline a description (case-insensitive substring).
    pub moderated_terms: Vec<String>,
    /// Patterns that decline an image URL (case-insensitive substring).
    pub moderated_image_patterns: Vec<String>,
    /// How long (event time) evaluated request ids are remembered.
    pub retention: Retention,
}

impl Default for Publication {
    fn default() -> Self {
        Self {
            moderated_terms: MODERATED_TERMS.iter().map(|t| t.to_string()).collect(),
            moderated_image_patterns: MODERATED_IMAGE_PATTERNS.iter().map(|t| t.to_string()).collect(),
            retention: Retention::default(),
        }
    }
}

/// The contract held for a property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldContract {
    pub contract_id: String,
    pub status: ContractStatus,
    pub last_modified_on: i64,
}

/// A request waiting for its contract: what its evaluation needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub request_id: String,
    pub metadata: EventMetadata,
}

/// Per property.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationState {
    pub contract: Option<HeldContract>,
    /// Requests waiting for an approved or ended contract, in arrival order.
    pub waiting: Vec<Waiting>,
    /// Evaluated request ids with their event time, within the retention.
    pub evaluated: BTreeMap<String, i64>,
    pub newest: i64,
}

/// Reason of a decline caused by a contract that ended.
pub fn contract_reason(status: ContractStatus) -> String {
    let name = match status {
        ContractStatus::Draft => "DRAFT",
        ContractStatus::Approved => "APPROVED",
        ContractStatus::Cancelled => "CANCELLED",
        ContractStatus::Closed => "CLOSED",
        ContractStatus::Expired => "EXPIRED",
    };
    format!("CONTRACT_{name}")
}

impl Publication {
    /// Reasons the content fails moderation (empty when it passes):
    /// `MODERATED_DESCRIPTION: <term>` and `MODERATED_IMAGE: <url>`.
    pub fn content_reasons(&self, r: &PublicationApprovalRequested) -> Vec<String> {
        let description = r.description.to_lowercase();
        let mut reasons: Vec<String> = self
            .moderated_terms
            .iter()
            .filter(|t| description.contains(&t.to_lowercase()))
            .map(|t| format!("MODERATED_DESCRIPTION: {t}"))
            .collect();
        for image in &r.images {
            let lower = image.to_lowercase();
            if self.moderated_image_patterns.iter().any(|p| lower.contains(&p.to_lowercase())) {
                reasons.push(format!("MODERATED_IMAGE: {image}"));
            }
        }
        reasons
    }

    fn evaluation(
        &self,
        s: &mut PublicationState,
        property_id: &str,
        w: &Waiting,
        at: i64,
        result: EvaluationResult,
        reasons: Vec<String>,
    ) -> AnyEvent {
        s.evaluated.insert(w.request_id.clone(), at);
        let mut metadata = derived_metadata(self.name(), &w.metadata, "PublicationEvaluationCompleted");
        metadata.occurred_at = at;
        PublicationEvaluationCompleted {
            metadata,
            request_id: w.request_id.clone(),
            property_id: property_id.into(),
            evaluation_result: result,
            reasons,
        }
        .into()
    }

    fn request(&self, s: &mut PublicationState, r: &PublicationApprovalRequested) -> Decision {
        if s.evaluated.contains_key(&r.request_id) || s.waiting.iter().any(|w| w.request_id == r.request_id) {
            return Decision::Ignore("request_already_seen");
        }
        let at = r.metadata.occurred_at;
        let w = Waiting { request_id: r.request_id.clone(), metadata: r.metadata.clone() };
        let reasons = self.content_reasons(r);
        let out = if !reasons.is_empty() {
            Some(self.evaluation(s, &r.property_id, &w, at, EvaluationResult::Declined, reasons))
        } else {
            match s.contract.as_ref().map(|c| c.status) {
                Some(ContractStatus::Approved) => {
                    Some(self.evaluation(s, &r.property_id, &w, at, EvaluationResult::Approved, vec![]))
                }
                // The contract ended before the request arrived: the same
                // verdict as when it ends while the request waits.
                Some(ended @ (ContractStatus::Cancelled | ContractStatus::Closed | ContractStatus::Expired)) => {
                    Some(self.evaluation(
                        s,
                        &r.property_id,
                        &w,
                        at,
                        EvaluationResult::Declined,
                        vec![contract_reason(ended)],
                    ))
                }
                None | Some(ContractStatus::Draft) => {
                    s.waiting.push(w);
                    None
                }
            }
        };
        Decision::Emit(out.into_iter().collect())
    }

    fn contract(&self, s: &mut PublicationState, c: &ContractStatusChanged) -> Decision {
        if s.contract.as_ref().is_some_and(|held| c.contract_last_modified_on < held.last_modified_on) {
            return Decision::Ignore("stale_contract_update");
        }
        s.contract = Some(HeldContract {
            contract_id: c.contract_id.clone(),
            status: c.contract_status,
            last_modified_on: c.contract_last_modified_on,
        });
        let verdict = match c.contract_status {
            ContractStatus::Draft => return Decision::Emit(vec![]),
            ContractStatus::Approved => (EvaluationResult::Approved, vec![]),
            ended => (EvaluationResult::Declined, vec![contract_reason(ended)]),
        };
        let at = c.metadata.occurred_at;
        let released = std::mem::take(&mut s.waiting);
        let out =
            released.iter().map(|w| self.evaluation(s, &c.property_id, w, at, verdict.0, verdict.1.clone())).collect();
        Decision::Emit(out)
    }
}

impl Worker for Publication {
    type State = PublicationState;

    fn name(&self) -> &'static str {
        "publication"
    }

    fn pending(&self, state: &PublicationState) -> usize {
        state.waiting.len()
    }

    async fn handle(&self, s: &mut PublicationState, input: &Input) -> Result<Decision, Rejected> {
        let decision = match &input.event {
            AnyEvent::Contract(ContractEvent::ContractStatusChanged(c)) => {
                require("contract_id", &c.contract_id)?;
                self.contract(s, c)
            }
            AnyEvent::Property(PropertyEvent::PublicationApprovalRequested(r)) => {
                require("request_id", &r.request_id)?;
                self.request(s, r)
            }
            other => return Err(Rejected(format!("the publication worker does not take {}", other.record_name()))),
        };
        if matches!(decision, Decision::Emit(_)) {
            s.newest = s.newest.max(input.event.metadata().occurred_at);
            prune(&mut s.evaluated, |at| *at, s.newest - self.retention.ms);
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::testing::{apply, meta, outputs};

    const P: &str = "NL/Utrecht/Oudegracht/1";

    fn contract(status: ContractStatus, modified: i64) -> AnyEvent {
        ContractStatusChanged {
            metadata: {
                let id = format!("contract-{status:?}-{modified}");
                meta("ContractStatusChanged", &id, modified, &id)
            },
            property_id: P.into(),
            contract_id: "k1".into(),
            contract_status: status,
            contract_last_modified_on: modified,
        }
        .into()
    }

    fn request_with(id: &str, at: i64, description: &str, images: &[&str]) -> AnyEvent {
        PublicationApprovalRequested {
            metadata: meta("PublicationApprovalRequested", &format!("{id}-event"), at, id),
            request_id: id.into(),
            property_id: P.into(),
            address: PropertyAddress {
                country: "NL".into(),
                city: "Utrecht".into(),
                street: "Oudegracht".into(),
                number: "1".into(),
            },
            description: description.into(),
            contract: ContractType::Sale,
            list_price_minor: 45_000_000,
            currency: "EUR".into(),
            images: images.iter().map(|s| s.to_string()).collect(),
        }
        .into()
    }

    fn request(id: &str, at: i64) -> AnyEvent {
        request_with(id, at, "Bright flat by the canal.", &["https://img.example/1.jpg"])
    }

    /// (request, result, reasons) of each evaluation.
    fn verdicts(events: &[AnyEvent]) -> Vec<(String, EvaluationResult, Vec<String>)> {
        events
            .iter()
            .map(|e| match e {
                AnyEvent::Evaluation(EvaluationEvent::PublicationEvaluationCompleted(v)) => {
                    (v.request_id.clone(), v.evaluation_result, v.reasons.clone())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    async fn run(events: Vec<AnyEvent>) -> (Vec<(String, EvaluationResult, Vec<String>)>, PublicationState) {
        let mut s = PublicationState::default();
        let out = outputs(&Publication::default(), &mut s, events).await;
        (verdicts(&out), s)
    }

    use ContractStatus::*;
    use EvaluationResult::{Approved as Yes, Declined as No};

    #[tokio::test]
    async fn all_good_is_approved_once_the_contract_is_approved() {
        let (v, _) = run(vec![contract(Draft, 1), contract(Approved, 2), request("r", 3)]).await;
        assert_eq!(v, [("r".into(), Yes, vec![])]);
    }

    #[tokio::test]
    async fn a_moderated_description_is_declined_at_once_even_with_an_approved_contract() {
        let bad = request_with("r", 3, "Guaranteed RETURN on this one, cash only!", &[]);
        let (v, _) = run(vec![contract(Approved, 1), bad]).await;
        assert_eq!(
            v,
            [(
                "r".into(),
                No,
                vec!["MODERATED_DESCRIPTION: guaranteed return".into(), "MODERATED_DESCRIPTION: cash only".into()]
            )]
        );
    }

    #[tokio::test]
    async fn a_moderated_image_is_declined_without_waiting_for_a_contract() {
        let bad = request_with("r", 3, "Nice.", &["https://img/1.jpg", "https://img/NSFW/2.jpg"]);
        let (v, s) = run(vec![bad]).await;
        assert_eq!(v, [("r".into(), No, vec!["MODERATED_IMAGE: https://img/NSFW/2.jpg".into()])]);
        assert!(s.waiting.is_empty());
    }

    #[tokio::test]
    async fn without_a_contract_a_request_stays_pending_and_is_never_evaluated() {
        let w = Publication::default();
        let mut s = PublicationState::default();
        let out = outputs(&w, &mut s, vec![request("r", 1), request("r2", 2)]).await;
        assert!(out.is_empty());
        assert_eq!(w.pending(&s), 2, "visible as pending work");
    }

    #[tokio::test]
    async fn a_request_before_the_approval_is_approved_when_it_comes() {
        let (v, s) = run(vec![contract(Draft, 1), request("r", 2), contract(Approved, 3)]).await;
        assert_eq!(v, [("r".into(), Yes, vec![])]);
        assert!(s.waiting.is_empty());
    }

    #[tokio::test]
    async fn a_request_before_any_contract_is_approved_when_it_comes() {
        let (v, _) = run(vec![request("r", 1), contract(Draft, 2), contract(Approved, 3)]).await;
        assert_eq!(v, [("r".into(), Yes, vec![])]);
    }

    #[tokio::test]
    async fn a_contract_that_ends_while_requests_wait_declines_each_once() {
        for (status, reason) in
            [(Cancelled, "CONTRACT_CANCELLED"), (Closed, "CONTRACT_CLOSED"), (Expired, "CONTRACT_EXPIRED")]
        {
            let (v, _) = run(vec![
                contract(Draft, 1),
                request("a", 2),
                request("b", 3),
                contract(status, 4),
                contract(Approved, 5),
            ])
            .await;
            assert_eq!(v, [("a".into(), No, vec![reason.into()]), ("b".into(), No, vec![reason.into()])]);
        }
    }

    #[tokio::test]
    async fn a_request_after_its_contract_ended_is_declined_as_if_it_had_waited() {
        let before = run(vec![contract(Draft, 1), request("r", 2), contract(Expired, 3)]).await.0;
        let after = run(vec![contract(Draft, 1), contract(Expired, 3), request("r", 2)]).await.0;
        assert_eq!(before, [("r".into(), No, vec!["CONTRACT_EXPIRED".into()])]);
        assert_eq!(after, before, "either arrival order gives the same verdict");
    }

    #[tokio::test]
    async fn a_new_draft_contract_makes_requests_wait_again() {
        let (v, s) = run(vec![contract(Approved, 1), request("a", 2), contract(Draft, 3), request("b", 4)]).await;
        assert_eq!(v, [("a".into(), Yes, vec![])]);
        assert_eq!(s.waiting.len(), 1);
    }

    #[tokio::test]
    async fn a_stale_contract_update_is_ignored_and_counted() {
        let w = Publication::default();
        let mut s = PublicationState::default();
        outputs(&w, &mut s, vec![contract(Draft, 1), contract(Approved, 10)]).await;
        assert_eq!(apply(&w, &mut s, contract(Draft, 5)).await, Ok(Decision::Ignore("stale_contract_update")));
        assert_eq!(s.contract.as_ref().map(|c| c.status), Some(Approved), "the stale update was not applied");
        let out = outputs(&w, &mut s, vec![request("r", 11)]).await;
        assert_eq!(verdicts(&out), [("r".into(), Yes, vec![])]);
    }

    #[tokio::test]
    async fn a_stale_cancellation_does_not_decline_a_waiting_request() {
        let (v, _) =
            run(vec![contract(Draft, 10), request("r", 11), contract(Cancelled, 5), contract(Approved, 12)]).await;
        assert_eq!(v, [("r".into(), Yes, vec![])]);
    }

    #[tokio::test]
    async fn each_released_request_gets_its_own_event_id_caused_by_itself() {
        let w = Publication::default();
        let mut s = PublicationState::default();
        let out = outputs(&w, &mut s, vec![request("a", 1), request("b", 2), contract(Approved, 3)]).await;
        let ids: Vec<(String, Option<String>, i64)> = out
            .iter()
            .map(|e| (e.metadata().event_id.clone(), e.metadata().causation_id.clone(), e.metadata().occurred_at))
            .collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0].0, ids[1].0);
        assert_eq!(ids[0].1.as_deref(), Some("a-event"));
        assert_eq!(ids[0].0, derived_event_id("publication", "a-event", "PublicationEvaluationCompleted"));
        assert_eq!(ids[0].2, 3, "event time of the release");
    }

    #[tokio::test]
    async fn a_request_id_is_evaluated_once() {
        let w = Publication::default();
        let mut s = PublicationState::default();
        outputs(&w, &mut s, vec![contract(Approved, 1), request("r", 2)]).await;
        let mut again = request("r", 3);
        again.metadata_mut().event_id = "other".into();
        assert_eq!(apply(&w, &mut s, again).await, Ok(Decision::Ignore("request_already_seen")));
    }

    #[tokio::test]
    async fn the_moderation_lists_are_configurable() {
        let w = Publication {
            moderated_terms: vec!["canal".into()],
            moderated_image_patterns: vec![],
            ..Publication::default()
        };
        let mut s = PublicationState::default();
        let out = outputs(&w, &mut s, vec![request_with("r", 1, "By the CANAL", &["x/nsfw/y"])]).await;
        assert_eq!(verdicts(&out), [("r".into(), No, vec!["MODERATED_DESCRIPTION: canal".into()])]);
    }
}
