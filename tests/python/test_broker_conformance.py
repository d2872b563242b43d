"""Conformance of keyflow's own Kafka-API broker (`broker`), checked with
independent client implementations: confluent-kafka (librdkafka) and
kafka-python (its own protocol code). kcat and kafkajs have their own modules
(test_broker_kcat.py, test_broker_kafkajs.py).

Every test starts a fresh broker on a temporary data dir (``broker`` fixture,
broker_fixture.py) and creates its topics itself: the broker does not
auto-create topics."""

from __future__ import annotations

import threading
import time
from typing import List, Set

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource, NewTopic, OffsetSpec, ResourceType
import kafka.errors as KErrors
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTP
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType
from kafka.admin import NewTopic as KNewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from broker_fixture import broker  # noqa: F401  (the fixture)
from brokerkit import (
    PARTITIONS,
    TIMEOUT,
    Got,
    Ownership,
    Rec,
    cf_admin,
    cf_conf,
    cf_create_topic,
    cf_end_offsets,
    cf_group_offsets,
    cf_got,
    cf_produce,
    cf_read_all,
    cf_wait_topic,
    check_read_back,
    res,
    sample_records,
    unique,
    wait_until,
)

SESSION_MS = 6000
HEARTBEAT_MS = 500


def _fail(msg: str, broker) -> None:
    pytest.fail(f"{msg}\n--- broker ---\n{broker.describe()}", pytrace=False)


# ==========================================================================
# confluent-kafka (librdkafka)
# ==========================================================================


def test_confluent_create_topics_gives_3_led_partitions_and_rejects_a_duplicate(broker):
    topic = unique("cf-create")
    admin = cf_create_topic(broker, topic)
    md = admin.list_topics(timeout=10)
    assert len(md.brokers) == 1, f"a single-node broker lists {md.brokers}"
    (node_id,) = md.brokers.keys()
    t = md.topics[topic]
    assert sorted(t.partitions) == [0, 1, 2]
    for p in t.partitions.values():
        assert p.leader == node_id, f"partition {p.id} leader {p.leader}, broker is {node_id}"
        assert list(p.replicas) == [node_id] and list(p.isrs) == [node_id], (p.replicas, p.isrs)
    fs = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        res(fs[topic], "CreateTopics of an existing topic", broker)
    assert ei.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, ei.value


def test_confluent_metadata_for_a_missing_topic_is_unknown_and_does_not_create_it(broker):
    admin = cf_admin(broker)
    missing = unique("cf-missing")
    md = admin.list_topics(topic=missing, timeout=10)
    t = md.topics.get(missing)
    assert t is not None and t.error is not None, f"metadata for missing topic: {t}"
    assert t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, t.error
    # a producer asks for it too (librdkafka producers request auto-creation)
    p = Producer(cf_conf(broker, **{"message.timeout.ms": 3000, "enable.idempotence": True}))
    errs = []
    p.produce(missing, b"v", on_delivery=lambda err, msg: errs.append(err))
    p.flush(15)
    assert errs and errs[0] is not None, f"produce to a missing topic was acknowledged: {errs}"
    assert missing not in admin.list_topics(timeout=10).topics, "the broker auto-created the topic"


def test_confluent_delete_topics_removes_the_topic_and_a_recreated_one_starts_empty(broker):
    topic = unique("cf-delete")
    admin = cf_create_topic(broker, topic)
    cf_produce(broker, topic, sample_records(10, "del"))
    res(admin.delete_topics([topic], operation_timeout=15, request_timeout=20)[topic], "DeleteTopics", broker)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, f"{topic} to leave Metadata", broker=broker)
    cf_create_topic(broker, topic, partitions=1)
    assert cf_end_offsets(broker, topic, partitions=1) == {0: 0}, "recreated topic still has the old records"


def test_confluent_idempotent_produce_reads_back_keys_headers_and_partition_order(broker):
    topic = unique("cf-roundtrip")
    cf_create_topic(broker, topic)
    recs = cf_produce(broker, topic, sample_records(300, "cf"))
    parts = {r.out_partition for r in recs}
    assert len(parts) > 1, f"records all landed on partitions {parts}"
    got = cf_read_all(broker, topic, len(recs))
    check_read_back(recs, got)
    now = time.time() * 1000
    assert all(abs(g.timestamp - now) < 120_000 for g in got), "CreateTime timestamps not kept"
    c = Consumer(cf_conf(broker, **{"group.id": unique("wm")}))
    try:
        for p in range(PARTITIONS):
            n = sum(1 for r in recs if r.out_partition == p)
            assert c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) == (0, n)
    finally:
        c.close()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_confluent_compressed_batches_read_back_intact(broker, codec):
    """keyflow's producers compress (lz4 by default): compressed record
    batches must come back with every record, key and header."""
    topic = unique(f"cf-{codec}")
    cf_create_topic(broker, topic)
    recs = cf_produce(broker, topic, sample_records(200, codec), **{"compression.type": codec, "linger.ms": 50})
    check_read_back(recs, cf_read_all(broker, topic, len(recs)))
    if codec == "gzip":  # kafka-python decodes gzip without extra modules
        check_read_back(recs, kp_read_all(broker, topic, len(recs)))


