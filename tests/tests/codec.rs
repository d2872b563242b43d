//! The Confluent wire-format codec against the project's real schema
//! registry (no broker needed): every event type round-trips, the hot path
//! needs no registry after warm-up, poison is classified as poison and an
//! outage as transient, and incompatible evolutions are refused.

use keyflow_devstack::stack::start_registry;
use keyflow_schemas::client::RegistryArgs;
use keyflow_schemas::contracts;
use keyflow_schemas::events::*;
use keyflow_schemas::registry_admin::{AdminError, RegistryAdmin};
use keyflow_schemas::samples::samples;
use keyflow_schemas::{Codec, CodecError, RegistryConfig};

struct Registry {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let (url, stop, task) = start_registry(dir.path(), keyflow_e2e::free_port()).await.unwrap();
        Registry { url, stop: Some(stop), task: Some(task), _dir: dir }
    }
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
    fn codec(&self) -> Codec {
        Codec::new(&RegistryConfig::new(&self.url)).unwrap()
    }
}

async fn roundtrip<E: TopicEvent + PartialEq>(codec: &Codec, events: &[E]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in events {
        let bytes = codec.encode(E::DEFAULT_TOPIC, e).await.unwrap();
        assert_eq!(bytes[0], 0, "magic byte");
        let back: E = codec.decode(E::DEFAULT_TOPIC, Some(&bytes)).await.unwrap();
        assert_eq!(&back, e, "{} round trip", e.record_name());
        out.push(bytes);
    }
    out
}

async fn roundtrip_all(codec: &Codec) -> usize {
    let s = samples("codec-test");
    let mut n = 0;
    n += roundtrip(codec, &s.orders).await.len();
    n += roundtrip(codec, &s.payments).await.len();
    n += roundtrip(codec, &s.fulfillments).await.len();
    n += roundtrip(codec, &s.loyalty).await.len();
    n += roundtrip(codec, &s.contracts).await.len();
    n += roundtrip(codec, &s.properties).await.len();
    n += roundtrip(codec, &s.evaluations).await.len();
    n
}

#[tokio::test]
async fn every_event_type_round_trips_through_the_registry() {
    let reg = Registry::start().await;
    assert_eq!(roundtrip_all(&reg.codec()).await, contracts::all().len());
}

#[tokio::test]
async fn hot_path_needs_no_registry_after_warm_up_and_outage_is_transient() {
    let mut reg = Registry::start().await;
    let codec = reg.codec();
    roundtrip_all(&codec).await;
    reg.stop().await;
    // Cached ids and schemas: encoding and decoding keep working with the registry gone.
    roundtrip_all(&codec).await;
    // A fresh codec has nothing cached: the outage is transient, never poison.
    let cold = reg.codec();
    let s = samples("cold");
    let err = cold.encode("orders", &s.orders[0]).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let bytes = codec.encode("orders", &s.orders[0]).await.unwrap();
    let err = cold.decode::<OrderEvent>("orders", Some(&bytes)).await.unwrap_err();
    assert!(matches!(err, CodecError::RegistryUnavailable { .. }), "{err}");
    assert!(err.to_string().contains(&reg.url), "error names the URL: {err}");
}

#[tokio::test]
async fn poison_bytes_are_classified_as_poison() {
    let reg = Registry::start().await;
    let codec = reg.codec();
    let s = samples("poison");
    let good = codec.encode("orders", &s.orders[0]).await.unwrap();

    let e = codec.decode::<OrderEvent>("orders", Some(b"{\"json\":true}")).await.unwrap_err();
    assert!(matches!(e, CodecError::NotWireFormat(_)), "{e}");
    let e = codec.decode::<OrderEvent>("orders", Some(&[0, 0])).await.unwrap_err();
    assert!(matches!(e, CodecError::NotWireFormat(_)), "{e}");
    let e = codec.decode::<OrderEvent>("orders", None).await.unwrap_err();
    assert!(matches!(e, CodecError::NullValue), "{e}");

    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let e = codec.decode::<OrderEvent>("orders", Some(&unknown)).await.unwrap_err();
    assert!(matches!(e, CodecError::UnknownSchema { id: 999_999, .. }), "{e}");

    let truncated = &good[..good.len() / 2];
    let e = codec.decode::<OrderEvent>("orders", Some(truncated)).await.unwrap_err();
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");

    let e = codec.decode::<PaymentEvent>("payments", Some(&good)).await.unwrap_err();
    assert!(matches!(e, CodecError::WrongType { .. }), "{e}");
    assert!(e.to_string().contains("keyflow.events.OrderPlaced"), "{e}");

    for e in [CodecError::NullValue, CodecError::NotWireFormat(String::new())] {
        assert!(!e.is_transient());
    }
}

#[tokio::test]
async fn incompatible_evolution_is_refused_naming_the_subject_and_a_compatible_one_accepted() {
    let reg = Registry::start().await;
    let admin =
        RegistryAdmin::new(RegistryArgs { registry: reg.url.clone(), registry_auth: None }.config().unwrap()).unwrap();
    let subjects = admin.register_all(|t| t.to_string()).await.unwrap();
    assert_eq!(subjects.len(), contracts::all().len());

    let placed = contracts::get("OrderPlaced").unwrap();
    let subject = contracts::subject("orders", "OrderPlaced");
    let mut v: serde_json::Value = serde_json::from_str(&placed.schema).unwrap();
    let fields = v["fields"].as_array_mut().unwrap();

    fields.push(serde_json::json!({"name": "gift_wrap", "type": "boolean"}));
    let err = admin.register(&subject, &v.to_string()).await.unwrap_err();
    match &err {
        AdminError::Incompatible { subject: s, message } => {
            assert_eq!(s, &subject);
            assert!(message.contains("gift_wrap"), "message names the field: {message}");
        }
        other => panic!("expected Incompatible, got {other}"),
    }

    let fields = v["fields"].as_array_mut().unwrap();
    fields.pop();
    fields.push(serde_json::json!({"name": "gift_wrap", "type": "boolean", "default": false}));
    let id = admin.register(&subject, &v.to_string()).await.unwrap();
    let first = subjects.iter().find(|s| s.subject == subject).unwrap().id;
    assert!(id > first, "a new schema gets a new id");
    // Registering the original again returns its id: same schema, same id.
    assert_eq!(admin.register(&subject, &placed.schema).await.unwrap(), first);
}
