"""Log compaction (``cleanup.policy=compact``) on keyflow's own broker
(`broker`), checked with confluent-kafka (librdkafka), as Kafka behaves:

* a consumer reading a compacted partition from offset 0 gets each key once,
  with its latest value, at the offset it was acknowledged at (offsets are
  never rewritten; removed ones are skipped), before and after a restart;
* a tombstone (null value) stays while younger than ``delete.retention.ms``,
  then goes;
* an idempotent producer whose last batch was compacted away keeps producing
  after a restart (its sequence state is rebuilt from the log);
* records of an aborted transaction are removed, committed ones kept;
* a record without a key is refused at produce (INVALID_RECORD).

The broker compacts on its retention check, every 200 ms here
(``KEYFLOW_BROKER_RETENTION_CHECK_INTERVAL_MS``); topics use a tiny
``segment.bytes`` so that segments roll (the active segment is never
compacted)."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from broker_fixture import Broker
from brokerkit import TIMEOUT, cf_admin, cf_conf, cf_create_topic, res, unique

SEGMENT_BYTES = "600"

Read = List[Tuple[int, Optional[bytes], Optional[bytes]]]


@pytest.fixture
def broker(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYFLOW_BROKER_RETENTION_CHECK_INTERVAL_MS", "200")
    b = Broker(tmp_path / "broker-data", tmp_path / "logs")
    try:
        yield b
    finally:
        b.stop()


def _fail(msg: str, broker) -> None:
    pytest.fail(f"{msg}\n--- broker ---\n{broker.describe()}", pytrace=False)


def compacted_topic(broker, **config) -> str:
    topic = unique("compacted")
    cf_create_topic(broker, topic, partitions=1,
                    config={"cleanup.policy": "compact", "segment.bytes": SEGMENT_BYTES, **config})
    return topic


def producer(broker, **extra) -> Producer:
    # One record per batch: many batches, many segments.
    return Producer(cf_conf(broker, **{"acks": "all", "linger.ms": 0, "batch.num.messages": 1, **extra}))


def produce(broker, p: Producer, topic: str, records: List[Tuple[bytes, Optional[bytes]]]) -> List[int]:
    """Produces in order, one at a time; the acknowledged offsets."""
    offsets: List[int] = []
    for key, value in records:
        got: list = []
        p.produce(topic, key=key, value=value, partition=0, on_delivery=lambda err, msg: got.append((err, msg)))
        p.flush(TIMEOUT)
        if not got or got[0][0] is not None:
            _fail(f"produce of {key!r}={value!r} to {topic}: {got}", broker)
        offsets.append(got[0][1].offset())
    return offsets


def read_all(broker, topic: str, isolation: str = "read_uncommitted") -> Read:
    """(offset, key, value) of every record from offset 0 to the end."""
    c = Consumer(cf_conf(broker, **{"group.id": unique("reader"), "enable.auto.commit": False,
                                     "enable.partition.eof": True, "isolation.level": isolation}))
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: Read = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return out
                _fail(f"consumer error reading {topic}: {m.error()}", broker)
            out.append((m.offset(), m.key(), m.value()))
        _fail(f"no end of partition reading {topic} within {TIMEOUT} s (read {len(out)})", broker)
        return out
    finally:
        c.close()


def wait_read(broker, topic: str, want: Read, what: str, isolation: str = "read_uncommitted") -> None:
    deadline = time.monotonic() + TIMEOUT
    got: Read = []
    while time.monotonic() < deadline:
        got = read_all(broker, topic, isolation)
        if got == want:
            return
        time.sleep(0.3)
    _fail(f"{what}: reading {topic} from 0\n got {got}\nwant {want}", broker)


def latest(produced: List[Tuple[int, bytes, Optional[bytes]]], keep_tombstones: bool) -> Read:
    """What a compacted log reads as: the last record of each key, by offset."""
    last: Dict[bytes, Tuple[int, bytes, Optional[bytes]]] = {}
    for off, k, v in produced:
        last[k] = (off, k, v)
    return sorted(r for r in last.values() if keep_tombstones or r[2] is not None)


def test_a_compacted_topic_reads_back_the_latest_value_of_each_key_at_its_offset_and_tombstones_expire(broker):
    topic = compacted_topic(broker, **{"delete.retention.ms": "3600000"})
    p = producer(broker, **{"enable.idempotence": True})
    keys = [f"k{i}".encode() for i in range(6)]
    records: List[Tuple[bytes, Optional[bytes]]] = []
    for r in range(4):
        for i, k in enumerate(keys):
            deleted = (i < 2 and r == 3) or (i == 2 and r == 1)  # k0, k1 end deleted; k2 comes back
            records.append((k, None if deleted else f"{k.decode()}-v{r}-{'x' * 20}".encode()))
    offsets = produce(broker, p, topic, records)
    assert offsets == list(range(len(records))), "one offset per record, in order"
    produced = [(o, k, v) for o, (k, v) in zip(offsets, records)]
    # Another producer overwrites the idempotent producer's last key, then
    # fills segments so that everything above lies in closed ones.
    other = producer(broker)
    more = [(keys[-1], b"overwritten-by-another-producer")] + [(f"fill-{i}".encode(), b"f" * 40) for i in range(12)]
    produced += [(o, k, v) for o, (k, v) in zip(produce(broker, other, topic, more), more)]

    with_tombstones = latest(produced, keep_tombstones=True)
    assert len(with_tombstones) < len(produced)
    wait_read(broker, topic, with_tombstones, "compaction: latest values, tombstones still young")

    broker.restart()
    assert read_all(broker, topic) == with_tombstones, "the same after a restart"
    # Its last batch was compacted away (kept empty): its sequence goes on.
    after = produce(broker, p, topic, [(b"after-restart", b"1")])
    assert after == [produced[-1][0] + 1]
    produced.append((after[0], b"after-restart", b"1"))

    admin = cf_admin(broker)
    change = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("delete.retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    res(admin.incremental_alter_configs([change])[change], "IncrementalAlterConfigs delete.retention.ms", broker)
    without = latest(produced, keep_tombstones=False)
    assert len(without) == len(with_tombstones) + 1 - 2, "k0 and k1 are tombstones"
    wait_read(broker, topic, without, "tombstones older than delete.retention.ms removed")

    broker.restart(graceful=False)
    assert read_all(broker, topic) == without, "the same after kill -9 and a restart"


def test_records_of_an_aborted_transaction_are_compacted_away_and_committed_ones_stay(broker):
    topic = compacted_topic(broker)
    plain = producer(broker)
    produced = [(o, b"a", b"a0") for o in produce(broker, plain, topic, [(b"a", b"a0")])]
    t = Producer(cf_conf(broker, **{"transactional.id": unique("txn"), "linger.ms": 0, "batch.num.messages": 1}))
    acked: List[Tuple[int, bytes, bytes]] = []

    def send(key: bytes, value: bytes) -> None:
        def cb(err, msg):
            assert err is None, err
            acked.append((msg.offset(), key, value))

        t.produce(topic, key=key, value=value, partition=0, on_delivery=cb)

    t.init_transactions(TIMEOUT)
    t.begin_transaction()
    send(b"a", b"aborted")
    send(b"b", b"aborted")
    t.flush(TIMEOUT)
    t.abort_transaction(TIMEOUT)
    t.begin_transaction()
    send(b"c", b"committed")
    t.commit_transaction(TIMEOUT)
    assert [v for _, _, v in acked] == [b"aborted", b"aborted", b"committed"], acked
    fill = [(f"fill-{i}".encode(), b"f" * 40) for i in range(10)]
    produced += [(o, k, v) for o, (k, v) in zip(produce(broker, plain, topic, fill), fill)]
    want = sorted(produced + acked[2:])
    wait_read(broker, topic, want, "aborted records removed, a0 (not superseded by an abort) and c kept")
    assert read_all(broker, topic, "read_committed") == want


def test_a_record_without_a_key_is_refused_by_a_compacted_topic_only(broker):
    topic = compacted_topic(broker)
    plain = unique("plain")
    cf_create_topic(broker, plain, partitions=1)
    p = producer(broker)
    outcome: list = []
    for t in (topic, plain):
        p.produce(t, value=b"no key", partition=0, on_delivery=lambda err, msg: outcome.append(err))
        p.flush(TIMEOUT)
    assert len(outcome) == 2, outcome
    assert outcome[0] is not None and outcome[0].code() == KafkaError.INVALID_RECORD, outcome[0]
    assert outcome[1] is None, f"a delete topic takes it: {outcome[1]}"
    assert produce(broker, p, topic, [(b"k", b"keyed")]) == [0], "nothing was written, keyed records go in"