def test_confluent_fetch_returns_a_record_larger_than_the_fetch_size_limits(broker):
    """KIP-74: a fetch returns at least the first batch even when it is larger
    than max.partition.fetch.bytes / fetch.max.bytes, so consumers never stall."""
    topic = unique("cf-big")
    cf_create_topic(broker, topic, partitions=1)
    recs = [Rec(key=f"k{i}".encode(), value=bytes([65 + i]) * 20_000, headers=[("i", str(i).encode())], partition=0)
            for i in range(12)]
    cf_produce(broker, topic, recs, **{"linger.ms": 0, "batch.size": 16384})
    c = Consumer(cf_conf(broker, **{"group.id": unique("big"), "enable.auto.commit": False,
                                     "max.partition.fetch.bytes": 1024, "fetch.max.bytes": 2048,
                                     "message.max.bytes": 1000,
                                     "fetch.min.bytes": 1}))
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < len(recs) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert not m.error(), m.error()
            got.append(m)
    finally:
        c.close()
    assert [(m.offset(), m.value()) for m in got] == [(i, r.value) for i, r in enumerate(recs)], \
        f"read {len(got)} of {len(recs)} 20 kB records with 1 kB fetch limits"


class CfMember:
    """A confluent-kafka group member driven from the test thread; it commits
    synchronously after every batch and tracks its assignment via callbacks."""

    def __init__(self, name, broker, group, topic, strategy, own: Ownership):
        self.name, self.own, self.broker = name, own, broker
        self.assigned: Set[int] = set()
        self.consumed: List[Got] = []
        self.commit_errors: List[str] = []
        self.c = Consumer(cf_conf(broker, **{
            "group.id": group,
            "client.id": name,
            "partition.assignment.strategy": strategy,
            "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "max.poll.interval.ms": 30000,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }))
        self.c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, consumer, parts):
        ps = {tp.partition for tp in parts}
        self.own.assign(self.name, ps)
        self.assigned |= ps

    def _on_revoke(self, consumer, parts):
        ps = {tp.partition for tp in parts}
        self.own.revoke(self.name, ps)
        self.assigned -= ps

    def _on_lost(self, consumer, parts):
        ps = {tp.partition for tp in parts}
        self.own.revoke(self.name, ps, how="lost ")
        self.assigned -= ps

    def poll(self, timeout=0.05):
        msgs = self.c.consume(num_messages=200, timeout=timeout)
        good = 0
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                _fail(f"{self.name}: consumer error {m.error()}", self.broker)
            if m.partition() not in self.assigned:
                self.own.violations.append(f"{self.name} got a record of partition {m.partition()} it does not own")
            self.consumed.append(cf_got(m, self.name))
            good += 1
        if good:
            try:
                self.c.commit(asynchronous=False)
            except KafkaException as e:
                self.commit_errors.append(repr(e))

    def close(self):
        self.own.revoke(self.name, set(self.assigned), how="close -")
        self.assigned.clear()
        self.c.close()


def _poll_until(members, cond, what, broker, timeout=TIMEOUT, own=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members:
            m.poll()
        if cond():
            return
    extra = own.report() if own else ""
    _fail(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}", broker)


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_confluent_two_member_group_never_owns_a_partition_twice_and_consumes_each_record_once(broker, strategy):
    topic, group = unique("cf-group"), unique("cf-g")
    cf_create_topic(broker, topic)
    own = Ownership()
    a = CfMember("member-a", broker, group, topic, strategy, own)
    members = [a]
    try:
        _poll_until(members, lambda: a.assigned == {0, 1, 2}, "member-a alone to own all 3 partitions", broker, own=own)
        first = cf_produce(broker, topic, sample_records(60, "one", null_keys=False))
        _poll_until(members, lambda: len(a.consumed) >= 60, "member-a to consume the first 60 records", broker, own=own)

        b = CfMember("member-b", broker, group, topic, strategy, own)
        members.append(b)

        def balanced():
            return a.assigned and b.assigned and not (a.assigned & b.assigned) and (a.assigned | b.assigned) == {0, 1, 2}

        _poll_until(members, balanced, "both members to own a disjoint share of the 3 partitions", broker, own=own)
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:
            for m in members:
                m.poll()
        assert balanced(), f"assignment changed after it settled: a {a.assigned} b {b.assigned}\n{own.report()}"

        second = cf_produce(broker, topic, sample_records(60, "two", null_keys=False))
        total = len(first) + len(second)
        _poll_until(members, lambda: len(a.consumed) + len(b.consumed) >= total, f"{total} records consumed", broker,
                    own=own)
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            for m in members:
                m.poll()

        assert not own.violations, "\n".join(own.violations) + "\n" + own.report()
        consumed = a.consumed + b.consumed
        pos = [(g.partition, g.offset) for g in consumed]
        assert len(pos) == len(set(pos)), f"records consumed twice (commit errors: {a.commit_errors + b.commit_errors})"
        assert set(pos) == {(r.out_partition, r.out_offset) for r in first + second}
        for g in b.consumed:
            assert g.partition in b.assigned
        assert cf_group_offsets(broker, group) == {(topic, p): n for p, n in cf_end_offsets(broker, topic).items()}

        # DescribeGroups agrees with what the members were told
        admin = cf_admin(broker)  # keep a reference: a collected AdminClient fails its pending futures
        desc = res(admin.describe_consumer_groups([group], request_timeout=20)[group],
                   f"DescribeGroups {group}", broker)
        assert desc.partition_assignor == strategy, desc.partition_assignor
        assert str(desc.state).upper().endswith("STABLE"), desc.state
        seen = {m.client_id: {tp.partition for tp in m.assignment.topic_partitions} for m in desc.members}
        assert seen == {"member-a": a.assigned, "member-b": b.assigned}, seen

        # LeaveGroup on close hands b's partitions back to a well before the session timeout
        t0 = time.monotonic()
        b.close()
        members.remove(b)
        _poll_until(members, lambda: a.assigned == {0, 1, 2}, "member-a to own all partitions after member-b left",
                    broker, timeout=SESSION_MS / 1000 - 1, own=own)
        assert not own.violations, "\n".join(own.violations)
        assert time.monotonic() - t0 < SESSION_MS / 1000
    finally:
        for m in members:
            m.close()


def test_confluent_consumer_resumes_from_committed_offsets_after_close(broker):
    topic, group = unique("cf-resume"), unique("cf-g")
    cf_create_topic(broker, topic)
    first = cf_produce(broker, topic, sample_records(30, "one"))
    own = Ownership()
    m = CfMember("first", broker, group, topic, "range", own)
    try:
        _poll_until([m], lambda: len(m.consumed) >= 30, "the first 30 records", broker)
        committed = m.c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        ends = cf_end_offsets(broker, topic)
        assert {tp.partition: tp.offset for tp in committed} == ends, (committed, ends)
    finally:
        m.close()
    assert not m.commit_errors, m.commit_errors
    second = cf_produce(broker, topic, sample_records(20, "two"))
    m2 = CfMember("second", broker, group, topic, "range", own)
    try:
        _poll_until([m2], lambda: len(m2.consumed) >= 20, "the 20 new records", broker)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            m2.poll()
    finally:
        m2.close()
    got = {(g.partition, g.offset) for g in m2.consumed}
    assert len(m2.consumed) == 20, f"resumed consumer read {len(m2.consumed)} records, expected the 20 new ones"
    assert got == {(r.out_partition, r.out_offset) for r in second}
    assert not got & {(r.out_partition, r.out_offset) for r in first}
    assert cf_group_offsets(broker, group) == {(topic, p): n for p, n in cf_end_offsets(broker, topic).items()}


def test_confluent_list_describe_and_delete_consumer_groups(broker):
    topic, group = unique("cf-groups"), unique("cf-g")
    cf_create_topic(broker, topic)
    cf_produce(broker, topic, sample_records(9, "g"))
    admin = cf_admin(broker)
    m = CfMember("lister", broker, group, topic, "range", Ownership())
    try:
        _poll_until([m], lambda: len(m.consumed) >= 9, "9 records", broker)
        listed = res(admin.list_consumer_groups(request_timeout=20), "ListGroups", broker)
        assert not listed.errors, listed.errors
        mine = [g for g in listed.valid if g.group_id == group]
        assert len(mine) == 1, f"{group} not listed: {[g.group_id for g in listed.valid]}"
        assert not mine[0].is_simple_consumer_group
        listed_state = mine[0].state
        desc = res(admin.describe_consumer_groups([group], request_timeout=20)[group], "DescribeGroups", broker)
        assert desc.group_id == group and str(desc.state).upper().endswith("STABLE"), desc.state
        assert desc.partition_assignor == "range"
        assert len(desc.members) == 1 and desc.members[0].client_id == "lister"
        assert desc.members[0].member_id == m.c.memberid()
        assert sorted((tp.topic, tp.partition) for tp in desc.members[0].assignment.topic_partitions) == [
            (topic, p) for p in range(PARTITIONS)]
        assert desc.coordinator is not None and desc.coordinator.id in admin.list_topics(timeout=10).brokers
    finally:
        m.close()
    desc = res(admin.describe_consumer_groups([group], request_timeout=20)[group], "DescribeGroups", broker)
    assert str(desc.state).upper().endswith("EMPTY") and not desc.members, (desc.state, desc.members)
    offsets = cf_group_offsets(broker, group)
    assert sum(offsets.values()) == 9, offsets
    res(admin.delete_consumer_groups([group], request_timeout=20)[group], "DeleteGroups", broker)
    listed = res(admin.list_consumer_groups(request_timeout=20), "ListGroups", broker)
    assert group not in [g.group_id for g in listed.valid], "deleted group still listed"
    try:
        left = cf_group_offsets(broker, group)
    except KafkaException as e:  # GROUP_ID_NOT_FOUND is a fine answer too
        assert e.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND, e
    else:
        assert left == {}, f"deleted group still has committed offsets {left}"
    # ListGroups v4+ carries the group state (librdkafka asks for it)
    assert str(listed_state).upper().endswith("STABLE"), f"ListGroups gave state {listed_state} for an active group"


def test_confluent_describe_configs_reports_topic_configs_set_at_creation(broker):
    topic, plain = unique("cf-configs"), unique("cf-plain")
    admin = cf_create_topic(broker, topic, config={"retention.ms": "3600000", "cleanup.policy": "delete"})
    cf_create_topic(broker, plain)
    cr = ConfigResource(ResourceType.TOPIC, topic)
    entries = res(admin.describe_configs([cr], request_timeout=20)[cr], "DescribeConfigs", broker)
    assert entries["retention.ms"].value == "3600000", entries.get("retention.ms")
    assert entries["cleanup.policy"].value == "delete"
    cr2 = ConfigResource(ResourceType.TOPIC, plain)
    entries2 = res(admin.describe_configs([cr2], request_timeout=20)[cr2], "DescribeConfigs", broker)
    assert "retention.ms" in entries2, f"default topic configs not described: {sorted(entries2)}"
    assert entries2["retention.ms"].value not in (None, "3600000")
    missing = ConfigResource(ResourceType.TOPIC, unique("cf-nope"))
    with pytest.raises(KafkaException) as ei:
        res(admin.describe_configs([missing], request_timeout=20)[missing], "DescribeConfigs", broker)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, ei.value
    # an override set at creation is not reported as a default (source DYNAMIC_TOPIC_CONFIG)
    assert not entries["retention.ms"].is_default, entries["retention.ms"].source


def test_confluent_list_offsets_gives_earliest_latest_and_first_offset_at_or_after_a_timestamp(broker):
    topic = unique("cf-offsets")
    admin = cf_create_topic(broker, topic)
    base = (int(time.time()) - 600) * 1000
    recs = [Rec(key=b"k", value=f"v{i}".encode(), headers=[], partition=0, timestamp=base + i * 1000)
            for i in range(10)]
    cf_produce(broker, topic, recs)
    assert [r.out_offset for r in recs] == list(range(10))

    def lo(spec, p=0):
        tp = TopicPartition(topic, p)
        return res(admin.list_offsets({tp: spec}, request_timeout=20)[tp], f"ListOffsets {spec}", broker)

    assert lo(OffsetSpec.earliest()).offset == 0
    assert lo(OffsetSpec.latest()).offset == 10
    r = lo(OffsetSpec.for_timestamp(base + 2500))
    assert (r.offset, r.timestamp) == (3, base + 3000), (r.offset, r.timestamp)
    assert lo(OffsetSpec.for_timestamp(base)).offset == 0
    assert lo(OffsetSpec.for_timestamp(base - 10_000)).offset == 0
    assert lo(OffsetSpec.for_timestamp(base + 9000 + 1)).offset == -1, "no record at/after ts must give -1"
    assert lo(OffsetSpec.earliest(), p=1).offset == 0 and lo(OffsetSpec.latest(), p=1).offset == 0
    assert lo(OffsetSpec.for_timestamp(base), p=1).offset == -1

    c = Consumer(cf_conf(broker, **{"group.id": unique("oft"), "enable.auto.commit": False}))
    try:
        (tp,) = c.offsets_for_times([TopicPartition(topic, 0, base + 4500)], timeout=10)
        assert tp.offset == 5, tp
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 10)
        c.assign([tp])
        m = None
        deadline = time.monotonic() + TIMEOUT
        while m is None and time.monotonic() < deadline:
            m = c.poll(0.5)
        assert m is not None and not m.error(), m and m.error()
        assert (m.offset(), m.timestamp()[1], m.value()) == (5, base + 5000, b"v5")
    finally:
        c.close()


def _kill(broker, how):
    if how == "sigterm":
        broker.restart()
    else:
        broker.kill9()
        broker.start(broker.port)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_confluent_acknowledged_records_configs_and_group_offsets_survive_broker_restart(broker, how):
    topic, group = unique("cf-durable"), unique("cf-g")
    cf_create_topic(broker, topic, config={"retention.ms": "7200000"})
    first = cf_produce(broker, topic, sample_records(100, "one"))
    m = CfMember("durable", broker, group, topic, "range", Ownership())
    try:
        _poll_until([m], lambda: len(m.consumed) >= 100, "100 records", broker)
    finally:
        m.close()
    committed = cf_group_offsets(broker, group)
    assert sum(committed.values()) == 100
    second = cf_produce(broker, topic, sample_records(10, "two"))  # acknowledged, not consumed
    ends = cf_end_offsets(broker, topic)

    _kill(broker, how)

    admin = cf_admin(broker)
    cf_wait_topic(broker, topic)
    assert cf_end_offsets(broker, topic) == ends, "latest offsets changed across the restart"
    assert cf_group_offsets(broker, group) == committed, "committed offsets changed across the restart"
    cr = ConfigResource(ResourceType.TOPIC, topic)
    assert res(admin.describe_configs([cr], request_timeout=20)[cr], "DescribeConfigs", broker)[
        "retention.ms"].value == "7200000", "topic config lost across the restart"
    groups = res(admin.list_consumer_groups(request_timeout=20), "ListGroups", broker)
    assert group in [g.group_id for g in groups.valid], "group lost across the restart"
    check_read_back(first + second, cf_read_all(broker, topic, len(first) + len(second)))

    # the group resumes where it committed: only the 10 unconsumed records
    m2 = CfMember("after", broker, group, topic, "range", Ownership())
    try:
        _poll_until([m2], lambda: len(m2.consumed) >= 10, "the 10 records produced after the commit", broker)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            m2.poll()
    finally:
        m2.close()
    assert {(g.partition, g.offset) for g in m2.consumed} == {(r.out_partition, r.out_offset) for r in second}
    assert len(m2.consumed) == 10

    # new records go after the old ones, nothing is overwritten
    third = cf_produce(broker, topic, sample_records(15, "three"))
    for r in third:
        assert r.out_offset >= ends[r.out_partition], f"offset {r.out_offset} reused on partition {r.out_partition}"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_confluent_idempotent_producer_keeps_producing_across_a_broker_restart_without_duplicates(broker, how):
    """One idempotent producer (one InitProducerId) lives through the restart:
    the broker must accept its next sequence numbers (no fatal
    OUT_OF_ORDER_SEQUENCE) and write no duplicate."""
    topic = unique("cf-pid")
    cf_create_topic(broker, topic)
    errors = []
    p = Producer(cf_conf(broker, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                                    "message.timeout.ms": 60000, "reconnect.backoff.max.ms": 500}))
    recs = sample_records(80, "pid")
    fatal = []

    def cb(rec):
        def f(err, msg):
            if err is not None:
                errors.append(err)
            else:
                rec.out_partition, rec.out_offset = msg.partition(), msg.offset()
        return f

    for r in recs[:40]:
        p.produce(topic, r.value, r.key, headers=r.headers, on_delivery=cb(r))
    assert p.flush(TIMEOUT) == 0 and not errors, errors
    _kill(broker, how)
    for r in recs[40:]:
        p.produce(topic, r.value, r.key, headers=r.headers, on_delivery=cb(r))
    left = p.flush(TIMEOUT * 2)
    try:
        p.poll(0)
    except KafkaException as e:  # fatal errors surface here
        fatal.append(e)
    assert left == 0 and not errors and not fatal, f"after restart: {left} undelivered, errors {errors[:5]}, fatal {fatal}"
    check_read_back(recs, cf_read_all(broker, topic, len(recs)))


# ==========================================================================
# kafka-python (its own protocol implementation)
# ==========================================================================

KP_ASSIGNORS = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor}


