"""Client-side helpers for the broker conformance suite: unique names, sample
records, and thin wrappers over confluent-kafka and kafka-python that fail
with the broker's log tail when something does not happen in time."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import pytest

PARTITIONS = 3
TIMEOUT = 30.0  # s, any single wait on the broker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT, every: float = 0.1, broker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    extra = f"\n--- broker ---\n{broker.describe()}" if broker is not None else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{extra}", pytrace=False)


@dataclass
class Rec:
    """One record as produced; ``headers`` keeps order and duplicates."""

    key: Optional[bytes]
    value: bytes
    headers: List[Tuple[str, Optional[bytes]]]
    partition: Optional[int] = None
    timestamp: Optional[int] = None  # ms
    # filled in from the delivery report / send future
    out_partition: Optional[int] = None
    out_offset: Optional[int] = None


def sample_records(n: int, tag: str, null_header: bool = True, null_keys: bool = True) -> List[Rec]:
    """``n`` records keyed over 7 keys (plus a few null keys), each with
    headers ``seq``, a repeated ``trace`` header, an empty-valued header and
    (optionally) a null-valued one."""
    out = []
    for i in range(n):
        key = None if (null_keys and i % 25 == 24) else f"key-{i % 7}".encode()
        headers: List[Tuple[str, Optional[bytes]]] = [
            ("seq", str(i).encode()),
            ("trace", f"{tag}-a".encode()),
            ("trace", f"{tag}-b".encode()),
            ("empty", b""),
        ]
        if null_header:
            headers.append(("null", None))
        value = json.dumps({"i": i, "tag": tag, "pad": "x" * (i % 50)}).encode()
        out.append(Rec(key=key, value=value, headers=headers))
    return out


def res(fut, what: str, broker=None, timeout: float = TIMEOUT):
    """``fut.result()`` of an admin future, failing with ``what`` on a timeout
    (a bare concurrent.futures.TimeoutError says nothing)."""
    import concurrent.futures

    try:
        return fut.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        extra = f"\n--- broker ---\n{broker.describe()}" if broker is not None else ""
        pytest.fail(f"no answer within {timeout:.0f} s to {what}{extra}", pytrace=False)


# --------------------------------------------------------------------------
# confluent-kafka


_RDKAFKA_LOG = logging.getLogger("librdkafka")


def cf_conf(broker, **extra) -> dict:
    """librdkafka config; its log lines go to a Python logger (captured by
    pytest) instead of stderr, so clients left behind by a finished test do
    not spray reconnect errors over the next one."""
    return {"bootstrap.servers": broker.bootstrap, "logger": _RDKAFKA_LOG, **extra}


def cf_admin(broker):
    from confluent_kafka.admin import AdminClient

    return AdminClient(cf_conf(broker))


def cf_create_topic(broker, name: str, partitions: int = PARTITIONS, config: Optional[Dict[str, str]] = None):
    """CreateTopics through confluent-kafka's AdminClient, then waits until
    Metadata shows every partition with a leader."""
    from confluent_kafka.admin import NewTopic

    admin = cf_admin(broker)
    fs = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=15,
        request_timeout=20,
    )
    try:
        fs[name].result(timeout=TIMEOUT)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"CreateTopics {name} ({partitions} partitions, config {config}) failed: {e!r}\n{broker.describe()}",
                    pytrace=False)
    cf_wait_topic(broker, name, partitions, admin=admin)
    return admin


def cf_wait_topic(broker, name: str, partitions: int = PARTITIONS, admin=None):
    admin = admin or cf_admin(broker)
    last = [None]

    def ready():
        md = admin.list_topics(topic=name, timeout=10)
        t = md.topics.get(name)
        last[0] = t
        return (
            t is not None
            and t.error is None
            and len(t.partitions) == partitions
            and all(p.leader >= 0 for p in t.partitions.values())
        )

    wait_until(ready, f"Metadata to show topic {name} with {partitions} led partitions (last: {last[0]})",
               broker=broker)


def cf_produce(broker, topic: str, recs: List[Rec], **extra) -> List[Rec]:
    """Idempotent, acks=all produce; fails unless every record is acknowledged."""
    from confluent_kafka import Producer

    p = Producer(cf_conf(broker, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5, **extra}))
    errors = []

    def on_delivery(rec):
        def cb(err, msg):
            if err is not None:
                errors.append((rec.key, err))
            else:
                rec.out_partition = msg.partition()
                rec.out_offset = msg.offset()

        return cb

    for r in recs:
        kw = {}
        if r.partition is not None:
            kw["partition"] = r.partition
        if r.timestamp is not None:
            kw["timestamp"] = r.timestamp
        p.produce(topic, value=r.value, key=r.key, headers=r.headers, on_delivery=on_delivery(r), **kw)
        p.poll(0)
    left = p.flush(TIMEOUT)
    if left or errors:
        pytest.fail(
            f"produce to {topic}: {left} of {len(recs)} records not delivered after {TIMEOUT} s, "
            f"errors {errors[:5]}\n{broker.describe()}",
            pytrace=False,
        )
    return recs


@dataclass
class Got:
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: List[Tuple[str, Optional[bytes]]]
    timestamp: int
    member: str = ""


def cf_got(msg, member: str = "") -> Got:
    return Got(
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        headers=list(msg.headers() or []),
        timestamp=msg.timestamp()[1],
        member=member,
    )


def cf_read_all(broker, topic: str, expected: int, partitions: int = PARTITIONS, linger: float = 1.0) -> List[Got]:
    """Reads every partition from the beginning (assign, no group) until
    ``expected`` records came, then ``linger`` s more to catch extras."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(cf_conf(broker, **{"group.id": unique("reader"), "enable.auto.commit": False,
                                     "auto.offset.reset": "earliest"}))
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out: List[Got] = []
        deadline = time.monotonic() + TIMEOUT
        extra_until = None
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=500, timeout=0.2):
                if m.error():
                    pytest.fail(f"consumer error reading {topic}: {m.error()}\n{broker.describe()}", pytrace=False)
                out.append(cf_got(m))
            if len(out) >= expected:
                extra_until = extra_until or time.monotonic() + linger
                if time.monotonic() >= extra_until:
                    break
        if len(out) < expected:
            pytest.fail(f"read {len(out)} of {expected} records from {topic} within {TIMEOUT} s\n{broker.describe()}",
                        pytrace=False)
        return out
    finally:
        c.close()


