//! One realistic sample of every event, linked the way the pipeline links
//! them (a payment caused by the order, points caused by the payment…). Used
//! by `devstack smoke` and by the codec tests.

use crate::events::*;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn meta(event_type: &str, id: &str, source: &str, at: i64, correlation: &str, cause: Option<&str>) -> EventMetadata {
    EventMetadata {
        event_id: id.to_string(),
        event_type: event_type.to_string(),
        source: source.to_string(),
        occurred_at: at,
        idempotency_key: format!("{source}:{id}"),
        correlation_id: correlation.to_string(),
        causation_id: cause.map(str::to_string),
    }
}

/// A sample of every event, each with a fresh `event_id` derived from `run`
/// (so repeated smoke runs never collide), grouped by topic.
#[derive(Debug, Clone)]
pub struct Samples {
    pub orders: Vec<OrderEvent>,
    pub payments: Vec<PaymentEvent>,
    pub fulfillments: Vec<FulfillmentEvent>,
    pub loyalty: Vec<LoyaltyEvent>,
    pub contracts: Vec<ContractEvent>,
    pub properties: Vec<PropertyEvent>,
    pub evaluations: Vec<EvaluationEvent>,
}

/// Builds the samples; `run` makes ids unique per run.
pub fn samples(run: &str) -> Samples {
    let id = |n: &str| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{run}/{n}").as_bytes()).to_string();
    let customer = format!("customer-{}", &id("customer")[..8]);
    let order_id = format!("order-{}", &id("order")[..8]);
    let placed_id = id("placed");
    let placed = OrderPlaced {
        metadata: meta("OrderPlaced", &placed_id, "order-producer", T0, &order_id, None),
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        items: vec![
            OrderItem { sku: "SKU-KETTLE-1".into(), quantity: 1, unit_price_minor: 4_999 },
            OrderItem { sku: "SKU-MUG-6".into(), quantity: 2, unit_price_minor: 1_250 },
        ],
        total_minor: 7_499,
        currency: "EUR".into(),
        shipping_address: ShippingAddress {
            country: "NL".into(),
            city: "Utrecht".into(),
            street: "Oudegracht".into(),
            number: "12".into(),
            postal_code: "3511 AP".into(),
        },
        payment_method_token: "tok_visa_4242".into(),
    };
    let cancelled = OrderCancelled {
        metadata: meta("OrderCancelled", &id("cancelled"), "order-producer", T0 + 60_000, &order_id, None),
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        reason: "customer changed their mind".into(),
    };
    let derived = |worker: &str, cause: &str, ty: &str, at: i64| {
        meta(ty, &derived_event_id(worker, cause, ty), &format!("{worker}-worker"), at, &order_id, Some(cause))
    };
    let authorized = PaymentAuthorized {
        metadata: derived("payment", &placed_id, "PaymentAuthorized", T0 + 100),
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        payment_id: format!("pay-{}", &id("pay")[..8]),
        amount_minor: 7_499,
        currency: "EUR".into(),
    };
    let declined = PaymentDeclined {
        metadata: derived("payment", &id("other-order"), "PaymentDeclined", T0 + 200),
        order_id: format!("{order_id}-b"),
        customer_id: customer.clone(),
        reason: DeclineReason::CardDeclined,
        amount_minor: 1_000,
        currency: "EUR".into(),
    };
    let voided = PaymentVoided {
        metadata: derived("payment", &cancelled.metadata.event_id, "PaymentVoided", T0 + 60_100),
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        payment_id: authorized.payment_id.clone(),
        amount_minor: 7_499,
        currency: "EUR".into(),
    };
    let fulfilled = OrderFulfilled {
        metadata: derived("fulfillment", &authorized.metadata.event_id, "OrderFulfilled", T0 + 300),
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        shipment_id: format!("ship-{}", &id("ship")[..8]),
        warehouse: "AMS-1".into(),
    };
    let fulfillment_cancelled = FulfillmentCancelled {
        metadata: derived("fulfillment", &declined.metadata.event_id, "FulfillmentCancelled", T0 + 400),
        order_id: declined.order_id.clone(),
        customer_id: customer.clone(),
        reason: FulfillmentCancelReason::PaymentDeclined,
    };
    let awarded = PointsAwarded {
        metadata: derived("loyalty", &authorized.metadata.event_id, "PointsAwarded", T0 + 500),
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        points: 74,
        balance: 74,
    };
    let revoked = PointsRevoked {
        metadata: derived("loyalty", &voided.metadata.event_id, "PointsRevoked", T0 + 60_200),
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        points: 74,
        balance: 0,
    };
    let property_id = format!("NL/Utrecht/Lange Nieuwstraat/{}", u16::from_str_radix(&id("num")[..4], 16).unwrap_or(7));
    let request_id = format!("req-{}", &id("req")[..8]);
    let contract = ContractStatusChanged {
        metadata: meta("ContractStatusChanged", &id("contract"), "contract-producer", T0, &property_id, None),
        property_id: property_id.clone(),
        contract_id: format!("contract-{}", &id("cid")[..8]),
        contract_status: ContractStatus::Approved,
        contract_last_modified_on: T0,
    };
    let (country, rest) = property_id.split_once('/').unwrap_or(("NL", ""));
    let parts: Vec<&str> = rest.split('/').collect();
    let request = PublicationApprovalRequested {
        metadata: meta(
            "PublicationApprovalRequested",
            &id("request"),
            "property-producer",
            T0 + 1_000,
            &request_id,
            None,
        ),
        request_id: request_id.clone(),
        property_id: property_id.clone(),
        address: PropertyAddress {
            country: country.into(),
            city: parts.first().copied().unwrap_or("").into(),
            street: parts.get(1).copied().unwrap_or("").into(),
            number: parts.get(2).copied().unwrap_or("").into(),
        },
        description: "Bright canal-side apartment, two bedrooms, close to the station.".into(),
        contract: ContractType::Rent,
        list_price_minor: 185_000,
        currency: "EUR".into(),
        images: vec!["https://img.example/p/1.jpg".into(), "https://img.example/p/2.jpg".into()],
    };
    let evaluation = PublicationEvaluationCompleted {
        metadata: meta(
            "PublicationEvaluationCompleted",
            &derived_event_id("publication", &request.metadata.event_id, "PublicationEvaluationCompleted"),
            "publication-worker",
            T0 + 1_100,
            &request_id,
            Some(&request.metadata.event_id),
        ),
        request_id,
        property_id,
        evaluation_result: EvaluationResult::Approved,
        reasons: vec![],
    };
    Samples {
        orders: vec![placed.into(), cancelled.into()],
        payments: vec![authorized.into(), declined.into(), voided.into()],
        fulfillments: vec![fulfilled.into(), fulfillment_cancelled.into()],
        loyalty: vec![awarded.into(), revoked.into()],
        contracts: vec![contract.into()],
        properties: vec![request.into()],
        evaluations: vec![evaluation.into()],
    }
}