def kp_admin(broker) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id=unique("kp-admin"),
                            request_timeout_ms=20000)


def kp_metadata(broker, topic=None):
    """(topic names, partitions of ``topic`` with a leader) from a plain
    KafkaConsumer (its Metadata path, not the admin client's)."""
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, client_id=unique("kp-md"))
    try:
        names = c.topics()
        if topic is None or topic not in names:
            return names, set()
        parts = c.partitions_for_topic(topic) or set()
        leaders = {p: c._client.cluster.leader_for_partition(KTP(topic, p)) for p in parts}
        led = {p for p, leader in leaders.items() if leader is not None and leader >= 0}
        return names, led
    finally:
        c.close()


def kp_create_topic(broker, name, partitions=PARTITIONS, config=None) -> KafkaAdminClient:
    admin = kp_admin(broker)
    resp = admin.create_topics([KNewTopic(name, num_partitions=partitions, replication_factor=1,
                                          topic_configs=config or {})], timeout_ms=15000)
    errs = [(t[0], t[1]) for t in resp.topic_errors if t[1] != 0]
    assert not errs, f"CreateTopics {name}: errors {resp.topic_errors}"
    wait_until(lambda: kp_metadata(broker, name)[1] == set(range(partitions)),
               f"kafka-python metadata to show {name} with {partitions} led partitions", broker=broker)
    return admin