def cf_group_offsets(broker, group: str) -> Dict[Tuple[str, int], int]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = cf_admin(broker)
    fs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=20)
    got = res(fs[group], f"OffsetFetch (list_consumer_group_offsets) of group {group}", broker)
    return {(tp.topic, tp.partition): tp.offset for tp in got.topic_partitions if tp.offset >= 0}


def cf_end_offsets(broker, topic: str, partitions: int = PARTITIONS) -> Dict[int, int]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = cf_admin(broker)
    fs = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                            request_timeout=20)
    return {tp.partition: res(f, f"ListOffsets latest {tp.topic}/{tp.partition}", broker).offset for tp, f in fs.items()}


# --------------------------------------------------------------------------
# checks shared by clients


def check_read_back(produced: List[Rec], got: List[Got], compare_null_headers: bool = True):
    """Every acknowledged record is read back exactly once, at the offset it
    was acknowledged at, with key, value and headers intact, and each
    partition reads back in produce order with contiguous offsets from 0."""
    by_pos = {(g.partition, g.offset): g for g in got}
    dups = len(got) - len(by_pos)
    assert dups == 0, f"{dups} records read twice"
    assert len(got) == len(produced), f"read {len(got)} records, produced {len(produced)}"
    per_part: Dict[int, List[Got]] = {}
    for g in got:
        per_part.setdefault(g.partition, []).append(g)
    for p, gs in per_part.items():
        offs = [g.offset for g in gs]
        assert offs == list(range(len(gs))), f"partition {p}: offsets read {offs[:20]}… not 0..{len(gs) - 1} in order"
    for i, r in enumerate(produced):
        g = by_pos.get((r.out_partition, r.out_offset))
        assert g is not None, f"record #{i} acked at {r.out_partition}/{r.out_offset} not read back"
        assert g.key == r.key, f"record #{i}: key {g.key!r} != {r.key!r}"
        assert g.value == r.value, f"record #{i}: value {g.value!r} != {r.value!r}"
        want = r.headers if compare_null_headers else [(k, v) for k, v in r.headers if v is not None]
        assert g.headers == want, f"record #{i} at {g.partition}/{g.offset}: headers {g.headers!r} != {want!r}"
        if r.timestamp is not None:
            assert g.timestamp == r.timestamp, f"record #{i}: timestamp {g.timestamp} != {r.timestamp}"
    # within a partition, produce order == offset order
    for p in per_part:
        seqs = [i for i, r in sorted(((i, r) for i, r in enumerate(produced) if r.out_partition == p),
                                     key=lambda ir: ir[1].out_offset)]
        assert seqs == sorted(seqs), f"partition {p}: produce order not kept"
    # same key → same partition
    where: Dict[bytes, set] = {}
    for r in produced:
        if r.key is not None:
            where.setdefault(r.key, set()).add(r.out_partition)
    spread = {k: v for k, v in where.items() if len(v) > 1}
    assert not spread, f"keys written to several partitions: {spread}"


@dataclass
class Ownership:
    """Which member owns which partition, as the members' rebalance callbacks say."""

    owners: Dict[int, str] = field(default_factory=dict)
    violations: List[str] = field(default_factory=list)
    events: List[str] = field(default_factory=list)

    def assign(self, member: str, parts):
        self.events.append(f"{time.monotonic():.3f} {member} +{sorted(parts)}")
        for p in parts:
            cur = self.owners.get(p)
            if cur is not None and cur != member:
                self.violations.append(
                    f"partition {p} assigned to {member} while {cur} still owns it (owners {dict(self.owners)})")
            self.owners[p] = member

    def revoke(self, member: str, parts, how: str = "-"):
        self.events.append(f"{time.monotonic():.3f} {member} {how}{sorted(parts)}")
        for p in parts:
            if self.owners.get(p) == member:
                del self.owners[p]

    def report(self) -> str:
        return "rebalance events:\n  " + "\n  ".join(self.events[-40:])
