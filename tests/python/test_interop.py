"""Confluent's Python clients (librdkafka + Avro serde) against `devstack up`:
the embedded Kafka-API broker and our schema registry."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import kfhelpers

pytestmark = pytest.mark.interop

PARTITIONS = 3  # what the devstack fixture passes to `devstack up --partitions`
TIMEOUT = 60.0
ORDERS = "orders"
ORDER_PLACED = "keyflow.events.OrderPlaced"
ORDER_SUBJECT = kfhelpers.subject_for(ORDERS, "OrderPlaced")


@pytest.fixture(scope="module")
def sr(devstack):
    client = SchemaRegistryClient({"url": devstack.registry})
    yield client
    client.close()


@pytest.fixture(scope="module")
def smoke(devstack):
    """`devstack smoke --json` once per module: one event of every type."""
    cp = devstack.run("smoke", "-b", devstack.brokers, "--registry", devstack.registry, "--json", timeout=300)
    try:
        return json.loads(cp.stdout)
    except ValueError:
        pytest.fail(f"devstack smoke --json printed no JSON:\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")


def _frame_id(payload: bytes) -> int:
    assert payload and payload[0] == 0, f"not Confluent-framed: {payload[:8]!r}"
    return int.from_bytes(payload[1:5], "big")


# --------------------------------------------------------------------------


def test_admin_client_lists_every_topic_with_its_partition_count(devstack):
    expected = kfhelpers.expected_topics(PARTITIONS)
    admin = AdminClient({"bootstrap.servers": devstack.brokers})
    md = admin.list_topics(timeout=TIMEOUT)
    got = {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}
    for name, n in expected.items():
        assert name in got, f"topic {name} missing; broker has {sorted(got)}"
        assert got[name] == n, f"topic {name}: {got[name]} partitions, expected {n}"
        assert md.topics[name].error is None, f"topic {name}: {md.topics[name].error}"
    # `devstack topics --json` tells the same story
    cp = devstack.run("topics", "-b", devstack.brokers, "--json", timeout=120)
    listed = {t["name"]: t["partitions"] for t in json.loads(cp.stdout)}
    for name, n in expected.items():
        assert listed.get(name) == n, f"devstack topics: {name} → {listed.get(name)}, expected {n}"


def test_every_contract_is_registered_under_its_topic_record_subject(devstack, sr):
    subjects = set(sr.get_subjects())
    for name in kfhelpers.event_names():
        subject = kfhelpers.subject_for(kfhelpers.topic_of_record(name), name)
        assert subject in subjects, f"{subject} not registered; registry has {sorted(subjects)}"
    assert sr.get_compatibility() == "BACKWARD"
    # the registered OrderPlaced is the composed schema (EventMetadata inlined)
    latest = sr.get_latest_version(ORDER_SUBJECT)
    found = sr.lookup_schema(ORDER_SUBJECT, Schema(kfhelpers.composed_text("OrderPlaced", indent=2), "AVRO"))
    assert found.schema_id == latest.schema_id


def test_smoke_reads_back_one_event_of_every_type(smoke):
    assert smoke["ok"] is True, smoke
    records = {e["record"].rsplit(".", 1)[-1] for e in smoke["events"]}
    assert set(kfhelpers.event_names()) <= records, f"smoke produced {sorted(records)}"
    assert all(e["read_back"] for e in smoke["events"]), smoke["events"]


def test_consumer_with_avro_deserializer_decodes_our_order_placed(devstack, sr, smoke):
    smoke_orders = [e for e in smoke["events"] if e["topic"] == ORDERS and e["record"].endswith("OrderPlaced")]
    assert smoke_orders, f"smoke produced no OrderPlaced on {ORDERS}: {smoke['events']}"
    expected_id = sr.get_latest_version(ORDER_SUBJECT).schema_id
    placed_schema = kfhelpers.composed_schema("OrderPlaced")

    consumer = Consumer(
        {
            "bootstrap.servers": devstack.brokers,
            "group.id": f"pytest-interop-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "range",
        }
    )
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": devstack.registry}))
    found = []
    errors = []
    try:
        consumer.subscribe([ORDERS])
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not found:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(str(msg.error()))
                continue
            schema_id = _frame_id(msg.value())
            value = deserializer(msg.value(), SerializationContext(ORDERS, MessageField.VALUE))
            if schema_id == expected_id:
                found.append((msg, value))
    finally:
        consumer.close()
    assert found, f"no OrderPlaced (schema id {expected_id}) read from {ORDERS} within {TIMEOUT} s; errors: {errors}"
    msg, value = found[0]
    assert set(value) == {f["name"] for f in placed_schema["fields"]}
    md = value["metadata"]
    assert md["event_type"] == "OrderPlaced"
    assert isinstance(md["occurred_at"], datetime), "timestamp-millis decodes to a datetime"
    assert md["causation_id"] is None or isinstance(md["causation_id"], str)
    uuid.UUID(md["event_id"])
    assert value["order_id"] and value["customer_id"]
    assert msg.key() is not None and msg.key().decode() == value["customer_id"], "orders are keyed by customer_id"
    assert isinstance(value["items"], list) and value["items"]
    assert set(value["items"][0]) == {"sku", "quantity", "unit_price_minor"}
    assert isinstance(value["total_minor"], int) and isinstance(value["currency"], str)
    assert set(value["shipping_address"]) == {"country", "city", "street", "number", "postal_code"}
    keys = {e["key"] for e in smoke_orders}
    assert any(v["customer_id"] in keys for _, v in found), (keys, [v["customer_id"] for _, v in found])


def test_producer_with_avro_serializer_is_decoded_by_devstack_peek(devstack, sr):
    latest = sr.get_latest_version(ORDER_SUBJECT)
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": devstack.registry}),
        kfhelpers.composed_text("OrderPlaced"),
        conf={
            "auto.register.schemas": False,
            "use.latest.version": True,
            "subject.name.strategy": topic_record_subject_name_strategy,
        },
    )
    order_id = f"pytest-{uuid.uuid4()}"
    customer_id = f"cust-{uuid.uuid4().hex[:8]}"
    value = kfhelpers.order_placed_value(order_id, customer_id)
    payload = serializer(value, SerializationContext(ORDERS, MessageField.VALUE))
    assert _frame_id(payload) == latest.schema_id

    delivered = []
    producer = Producer(
        {"bootstrap.servers": devstack.brokers, "partitioner": "murmur2_random", "acks": "all", "linger.ms": 5}
    )
    producer.produce(
        ORDERS, key=customer_id.encode(), value=payload, on_delivery=lambda err, msg: delivered.append((err, msg))
    )
    remaining = producer.flush(TIMEOUT)
    assert remaining == 0, f"{remaining} message(s) not delivered within {TIMEOUT} s"
    assert len(delivered) == 1 and delivered[0][0] is None, f"delivery failed: {delivered}"
    partition, offset = delivered[0][1].partition(), delivered[0][1].offset()

    cp = devstack.run(
        "peek", ORDERS, "-b", devstack.brokers, "--registry", devstack.registry, "-n", "100000", "--json",
        timeout=180,
    )
    lines = [json.loads(ln) for ln in cp.stdout.splitlines() if ln.strip().startswith("{")]
    mine = [r for r in lines if isinstance(r.get("value"), dict) and r["value"].get("order_id") == order_id]
    assert mine, f"order {order_id} (partition {partition}, offset {offset}) not in `devstack peek` output:\n" + \
        cp.stdout[-3000:]
    r = mine[0]
    assert r["topic"] == ORDERS
    assert r["record"] == ORDER_PLACED
    assert r["schema_id"] == latest.schema_id
    assert r["key"] == customer_id
    assert (r["partition"], r["offset"]) == (partition, offset)
    got = r["value"]
    for field in ("order_id", "customer_id", "total_minor", "currency", "items", "shipping_address",
                  "payment_method_token"):
        assert got[field] == value[field], field
    for field in ("event_id", "event_type", "source", "idempotency_key", "correlation_id", "causation_id"):
        assert got["metadata"][field] == value["metadata"][field], f"metadata.{field}"
    ts = got["metadata"]["occurred_at"]
    want_ms = int(value["metadata"]["occurred_at"].timestamp() * 1000)
    if isinstance(ts, (int, float)):
        assert int(ts) == want_ms
    else:
        parsed = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        assert int(parsed.astimezone(timezone.utc).timestamp() * 1000) == want_ms