def kp_produce(broker, topic, recs: List[Rec]) -> List[Rec]:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True, acks="all", linger_ms=5,
                      client_id=unique("kp-producer"))
    try:
        futs = []
        for r in recs:
            kw = {}
            if r.partition is not None:
                kw["partition"] = r.partition
            if r.timestamp is not None:
                kw["timestamp_ms"] = r.timestamp
            futs.append(p.send(topic, value=r.value, key=r.key,
                               headers=[(k, v) for k, v in r.headers if v is not None], **kw))
        p.flush(timeout=TIMEOUT)
        for r, f in zip(recs, futs):
            md = f.get(timeout=TIMEOUT)
            r.out_partition, r.out_offset = md.partition, md.offset
    except Exception as e:  # noqa: BLE001
        _fail(f"kafka-python produce to {topic} failed: {e!r}", broker)
    finally:
        p.close(timeout=10)
    return recs


def kp_got(r, member="") -> Got:
    return Got(partition=r.partition, offset=r.offset, key=r.key, value=r.value,
               headers=[(k, v) for k, v in (r.headers or [])], timestamp=r.timestamp, member=member)


def kp_read_all(broker, topic, expected, partitions=PARTITIONS, linger=1.0) -> List[Got]:
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", client_id=unique("kp-reader"))
    try:
        tps = [KTP(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: List[Got] = []
        deadline = time.monotonic() + TIMEOUT
        extra_until = None
        while time.monotonic() < deadline:
            for _tp, rs in c.poll(timeout_ms=200).items():
                out.extend(kp_got(r) for r in rs)
            if len(out) >= expected:
                extra_until = extra_until or time.monotonic() + linger
                if time.monotonic() >= extra_until:
                    break
        if len(out) < expected:
            _fail(f"kafka-python read {len(out)} of {expected} records from {topic}", broker)
        return out
    finally:
        c.close()


def test_kafka_python_create_topics_admin_metadata_and_delete_topics(broker):
    """Also pins the admin client's Metadata v8 path: it asks for authorized
    operations and kafka-python only knows ACL operations 0..13 (Kafka sends
    no other bits for topics and the cluster)."""
    topic = unique("kp-create")
    admin = kp_create_topic(broker, topic)
    assert topic in admin.list_topics()
    cluster = admin.describe_cluster()
    assert len(cluster["brokers"]) == 1, cluster
    node = cluster["brokers"][0]["node_id"]
    (md,) = admin.describe_topics([topic])
    assert sorted(p["partition"] for p in md["partitions"]) == [0, 1, 2]
    assert all(p["leader"] == node and p["replicas"] == [node] for p in md["partitions"]), md
    with pytest.raises(KErrors.TopicAlreadyExistsError):
        admin.create_topics([KNewTopic(topic, num_partitions=3, replication_factor=1)], timeout_ms=10000)
    resp = admin.delete_topics([topic], timeout_ms=15000)
    assert [tuple(t[:2]) for t in resp.topic_error_codes] == [(topic, 0)], resp
    wait_until(lambda: topic not in kp_metadata(broker)[0], f"{topic} to disappear", broker=broker)
    admin.close()


def test_kafka_python_metadata_and_describe_groups_answer_requested_authorized_operations(broker):
    """Metadata v8+ and DescribeGroups v3+ with include_*_authorized_operations
    must carry a bit set of ACL operations (Kafka without an authorizer: every
    operation the resource supports), not INT32_MIN, the "not requested"
    sentinel. kafka-python's admin client decodes these bits; an unknown bit
    makes list_topics/describe_topics/describe_consumer_groups raise."""
    from kafka.protocol.admin import DescribeGroupsRequest
    from kafka.protocol.metadata import MetadataRequest

    topic, group = unique("kp-acl"), unique("kp-g")
    admin = kp_create_topic(broker, topic)
    # Kafka's AclOperation codes 3..14 (READ..DESCRIBE_TOKENS); 0/1/2 are UNKNOWN/ANY/ALL
    known = sum(1 << b for b in range(3, 15))
    problems = []
    md = admin.send_request(MetadataRequest[8](topics=[topic], allow_auto_topic_creation=False,
                                               include_cluster_authorized_operations=True,
                                               include_topic_authorized_operations=True))
    raw = md.to_object()
    cluster_ops = raw["authorized_operations"]
    topic_ops = raw["topics"][0]["authorized_operations"]
    for what, ops in (("Metadata v8 cluster_authorized_operations", cluster_ops),
                      ("Metadata v8 topic_authorized_operations", topic_ops)):
        bits = ops if isinstance(ops, int) else sum(1 << b for b in ops)
        if bits == -(1 << 31) or bits < 0 or bits & ~known:
            problems.append(f"{what}: bits {sorted(ops) if not isinstance(ops, int) else ops} ({bits:#x})")

    own, lock = Ownership(), threading.Lock()
    m = KpMember("acl", broker, group, topic, "range", own, lock)
    m.start()
    try:
        _wait_members([m], lambda: m.assigned == {0, 1, 2}, "the member to own all partitions", broker, own)
        coord = admin._find_coordinator_ids([group])[group]
        dg = admin.send_request(DescribeGroupsRequest[3](groups=[group], include_authorized_operations=True), coord)
        g = dg.to_object()["groups"][0]
        ops = g["authorized_operations"]
        bits = ops if isinstance(ops, int) else sum(1 << b for b in ops)
        if bits == -(1 << 31) or bits < 0 or bits & ~known:
            problems.append(f"DescribeGroups v3 authorized_operations: bits {sorted(ops) if not isinstance(ops, int) else ops} ({bits:#x})")
    finally:
        m.finish()
        admin.close()
    assert not problems, (
        "authorized operations were requested (include_*_authorized_operations=true) but the answer is not a set "
        "of ACL operation bits 3..14; bit 31 alone is INT32_MIN, Kafka's 'not requested' value:\n  "
        + "\n  ".join(problems))


def test_kafka_python_idempotent_produce_reads_back_keys_headers_and_partition_order(broker):
    topic = unique("kp-roundtrip")
    kp_create_topic(broker, topic).close()
    recs = kp_produce(broker, topic, sample_records(300, "kp", null_header=False))
    got = kp_read_all(broker, topic, len(recs))
    check_read_back(recs, got)
    # the other client reads the same bytes
    check_read_back(recs, cf_read_all(broker, topic, len(recs)))


def test_kafka_python_reads_what_confluent_kafka_wrote_including_null_header_values(broker):
    topic = unique("kp-cross")
    cf_create_topic(broker, topic)
    recs = cf_produce(broker, topic, sample_records(50, "x"))
    check_read_back(recs, kp_read_all(broker, topic, len(recs)))


class KpMember(threading.Thread):
    """A kafka-python group member on its own thread (kafka-python runs the
    group protocol inside poll()); commits synchronously after every batch."""

    def __init__(self, name, broker, group, topic, strategy, own: Ownership, lock: threading.Lock):
        super().__init__(name=name, daemon=True)
        self.member, self.own, self.lock = name, own, lock
        self.assigned: Set[int] = set()
        self.consumed: List[Got] = []
        self.error = None
        self.stopping = threading.Event()
        self.c = KafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id=group, client_id=name,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS, max_poll_interval_ms=30000,
            partition_assignment_strategy=[KP_ASSIGNORS[strategy]],
        )
        me = self

        class L(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                with me.lock:
                    ps = {tp.partition for tp in revoked}
                    me.own.revoke(me.member, ps)
                    me.assigned -= ps

            def on_partitions_assigned(self, assigned):
                with me.lock:
                    ps = {tp.partition for tp in assigned}
                    me.own.assign(me.member, ps)
                    me.assigned |= ps

        self.c.subscribe([topic], listener=L())

    def run(self):
        try:
            while not self.stopping.is_set():
                batch = self.c.poll(timeout_ms=100)
                n = 0
                with self.lock:
                    for _tp, rs in batch.items():
                        for r in rs:
                            if r.partition not in self.assigned:
                                self.own.violations.append(
                                    f"{self.member} got a record of partition {r.partition} it does not own")
                            self.consumed.append(kp_got(r, self.member))
                            n += 1
                if n:
                    self.c.commit()
        except Exception as e:  # noqa: BLE001
            self.error = e
        finally:
            with self.lock:  # close() sends LeaveGroup; kafka-python calls no revoke listener there
                self.own.revoke(self.member, set(self.assigned), how="close -")
                self.assigned.clear()
            try:
                self.c.close()
            except Exception as e:  # noqa: BLE001
                self.error = self.error or e

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(30)

    def finish(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), f"{self.member} did not stop"
        if self.error:
            raise AssertionError(f"{self.member} failed: {self.error!r}") from self.error


def _wait_members(members, cond, what, broker, own, timeout=TIMEOUT):
    def ok():
        for m in members:
            if m.error:
                _fail(f"{m.member} failed: {m.error!r}\n{own.report()}", broker)
        with members[0].lock:
            return cond()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.05)
    _fail(f"timed out after {timeout:.0f} s waiting for {what}\n{own.report()}", broker)


@pytest.mark.parametrize("strategy", ["range", "roundrobin"])
def test_kafka_python_two_member_group_never_owns_a_partition_twice_and_consumes_each_record_once(broker, strategy):
    topic, group = unique("kp-group"), unique("kp-g")
    kp_create_topic(broker, topic).close()
    own, lock = Ownership(), threading.Lock()
    a = KpMember("member-a", broker, group, topic, strategy, own, lock)
    members = [a]
    a.start()
    try:
        _wait_members(members, lambda: a.assigned == {0, 1, 2}, "member-a alone to own all partitions", broker, own)
        first = kp_produce(broker, topic, sample_records(60, "one", null_header=False, null_keys=False))
        _wait_members(members, lambda: len(a.consumed) >= 60, "member-a to consume 60 records", broker, own)
        b = KpMember("member-b", broker, group, topic, strategy, own, lock)
        members.append(b)
        b.start()

        def balanced():
            return bool(a.assigned and b.assigned and not (a.assigned & b.assigned)
                        and (a.assigned | b.assigned) == {0, 1, 2})

        _wait_members(members, balanced, "both members to own a disjoint share", broker, own)
        time.sleep(1.5)
        with lock:
            assert balanced(), f"assignment changed after settling: a {a.assigned} b {b.assigned}\n{own.report()}"

        second = kp_produce(broker, topic, sample_records(60, "two", null_header=False, null_keys=False))
        total = len(first) + len(second)
        _wait_members(members, lambda: len(a.consumed) + len(b.consumed) >= total, f"{total} records", broker, own)
        time.sleep(1.0)
        b.finish()
        members.remove(b)
        _wait_members(members, lambda: a.assigned == {0, 1, 2}, "member-a to own all after member-b left", broker,
                      own, timeout=SESSION_MS / 1000 - 1)
        a.finish()
        members.remove(a)
        with lock:
            assert not own.violations, "\n".join(own.violations) + "\n" + own.report()
            pos = [(g.partition, g.offset) for g in a.consumed + b.consumed]
        assert len(pos) == len(set(pos)), "records consumed twice"
        assert set(pos) == {(r.out_partition, r.out_offset) for r in first + second}
        admin = kp_admin(broker)
        offs = admin.list_consumer_group_offsets(group)
        ends = cf_end_offsets(broker, topic)
        assert {tp.partition: om.offset for tp, om in offs.items()} == ends
        admin.close()
    finally:
        for m in members:
            m.stopping.set()
        for m in members:
            m.join(30)


def test_kafka_python_consumer_resumes_from_committed_offsets_after_close(broker):
    topic, group = unique("kp-resume"), unique("kp-g")
    kp_create_topic(broker, topic).close()
    first = kp_produce(broker, topic, sample_records(30, "one", null_header=False))
    own, lock = Ownership(), threading.Lock()
    with KpMember("first", broker, group, topic, "range", own, lock) as m:
        _wait_members([m], lambda: len(m.consumed) >= 30, "30 records", broker, own)
        time.sleep(0.3)
        m.finish()
    admin = kp_admin(broker)
    offs = admin.list_consumer_group_offsets(group)
    assert {tp.partition: om.offset for tp, om in offs.items()} == cf_end_offsets(broker, topic)
    admin.close()
    second = kp_produce(broker, topic, sample_records(20, "two", null_header=False))
    with KpMember("second", broker, group, topic, "range", own, lock) as m2:
        _wait_members([m2], lambda: len(m2.consumed) >= 20, "the 20 new records", broker, own)
        time.sleep(1.5)
        m2.finish()
    got = {(g.partition, g.offset) for g in m2.consumed}
    assert len(m2.consumed) == 20, f"resumed consumer read {len(m2.consumed)} records, expected 20"
    assert got == {(r.out_partition, r.out_offset) for r in second}
    assert not got & {(r.out_partition, r.out_offset) for r in first}


def test_kafka_python_list_describe_and_delete_consumer_groups(broker):
    topic, group = unique("kp-groups"), unique("kp-g")
    kp_create_topic(broker, topic).close()
    kp_produce(broker, topic, sample_records(9, "g", null_header=False))
    own, lock = Ownership(), threading.Lock()
    m = KpMember("lister", broker, group, topic, "range", own, lock)
    m.start()
    admin = kp_admin(broker)
    try:  # finish() stops the member thread and leaves the group
        _wait_members([m], lambda: len(m.consumed) >= 9, "9 records", broker, own)
        groups = admin.list_consumer_groups()
        assert (group, "consumer") in [tuple(g[:2]) for g in groups], groups
        (desc,) = admin.describe_consumer_groups([group])
        assert desc.group == group and desc.state == "Stable" and desc.protocol_type == "consumer", desc
        assert desc.protocol == "range"
        assert len(desc.members) == 1 and desc.members[0].client_id == "lister"
        assert sorted(tp.partition for tp in desc.members[0].member_assignment.partitions()) == [0, 1, 2]
        assert desc.members[0].member_metadata.topics == [topic]
    finally:
        m.finish()
    (desc,) = admin.describe_consumer_groups([group])
    assert desc.state == "Empty" and not desc.members, desc
    res = admin.delete_consumer_groups([group])
    assert [(g, e) for g, e in res] == [(group, KErrors.NoError)], res
    assert group not in [g[0] for g in admin.list_consumer_groups()]
    admin.close()


def test_kafka_python_describe_configs_reports_topic_configs_set_at_creation(broker):
    topic = unique("kp-configs")
    admin = kp_create_topic(broker, topic, config={"retention.ms": "3600000"})
    (resp,) = admin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic)])
    (res,) = resp.resources
    err, name = res[0], res[3]
    assert err == 0 and name == topic, res
    configs = {c[0]: c[1] for c in res[4]}
    assert configs.get("retention.ms") == "3600000", configs
    (resp,) = admin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})])
    (res,) = resp.resources
    assert [c[0] for c in res[4]] == ["retention.ms"], "a DescribeConfigs filtered to one key returned others"
    admin.close()


def test_kafka_python_offsets_beginning_end_and_for_times(broker):
    topic = unique("kp-offsets")
    kp_create_topic(broker, topic).close()
    base = (int(time.time()) - 600) * 1000
    recs = [Rec(key=b"k", value=f"v{i}".encode(), headers=[], partition=1, timestamp=base + i * 1000)
            for i in range(10)]
    kp_produce(broker, topic, recs)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, client_id=unique("kp-offsets"))
    try:
        tps = [KTP(topic, p) for p in range(PARTITIONS)]
        assert c.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert c.end_offsets(tps) == {KTP(topic, 0): 0, KTP(topic, 1): 10, KTP(topic, 2): 0}
        res = c.offsets_for_times({KTP(topic, 1): base + 2500, KTP(topic, 0): base, KTP(topic, 2): base + 100_000})
        hit = res[KTP(topic, 1)]
        assert hit is not None and (hit.offset, hit.timestamp) == (3, base + 3000), hit
        assert res[KTP(topic, 0)] is None, res
        assert res[KTP(topic, 2)] is None, res
        late = c.offsets_for_times({KTP(topic, 1): base + 9001})[KTP(topic, 1)]
        assert late is None, f"no record at/after the timestamp, got {late}"
    finally:
        c.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_kafka_python_acknowledged_records_and_group_offsets_survive_broker_restart(broker, how):
    topic, group = unique("kp-durable"), unique("kp-g")
    kp_create_topic(broker, topic).close()
    first = kp_produce(broker, topic, sample_records(60, "one", null_header=False))
    own, lock = Ownership(), threading.Lock()
    with KpMember("durable", broker, group, topic, "range", own, lock) as m:
        _wait_members([m], lambda: len(m.consumed) >= 60, "60 records", broker, own)
        time.sleep(0.3)
        m.finish()
    second = kp_produce(broker, topic, sample_records(10, "two", null_header=False))
    admin = kp_admin(broker)
    committed = {tp.partition: om.offset for tp, om in admin.list_consumer_group_offsets(group).items()}
    admin.close()
    assert sum(committed.values()) == 60

    _kill(broker, how)

    wait_until(lambda: kp_metadata(broker, topic)[1] == {0, 1, 2}, f"{topic} back in metadata", broker=broker)
    admin = kp_admin(broker)
    assert {tp.partition: om.offset for tp, om in admin.list_consumer_group_offsets(group).items()} == committed
    admin.close()
    check_read_back(first + second, kp_read_all(broker, topic, len(first) + len(second)))
    with KpMember("after", broker, group, topic, "range", own, lock) as m2:
        _wait_members([m2], lambda: len(m2.consumed) >= 10, "the 10 unconsumed records", broker, own)
        time.sleep(1.0)
        m2.finish()
    assert {(g.partition, g.offset) for g in m2.consumed} == {(r.out_partition, r.out_offset) for r in second}
