"""Kafka transactions (KIP-98, KIP-447) on keyflow's own broker (`broker`),
checked with two independent client implementations: confluent-kafka
(librdkafka) and kafka-python (its own protocol code; 2.3.3, pinned in
requirements.txt, has a transactional KafkaProducer — ``transactional_id``,
``init_transactions``, ``begin_transaction``, ``send_offsets_to_transaction``,
``commit_transaction``, ``abort_transaction`` — and a read_committed
KafkaConsumer, ``isolation_level='read_committed'``). kafkajs has its own
scenario (tests/js/transactions.mjs, run by test_broker_kafkajs.py).

What is pinned, as Kafka behaves:

* a commit makes every record of the transaction visible to read_committed
  consumers on every partition it wrote to, in produce order, and each commit
  or abort marker takes one offset;
* an aborted transaction is skipped by read_committed through the fetch
  response's aborted-transactions list (records of committed transactions
  after it, or interleaved with it, are still read), read_uncommitted reads it;
* an open transaction bounds read_committed at the last stable offset (LSO,
  the first offset of the oldest open transaction): Fetch stops there, and
  ListOffsets latest / offsets-for-times answer as of the LSO;
* ``send_offsets_to_transaction`` offsets become the group's with the commit
  only (OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT while
  they are pending), never with an abort, and TxnOffsetCommit v3 refuses a
  stale group generation (KIP-447);
* InitProducerId with the same transactional.id fences the previous producer
  and aborts its open transaction; transaction.timeout.ms aborts an open
  transaction; committed and aborted transactions, and their offsets, survive
  kill -9 of the broker;
* all of it together: a consume-transform-produce loop that fails over to a
  new instance mid-transaction outputs every input exactly once.

keyflow's own contract beyond Kafka's: a restart aborts every transaction that
was open (Kafka would keep it open until its timeout or the next
InitProducerId of its transactional.id).

Every test starts a fresh broker (``broker`` fixture, broker_fixture.py) and
creates its topics itself. Clients set ``isolation.level`` explicitly:
librdkafka consumers default to read_committed, kafka-python ones to
read_uncommitted."""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec
import kafka.errors as KErrors
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTP
from kafka.structs import OffsetAndMetadata

from broker_fixture import broker  # noqa: F401  (the fixture)
from brokerkit import (
    PARTITIONS,
    TIMEOUT,
    Got,
    Rec,
    cf_admin,
    cf_conf,
    cf_create_topic,
    cf_got,
    cf_produce,
    cf_wait_topic,
    res,
    unique,
    wait_until,
)

RC, RU = "read_committed", "read_uncommitted"


def _fail(msg: str, broker) -> None:
    pytest.fail(f"{msg}\n--- broker ---\n{broker.describe()}", pytrace=False)


def txn_recs(tag: str, per_partition: Dict[int, int]) -> List[Rec]:
    """``per_partition[p]`` records for partition ``p`` (explicit partitions),
    keys and values naming the tag, partition and position."""
    out = []
    for p, n in sorted(per_partition.items()):
        for i in range(n):
            out.append(Rec(key=f"{tag}-k{p}-{i}".encode(), value=f"{tag}|p{p}|{i}".encode(),
                           headers=[("tag", tag.encode()), ("i", str(i).encode())], partition=p))
    return out


# --------------------------------------------------------------------------
# confluent-kafka helpers


class TxProducer:
    """A librdkafka transactional producer; every step that must succeed fails
    the test with the broker's log tail when it does not."""

    def __init__(self, broker, txid: str, init: bool = True, **extra):
        self.broker, self.txid = broker, txid
        self.p = Producer(cf_conf(broker, **{"transactional.id": txid, "linger.ms": 5, **extra}))
        if init:
            self.ok("init_transactions", lambda: self.p.init_transactions(TIMEOUT))

    def ok(self, what: str, fn):
        try:
            return fn()
        except KafkaException as e:
            _fail(f"{self.txid}: {what} failed: {e.args[0]!r}", self.broker)

    def begin(self):
        self.ok("begin_transaction", self.p.begin_transaction)

    def send(self, topic: str, recs: List[Rec]) -> List[Rec]:
        """Produces ``recs`` in the open transaction and waits until each is
        acknowledged (written, not yet committed), filling in its offset."""
        errors = []

        def cb(rec):
            def f(err, msg):
                if err is not None:
                    errors.append((rec.value, err))
                else:
                    rec.out_partition, rec.out_offset = msg.partition(), msg.offset()
            return f

        for r in recs:
            kw = {"partition": r.partition} if r.partition is not None else {}
            if r.timestamp is not None:
                kw["timestamp"] = r.timestamp
            self.p.produce(topic, value=r.value, key=r.key, headers=r.headers, on_delivery=cb(r), **kw)
        left = self.p.flush(TIMEOUT)
        if left or errors:
            _fail(f"{self.txid}: {left} of {len(recs)} transactional records unacknowledged, errors {errors[:5]}",
                  self.broker)
        return recs

    def send_offsets(self, offsets: List[TopicPartition], group_metadata):
        self.ok("send_offsets_to_transaction",
                lambda: self.p.send_offsets_to_transaction(offsets, group_metadata, TIMEOUT))

    def commit(self):
        self.ok("commit_transaction", lambda: self.p.commit_transaction(TIMEOUT))

    def abort(self):
        self.ok("abort_transaction", lambda: self.p.abort_transaction(TIMEOUT))


class Reader:
    """Reads every partition of a topic from the beginning (assign, no group)
    with one isolation level; remembers the records and, per partition, the
    offset of the partition-EOF event that came after its last record
    (librdkafka reports EOF at the high watermark for read_uncommitted and at
    the last stable offset for read_committed)."""

    def __init__(self, broker, topic: str, isolation: str, partitions: int = PARTITIONS,
                 start: Optional[Dict[int, int]] = None):
        """``start``: {partition: offset} to read from instead of every
        partition from the beginning."""
        self.broker, self.topic, self.isolation = broker, topic, isolation
        self.c = Consumer(cf_conf(broker, **{
            "group.id": unique("tx-reader"), "isolation.level": isolation, "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
        }))
        start = start if start is not None else {p: OFFSET_BEGINNING for p in range(partitions)}
        self.c.assign([TopicPartition(topic, p, o) for p, o in sorted(start.items())])
        self.got: List[Got] = []
        self.eof: Dict[int, int] = {}

    def poll(self, seconds: float = 0.2):
        end = time.monotonic() + seconds
        while True:
            for m in self.c.consume(num_messages=500, timeout=0.05):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        self.eof[m.partition()] = m.offset()
                        continue
                    _fail(f"{self.isolation} consumer error reading {self.topic}: {m.error()}", self.broker)
                self.got.append(cf_got(m))
                self.eof.pop(m.partition(), None)
            if time.monotonic() >= end:
                return

    def until_eof_at(self, want: Dict[int, int], what: str, timeout: float = TIMEOUT) -> List[Got]:
        """Polls until each partition of ``want`` reached EOF at exactly that offset."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.1)
            if all(self.eof.get(p) == o for p, o in want.items()):
                return self.got
        _fail(f"{self.isolation} consumer of {self.topic} did not reach {what} {want} within {timeout:.0f} s: "
              f"EOF at {self.eof}, read {len(self.got)} records {_show(self.got)}", self.broker)

    def watermarks(self, p: int) -> Tuple[int, int]:
        """librdkafka's get_watermark_offsets (ListOffsets with this consumer's isolation level)."""
        return self.c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)

    def close(self):
        self.c.close()


def read_to_eof(broker, topic: str, isolation: str, want: Dict[int, int], what: str) -> List[Got]:
    r = Reader(broker, topic, isolation)
    try:
        return list(r.until_eof_at(want, what))
    finally:
        r.close()


def latest(broker, topic: str, isolation: str, partitions: int = PARTITIONS, admin=None) -> Dict[int, int]:
    """ListOffsets latest (-1) with an isolation level, through the AdminClient."""
    admin = admin or cf_admin(broker)
    level = IsolationLevel.READ_COMMITTED if isolation == RC else IsolationLevel.READ_UNCOMMITTED
    fs = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                            isolation_level=level, request_timeout=20)
    return {tp.partition: res(f, f"ListOffsets latest ({isolation}) {topic}/{tp.partition}", broker).offset
            for tp, f in fs.items()}


def first_offsets(recs: List[Rec]) -> Dict[int, int]:
    """{partition: offset of the first of ``recs`` there}."""
    out: Dict[int, int] = {}
    for r in recs:
        out[r.out_partition] = min(out.get(r.out_partition, r.out_offset), r.out_offset)
    return out


def _show(got: List[Got]) -> str:
    return str([(g.partition, g.offset, g.value.decode() if g.value else g.value) for g in got][:40])


def check_exact(got: List[Got], want: List[Rec], what: str, broker):
    """``got`` is exactly ``want``: per partition, the same records (offset,
    key, value, headers) in produce order, nothing else."""
    def by_part(rows):
        out: Dict[int, list] = {}
        for row in rows:
            out.setdefault(row[0], []).append(row[1:])
        return out

    have = by_part([(g.partition, g.offset, g.key, g.value, g.headers) for g in got])
    expect = by_part([(r.out_partition, r.out_offset, r.key, r.value, r.headers) for r in want])
    if have != expect:
        lines = []
        for p in sorted(set(have) | set(expect)):
            h = [(o, v.decode() if v else v) for o, _k, v, _h in have.get(p, [])]
            e = [(o, v.decode() if v else v) for o, _k, v, _h in expect.get(p, [])]
            if h != e:
                lines.append(f"  partition {p}: read {h}\n  {' ' * len(str(p))}          expected {e}")
            elif have.get(p) != expect.get(p):
                lines.append(f"  partition {p}: keys/headers differ: {have.get(p)} != {expect.get(p)}")
        _fail(f"{what}: records read are not the expected ones (offset, value):\n" + "\n".join(lines), broker)


def group_offsets(broker, group: str, topic: str, partitions=range(PARTITIONS), require_stable: bool = False):
    """OffsetFetch through the AdminClient: {partition: (offset, error code or None, metadata)}."""
    admin = cf_admin(broker)
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    fs = admin.list_consumer_group_offsets([req], require_stable=require_stable, request_timeout=20)
    got = res(fs[group], f"OffsetFetch of group {group} (require_stable={require_stable})", broker)
    return {tp.partition: (tp.offset, tp.error.code() if tp.error else None, tp.metadata)
            for tp in got.topic_partitions}


def plain_group_metadata(broker, group: str):
    """The group metadata of a consumer that never joins (generation -1, no
    member id): TxnOffsetCommit then skips the KIP-447 member check, as for
    pre-KIP-447 producers. The consumer stays open while it is used."""
    c = Consumer(cf_conf(broker, **{"group.id": group, "enable.auto.commit": False}))
    return c, c.consumer_group_metadata()


def _kill(broker, how: str):
    if how == "sigterm":
        broker.restart()
    else:
        broker.kill9()
        broker.start(broker.port)


# ==========================================================================
# confluent-kafka (librdkafka)
# ==========================================================================


def test_committed_transactions_are_read_by_read_committed_exactly_in_partition_order_with_one_offset_per_marker(
        broker):
    topic = unique("tx-commit")
    cf_create_topic(broker, topic)
    p = TxProducer(broker, unique("txid"))
    p.begin()
    first = p.send(topic, txn_recs("one", {0: 4, 1: 4, 2: 4}))
    p.commit()
    p.begin()
    second = p.send(topic, txn_recs("two", {0: 2, 1: 2, 2: 2}))
    p.commit()
    for r in first:
        assert r.out_offset == int(r.value.decode().rsplit("|", 1)[1]), f"first transaction at offset {r.out_offset}"
    # offsets 0..3 records, 4 the commit marker, 5..6 records, 7 the second marker
    assert sorted({r.out_offset for r in second}) == [5, 6], \
        f"second transaction's records at {sorted({r.out_offset for r in second})}: a commit marker takes one offset"
    ends = {p_: 8 for p_ in range(PARTITIONS)}
    assert latest(broker, topic, RU) == ends, "high watermark after 6 records and 2 markers per partition"
    assert latest(broker, topic, RC) == ends, "no transaction open: read_committed latest is the high watermark"

    got = read_to_eof(broker, topic, RC, ends, "the high watermark")
    check_exact(got, first + second, "read_committed after two commits", broker)
    got = read_to_eof(broker, topic, RU, ends, "the high watermark")
    check_exact(got, first + second, "read_uncommitted after two commits (markers are never records)", broker)


def test_aborted_transaction_is_skipped_by_read_committed_via_the_aborted_list_and_read_by_read_uncommitted(broker):
    """The aborted transaction lies between committed ones, and another
    producer's transaction is interleaved with it batch by batch in the same
    partitions: a read_committed consumer can skip the aborted records only by
    the fetch response's aborted-transactions list (the LSO is past them all)."""
    topic = unique("tx-abort")
    cf_create_topic(broker, topic)
    p = TxProducer(broker, unique("txid-p"))
    q = TxProducer(broker, unique("txid-q"))
    p.begin()
    a = p.send(topic, txn_recs("a", {0: 2, 1: 2, 2: 2}))
    p.commit()
    p.begin()
    b1 = p.send(topic, txn_recs("b1-aborted", {0: 3, 1: 3}))
    q.begin()
    d1 = q.send(topic, txn_recs("d1", {0: 2, 1: 1, 2: 1}))
    b2 = p.send(topic, txn_recs("b2-aborted", {0: 2, 2: 2}))
    d2 = q.send(topic, txn_recs("d2", {0: 1, 1: 2}))
    # two open transactions: the older one bounds the LSO on each partition
    b_first, d_first = first_offsets(b1 + b2), first_offsets(d1)
    oldest = {part: min(b_first.get(part, 1 << 62), d_first.get(part, 1 << 62)) for part in range(PARTITIONS)}
    assert oldest == {0: b_first[0], 1: b_first[1], 2: d_first[2]}, (b_first, d_first)
    assert latest(broker, topic, RC) == oldest, "read_committed latest with two transactions open"
    p.abort()
    assert latest(broker, topic, RC) == d_first, "read_committed latest once the older transaction aborted"
    q.commit()
    p.begin()
    c = p.send(topic, txn_recs("c", {0: 2, 1: 2, 2: 2}))
    p.commit()

    ends = latest(broker, topic, RU)
    assert latest(broker, topic, RC) == ends, "every transaction ended: the LSO is the high watermark"
    committed = a + d1 + d2 + c
    got = read_to_eof(broker, topic, RC, ends, "the high watermark")
    check_exact(got, committed, "read_committed (confluent-kafka) after commit, interleaved abort/commit, commit",
                broker)
    got = read_to_eof(broker, topic, RU, ends, "the high watermark")
    check_exact(got, a + b1 + d1 + b2 + d2 + c, "read_uncommitted sees the aborted records too", broker)
    # kafka-python's own read_committed implementation agrees
    check_exact(kp_read(broker, topic, RC, ends), committed, "read_committed (kafka-python)", broker)

    # a consumer starting inside the aborted transaction (past its first
    # offset) is still told about it
    inside = b1[1]
    assert inside.out_partition == 0 and inside.out_offset > b_first[0]
    r = Reader(broker, topic, RC, start={0: inside.out_offset})
    try:
        got = r.until_eof_at({0: ends[0]}, "the high watermark of partition 0")
    finally:
        r.close()
    check_exact(got, [x for x in committed if x.out_partition == 0 and x.out_offset > inside.out_offset],
                f"read_committed from offset {inside.out_offset}, inside the aborted transaction", broker)


def test_open_transaction_bounds_read_committed_fetch_and_list_offsets_at_its_first_offset_until_commit(broker):
    topic = unique("tx-lso")
    cf_create_topic(broker, topic)
    p = TxProducer(broker, unique("txid"))
    p.begin()
    a = p.send(topic, txn_recs("a", {0: 2, 1: 2, 2: 2}))
    p.commit()
    p.begin()
    b = p.send(topic, txn_recs("b-open", {0: 3, 1: 3}))
    # non-transactional records after the open transaction's first one
    n = cf_produce(broker, topic, [Rec(key=b"plain", value=f"plain-{i}".encode(), headers=[], partition=0)
                                   for i in range(2)])
    lso = {0: 3, 1: 3, 2: 3}  # records 0,1 + the commit marker at 2: the open transaction starts at 3
    assert {r.out_partition: r.out_offset for r in b if r.value.endswith(b"|0")} == {0: 3, 1: 3}, \
        [(r.out_partition, r.out_offset) for r in b]
    hwm = {0: 8, 1: 6, 2: 3}
    assert latest(broker, topic, RU) == hwm
    assert latest(broker, topic, RC) == lso, \
        "ListOffsets latest with read_committed must answer the last stable offset (the open transaction's first)"

    rc, ru = Reader(broker, topic, RC), Reader(broker, topic, RU)
    try:
        for part in range(PARTITIONS):
            assert rc.watermarks(part) == (0, lso[part]), f"read_committed watermarks of partition {part}"
            assert ru.watermarks(part) == (0, hwm[part]), f"read_uncommitted watermarks of partition {part}"
        rc.until_eof_at(lso, "the last stable offset")
        check_exact(rc.got, a, "read_committed while a transaction is open", broker)
        ru.until_eof_at(hwm, "the high watermark")
        check_exact(ru.got, a + b + n, "read_uncommitted while a transaction is open", broker)
        rc.poll(1.0)  # a long-poll at the LSO must not hand out the open records either
        check_exact(rc.got, a, "read_committed polled on at the last stable offset", broker)

        p.commit()
        after = {0: 9, 1: 7, 2: 3}  # + the commit marker on the two partitions written to
        rc.until_eof_at(after, "the high watermark after the commit")
        check_exact(rc.got, a + b + n, "read_committed after the commit", broker)
        assert latest(broker, topic, RC) == after == latest(broker, topic, RU)
        assert rc.watermarks(0) == (0, 9)
    finally:
        rc.close()
        ru.close()


def test_read_committed_offsets_for_times_do_not_point_into_an_open_transaction(broker):
    """Kafka answers a ListOffsets timestamp lookup only with an offset below
    the last fetchable one (Partition.fetchOffsetForTimestamp: the LSO for
    read_committed): a record of an open transaction is not there yet, so the
    answer is -1 (no offset) until the transaction commits."""
    topic = unique("tx-times")
    admin = cf_create_topic(broker, topic, partitions=1)
    now = int(time.time() * 1000)
    p = TxProducer(broker, unique("txid"))
    p.begin()
    past = txn_recs("past", {0: 2})
    for i, r in enumerate(past):
        r.timestamp = now - 60_000 + i * 1000
    p.send(topic, past)
    p.commit()
    p.begin()
    future = txn_recs("future-open", {0: 2})
    for i, r in enumerate(future):
        r.timestamp = now + 60_000 + i * 1000
    p.send(topic, future)
    first_open = future[0].out_offset
    assert first_open == 3, [r.out_offset for r in future]

    def at(ts, level):
        tp = TopicPartition(topic, 0)
        return res(admin.list_offsets({tp: OffsetSpec.for_timestamp(ts)}, isolation_level=level,
                                      request_timeout=20)[tp], f"ListOffsets ts={ts} {level}", broker).offset

    assert at(now - 59_500, IsolationLevel.READ_COMMITTED) == 1, "a committed record's offset by timestamp"
    assert at(now + 30_000, IsolationLevel.READ_UNCOMMITTED) == first_open
    got = at(now + 30_000, IsolationLevel.READ_COMMITTED)
    assert latest(broker, topic, RC, partitions=1) == {0: first_open}
    p.commit()
    after = at(now + 30_000, IsolationLevel.READ_COMMITTED)
    assert got == -1, (
        f"ListOffsets (read_committed) for a timestamp that only records of the open transaction reach answered "
        f"offset {got}, at/after the last stable offset {first_open}; Kafka answers -1 (no offset below the LSO)")
    assert after == first_open, f"after the commit the lookup answers {after}, expected {first_open}"


def test_send_offsets_to_transaction_commits_the_group_offsets_with_the_commit_and_never_with_an_abort(broker):
    topic, out, group = unique("tx-in"), unique("tx-out"), unique("tx-g")
    cf_create_topic(broker, topic)
    cf_create_topic(broker, out)
    cf_produce(broker, topic, [Rec(key=None, value=f"in-{p_}-{i}".encode(), headers=[], partition=p_)
                               for p_ in range(PARTITIONS) for i in range(10)])
    # the group's offsets before: partition 0 at 2, partition 1 none
    pre = Consumer(cf_conf(broker, **{"group.id": group, "enable.auto.commit": False}))
    pre.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    pre.close()

    # a group member (joined: KIP-447 generation and member id go with the offsets)
    member = Consumer(cf_conf(broker, **{"group.id": group, "enable.auto.commit": False,
                                          "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                                          "isolation.level": RC, "auto.offset.reset": "earliest"}))
    ru = Consumer(cf_conf(broker, **{"group.id": group, "isolation.level": RU}))
    rc = Consumer(cf_conf(broker, **{"group.id": group, "isolation.level": RC}))
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    try:
        member.subscribe([topic])

        def joined():
            member.poll(0.1)
            return bool(member.assignment())

        wait_until(joined, "the member's assignment", broker=broker)
        p = TxProducer(broker, unique("txid"))
        p.begin()
        p.send(out, txn_recs("out", {0: 1}))
        p.send_offsets([TopicPartition(topic, 0, 5, metadata="m-0"), TopicPartition(topic, 1, 4, metadata="m-1")],
                       member.consumer_group_metadata())

        before = {tp.partition: (tp.offset, tp.error) for tp in ru.committed(tps, timeout=10)}
        assert before == {0: (2, None), 1: (-1001, None)}, \
            f"pending transactional offsets leaked to OffsetFetch without require_stable: {before}"
        stable = group_offsets(broker, group, topic, [0, 1], require_stable=True)
        assert {k: v[1] for k, v in stable.items()} == {0: KafkaError.UNSTABLE_OFFSET_COMMIT,
                                                        1: KafkaError.UNSTABLE_OFFSET_COMMIT}, \
            f"OffsetFetch require_stable while offsets are pending: {stable}"

        # a read_committed consumer's committed() (require_stable) waits for the transaction
        waited = {}

        def fetch_stable():
            try:
                waited["offsets"] = {tp.partition: tp.offset for tp in rc.committed(tps, timeout=20)}
            except KafkaException as e:
                waited["error"] = e
            waited["at"] = time.monotonic()

        th = threading.Thread(target=fetch_stable, daemon=True)
        th.start()
        time.sleep(1.0)
        commit_at = time.monotonic()
        p.commit()
        th.join(25)
        assert "error" not in waited, f"committed() with require_stable failed: {waited.get('error')!r}"
        assert waited.get("offsets") == {0: 5, 1: 4} and waited["at"] >= commit_at, (
            f"committed() with require_stable answered {waited.get('offsets')} "
            f"{'before' if waited.get('at', 0) < commit_at else 'after'} the commit; it must wait for the "
            f"transaction (UNSTABLE_OFFSET_COMMIT) and answer the committed 5/4")

        after = {tp.partition: (tp.offset, tp.metadata) for tp in ru.committed(tps, timeout=10)}
        assert after == {0: (5, "m-0"), 1: (4, "m-1")}, f"offsets after the commit: {after}"

        # a transaction of offsets only (nothing produced) commits them too
        p.begin()
        p.send_offsets([TopicPartition(topic, 1, 6)], member.consumer_group_metadata())
        p.commit()
        after = {tp.partition: tp.offset for tp in ru.committed(tps, timeout=10)}
        assert after == {0: 5, 1: 6}, f"offsets after an offsets-only transaction: {after}"

        # an aborted transaction's offsets are never the group's
        p.begin()
        p.send(out, txn_recs("out-aborted", {0: 1}))
        p.send_offsets([TopicPartition(topic, 0, 9), TopicPartition(topic, 2, 7)], member.consumer_group_metadata())
        p.abort()
        time.sleep(0.5)
        final = group_offsets(broker, group, topic, [0, 1, 2], require_stable=True)
        assert {k: v[:2] for k, v in final.items()} == {0: (5, None), 1: (6, None), 2: (-1001, None)}, \
            f"offsets after an aborted transaction (nothing pending either): {final}"
    finally:
        member.close()
        ru.close()
        rc.close()


def test_send_offsets_with_a_stale_group_generation_is_refused_and_commits_nothing(broker):
    """KIP-447: TxnOffsetCommit v3 carries the member's generation; a zombie
    (older generation) is refused with ILLEGAL_GENERATION, an abortable error."""
    topic, group = unique("tx-gen"), unique("tx-g")
    cf_create_topic(broker, topic)

    def member(name):
        c = Consumer(cf_conf(broker, **{"group.id": group, "client.id": name, "enable.auto.commit": False,
                                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                                         "isolation.level": RU}))
        c.subscribe([topic])
        return c

    a = member("a")
    b = None
    try:
        def alone():
            a.poll(0.05)
            return len(a.assignment()) == PARTITIONS

        wait_until(alone, "member a to own every partition", broker=broker)
        stale = a.consumer_group_metadata()
        b = member("b")

        def rebalanced():
            a.poll(0.05)
            b.poll(0.05)
            return bool(b.assignment()) and len(a.assignment()) + len(b.assignment()) == PARTITIONS

        wait_until(rebalanced, "a and b to share the partitions (a new generation)", broker=broker)
        p = TxProducer(broker, unique("txid"))
        p.begin()
        p.send(topic, txn_recs("x", {0: 1}))
        with pytest.raises(KafkaException) as ei:
            p.p.send_offsets_to_transaction([TopicPartition(topic, 0, 1)], stale, TIMEOUT)
        err = ei.value.args[0]
        assert err.code() == KafkaError.ILLEGAL_GENERATION and err.txn_requires_abort() and not err.fatal(), \
            f"send_offsets_to_transaction with the previous generation: {err!r}"
        p.abort()
        assert group_offsets(broker, group, topic, [0])[0][:2] == (-1001, None), "a refused offset was committed"

        # the current generation is accepted
        p.begin()
        p.send(topic, txn_recs("y", {0: 1}))
        p.send_offsets([TopicPartition(topic, 0, 2)], a.consumer_group_metadata())
        p.commit()
        assert group_offsets(broker, group, topic, [0])[0][:2] == (2, None)
    finally:
        a.close()
        if b is not None:
            b.close()


def test_a_regular_offset_commit_made_while_transactional_offsets_are_pending_wins_over_them(broker):
    """Kafka keeps the most recent commit when transactional and regular
    offset commits mix: the pending offsets apply at EndTxn only where no
    regular commit came after the TxnOffsetCommit (GroupMetadata's
    completePendingTxnOffsetCommit / the new coordinator's
    OffsetMetadataManager compare the commit records' positions)."""
    topic, group = unique("tx-mixed"), unique("tx-g")
    cf_create_topic(broker, topic)
    plain = Consumer(cf_conf(broker, **{"group.id": group, "enable.auto.commit": False, "isolation.level": RU}))
    try:
        p = TxProducer(broker, unique("txid"))
        p.begin()
        p.send(topic, txn_recs("x", {0: 1}))
        p.send_offsets([TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 5)], plain.consumer_group_metadata())
        plain.commit(offsets=[TopicPartition(topic, 0, 8)], asynchronous=False)  # newer than the pending 5
        assert {k: v[:2] for k, v in group_offsets(broker, group, topic, [0, 1]).items()} == \
            {0: (8, None), 1: (-1001, None)}
        p.commit()
        now = {k: v[:2] for k, v in group_offsets(broker, group, topic, [0, 1]).items()}
        assert now == {0: (8, None), 1: (5, None)}, (
            f"after EndTxn(commit) the group's offsets are {now}: partition 0 must keep the regular commit (8) made "
            f"after the transaction's TxnOffsetCommit (5), partition 1 takes the transaction's 5")
    finally:
        plain.close()


def test_second_producer_with_the_same_transactional_id_fences_the_first_and_aborts_its_transaction(broker):
    topic, group = unique("tx-fence"), unique("tx-g")
    cf_create_topic(broker, topic)
    txid = unique("txid")
    holder, meta = plain_group_metadata(broker, group)
    try:
        first = TxProducer(broker, txid)
        first.begin()
        zombie = first.send(topic, txn_recs("zombie", {0: 3, 1: 3}))
        first.send_offsets([TopicPartition(topic, 0, 3)], meta)

        second = TxProducer(broker, txid)  # InitProducerId: bumps the epoch, aborts the open transaction
        with pytest.raises(KafkaException) as ei:
            first.p.commit_transaction(TIMEOUT)
        err = ei.value.args[0]
        assert err.code() == KafkaError._FENCED and err.fatal(), \
            f"the fenced producer's commit must fail with a fatal _FENCED error, got {err!r}"

        ends = latest(broker, topic, RU)
        assert ends == {0: 4, 1: 4, 2: 0}, f"3 records and an abort marker per partition written to: {ends}"
        assert latest(broker, topic, RC) == ends, "the fenced transaction is still open"
        got = read_to_eof(broker, topic, RC, ends, "the high watermark (the fenced transaction aborted)")
        check_exact(got, [], "read_committed after the fencing", broker)
        assert len(read_to_eof(broker, topic, RU, ends, "the high watermark")) == len(zombie)
        assert group_offsets(broker, group, topic, [0], require_stable=True)[0][:2] == (-1001, None), \
            "the fenced transaction's offsets were committed"

        second.begin()
        fresh = second.send(topic, txn_recs("fresh", {0: 1, 2: 2}))
        second.send_offsets([TopicPartition(topic, 0, 1)], meta)
        second.commit()
        ends = latest(broker, topic, RU)
        check_exact(read_to_eof(broker, topic, RC, ends, "the high watermark"), fresh,
                    "read_committed after the new producer's commit", broker)
        assert group_offsets(broker, group, topic, [0], require_stable=True)[0][:2] == (1, None)
    finally:
        holder.close()


def test_open_transaction_is_aborted_after_its_transaction_timeout(broker):
    topic = unique("tx-timeout")
    cf_create_topic(broker, topic)
    p = TxProducer(broker, unique("txid"), **{"transaction.timeout.ms": 2000})
    p.begin()
    a = p.send(topic, txn_recs("a", {0: 2, 2: 1}))
    p.commit()
    opened = time.monotonic()
    p.begin()
    p.send(topic, txn_recs("b-silent", {0: 3, 1: 2}))
    lso = {0: 3, 1: 0, 2: 2}
    end = {0: 7, 1: 3, 2: 2}  # + an abort marker once the transaction times out
    # Watch read_committed latest: the LSO until the abort marker, then the
    # end. The transaction opened after `opened`, so an answer showing the
    # abort cannot come back before opened + 2 s.
    admin, seen = cf_admin(broker), []
    while True:
        now = latest(broker, topic, RC, admin=admin)
        seen.append((round(time.monotonic() - opened, 2), now))
        if now == end:
            break
        if now != lso or seen[-1][0] > 15:
            _fail(f"read_committed latest offsets (s since the transaction began, offsets): {seen}; expected the "
                  f"LSO {lso} until an abort after 2 s, then {end}", broker)
        time.sleep(0.1)
    assert seen[-1][0] >= 2.0, f"the transaction was aborted before its 2000 ms timeout: {seen}"
    rc = Reader(broker, topic, RC)
    try:
        rc.until_eof_at(end, "the high watermark after the timeout's abort marker", timeout=15)
        check_exact(rc.got, a, "read_committed after the timed-out transaction", broker)
        assert latest(broker, topic, RC) == end == latest(broker, topic, RU)
    finally:
        rc.close()
    # the producer wakes up: the abort bumped its epoch, so its writes are refused
    p.p.produce(topic, value=b"zombie", partition=0)
    try:
        p.p.flush(TIMEOUT)
    except KafkaException:
        pass  # librdkafka raises the (fatal) fencing error here or at the commit
    with pytest.raises(KafkaException):
        p.p.commit_transaction(TIMEOUT)  # the broker aborted it: it cannot commit any more
    assert latest(broker, topic, RU) == end, "a write of the timed-out producer was accepted"
    check_exact(read_to_eof(broker, topic, RC, end, "the high watermark"), a,
                "read_committed after the producer tried to go on with the timed-out transaction", broker)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_open_transaction_is_aborted_by_a_broker_restart_and_its_transactional_id_can_start_again(broker, how):
    """keyflow aborts a transaction open at the restart (Kafka would keep it
    open until its timeout or the next InitProducerId)."""
    topic, group = unique("tx-restart"), unique("tx-g")
    cf_create_topic(broker, topic)
    txid = unique("txid")
    holder, meta = plain_group_metadata(broker, group)
    p = TxProducer(broker, txid)
    p.begin()
    a = p.send(topic, txn_recs("a", {0: 2, 1: 2, 2: 2}))
    p.send_offsets([TopicPartition(topic, 0, 1)], meta)
    p.commit()
    p.begin()
    p.send(topic, txn_recs("b-open", {0: 2, 1: 1}))
    p.send_offsets([TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 2)], meta)
    assert latest(broker, topic, RC) == {0: 3, 1: 3, 2: 3}

    _kill(broker, how)
    holder.close()

    cf_wait_topic(broker, topic)
    ends = latest(broker, topic, RU)
    assert ends == {0: 6, 1: 5, 2: 3}, f"after the restart: 2/1 open records and an abort marker, got {ends}"
    assert latest(broker, topic, RC) == ends, "the transaction open at the restart was not ended"
    check_exact(read_to_eof(broker, topic, RC, ends, "the high watermark"), a,
                "read_committed after the restart", broker)
    assert {k: v[:2] for k, v in group_offsets(broker, group, topic, [0, 1], require_stable=True).items()} == \
        {0: (1, None), 1: (-1001, None)}, "offsets of the transaction open at the restart"

    again = TxProducer(broker, txid)
    again.begin()
    c = again.send(topic, txn_recs("c", {0: 1, 2: 1}))
    again.commit()
    ends = latest(broker, topic, RU)
    check_exact(read_to_eof(broker, topic, RC, ends, "the high watermark"), a + c,
                "read_committed after a new producer committed", broker)


def test_committed_and_aborted_transactions_and_their_offsets_survive_kill9(broker):
    topic, group = unique("tx-durable"), unique("tx-g")
    cf_create_topic(broker, topic)
    holder, meta = plain_group_metadata(broker, group)
    try:
        p = TxProducer(broker, unique("txid"))
        p.begin()
        a = p.send(topic, txn_recs("a", {0: 3, 1: 2, 2: 1}))
        p.send_offsets([TopicPartition(topic, 0, 3)], meta)
        p.commit()
        p.begin()
        b = p.send(topic, txn_recs("b-aborted", {0: 2, 1: 2}))
        p.send_offsets([TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 7)], meta)
        p.abort()
        p.begin()
        c = p.send(topic, txn_recs("c", {1: 2, 2: 2}))
        p.commit()
        ends = latest(broker, topic, RU)

        broker.kill9()
        broker.start(broker.port)

        cf_wait_topic(broker, topic)
        assert latest(broker, topic, RU) == ends, "offsets changed across kill -9"
        assert latest(broker, topic, RC) == ends, "a finished transaction counts as open after kill -9"
        check_exact(read_to_eof(broker, topic, RC, ends, "the high watermark"), a + c,
                    "read_committed after kill -9", broker)
        check_exact(read_to_eof(broker, topic, RU, ends, "the high watermark"), a + b + c,
                    "read_uncommitted after kill -9", broker)
        assert {k: v[:2] for k, v in group_offsets(broker, group, topic, [0, 1], require_stable=True).items()} == \
            {0: (3, None), 1: (-1001, None)}, "transactional offsets after kill -9"

        # the producer was idle at the crash: it goes on with its epoch
        p.begin()
        d = p.send(topic, txn_recs("d", {0: 1}))
        p.commit()
        ends = latest(broker, topic, RU)
        check_exact(read_to_eof(broker, topic, RC, ends, "the high watermark"), a + c + d,
                    "read_committed after a commit following the restart", broker)
    finally:
        holder.close()


def test_consume_transform_produce_with_a_failover_outputs_each_input_exactly_once(broker):
    """The exactly-once loop of KIP-98/447: read_committed group member +
    transactional producer, outputs and input offsets committed together.
    Instance 1 commits one batch, then dies with its second batch's outputs
    and offsets in an open transaction. Instance 2's member joins first (its
    OffsetFetch with require_stable must wait while the dead transaction's
    offsets are pending), then its producer takes over the transactional.id
    (aborting the dead transaction) and processes the rest. The output, read
    committed, holds every input exactly once, in input order per partition."""
    src, dst, group, txid = unique("eos-in"), unique("eos-out"), unique("eos-g"), unique("eos-txid")
    cf_create_topic(broker, src)
    cf_create_topic(broker, dst)
    inputs = cf_produce(broker, src, [Rec(key=f"k{i}".encode(), value=f"in-{i}".encode(), headers=[], partition=i % 3)
                                      for i in range(30)])

    def member():
        c = Consumer(cf_conf(broker, **{"group.id": group, "isolation.level": RC, "enable.auto.commit": False,
                                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                                         "heartbeat.interval.ms": 500}))
        c.subscribe([src])
        return c

    def batch(c, p: TxProducer, n: int, commit: bool) -> list:
        msgs, deadline = [], time.monotonic() + TIMEOUT
        while len(msgs) < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=n - len(msgs), timeout=0.2):
                if m.error():
                    _fail(f"consumer error: {m.error()}", broker)
                msgs.append(m)
        if not msgs:
            _fail(f"the member consumed nothing within {TIMEOUT:.0f} s", broker)
        p.begin()
        p.send(dst, [Rec(key=m.key(), value=b"out-" + m.value(), headers=[], partition=m.partition()) for m in msgs])
        nxt: Dict[int, int] = {}
        for m in msgs:
            nxt[m.partition()] = max(nxt.get(m.partition(), 0), m.offset() + 1)
        p.send_offsets([TopicPartition(src, part, o) for part, o in sorted(nxt.items())], c.consumer_group_metadata())
        if commit:
            p.commit()
        return msgs

    c1 = member()
    p1 = TxProducer(broker, txid)
    done = batch(c1, p1, 10, commit=True)
    lost = batch(c1, p1, 8, commit=False)  # instance 1 dies here: outputs and offsets pending
    c1.close()

    c2 = member()
    try:
        c2.consume(num_messages=1, timeout=1.5)  # joins; its offsets are unstable until the takeover
        p2 = TxProducer(broker, txid)  # fences p1, aborts its open transaction
        while len(done) < len(inputs):
            done += batch(c2, p2, len(inputs) - len(done), commit=True)
        assert not c2.consume(num_messages=10, timeout=1.0), "the member read past the input"
    finally:
        c2.close()

    expect = {part: [b"out-" + r.value for r in inputs if r.out_partition == part] for part in range(PARTITIONS)}
    ends = latest(broker, dst, RU)
    got = read_to_eof(broker, dst, RC, ends, "the output's high watermark")
    have: Dict[int, list] = {}
    for g in got:
        have.setdefault(g.partition, []).append(g.value)
    assert have == expect, (
        f"output read_committed is not each input exactly once in order (the dead instance's {len(lost)} outputs "
        f"must be aborted):\n  read     {have}\n  expected {expect}")
    assert len(read_to_eof(broker, dst, RU, ends, "the output's high watermark")) == len(inputs) + len(lost), \
        "read_uncommitted must also show the dead instance's aborted outputs"
    offsets = {k: v[:2] for k, v in group_offsets(broker, group, src, require_stable=True).items()}
    assert offsets == {part: (10, None) for part in range(PARTITIONS)}, f"the group's input offsets: {offsets}"


def test_init_transactions_refuses_a_timeout_above_the_brokers_maximum(broker):
    ok = TxProducer(broker, unique("txid"), **{"transaction.timeout.ms": 900_000})
    assert ok.p is not None
    too_long = TxProducer(broker, unique("txid"), init=False, **{"transaction.timeout.ms": 900_001})
    with pytest.raises(KafkaException) as ei:
        too_long.p.init_transactions(TIMEOUT)
    assert ei.value.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT, ei.value


# ==========================================================================
# kafka-python (its own protocol implementation)
# ==========================================================================


def kp_read(broker, topic: str, isolation: str, ends: Dict[int, int], partitions: int = PARTITIONS,
            linger: float = 0.3) -> List[Got]:
    """kafka-python KafkaConsumer with ``isolation_level``, from the beginning,
    until its position reaches ``ends`` on every partition, then ``linger`` s
    more (nothing more may come)."""
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                      isolation_level=isolation, auto_offset_reset="earliest", client_id=unique("kp-tx-reader"))
    try:
        tps = [KTP(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: List[Got] = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for _tp, rs in c.poll(timeout_ms=200).items():
                out.extend(Got(partition=r.partition, offset=r.offset, key=r.key, value=r.value,
                               headers=[(k, v) for k, v in (r.headers or [])], timestamp=r.timestamp) for r in rs)
            if all(c.position(KTP(topic, p)) >= ends.get(p, 0) for p in range(partitions)):
                stop = time.monotonic() + linger
                while time.monotonic() < stop:
                    for _tp, rs in c.poll(timeout_ms=100).items():
                        out.extend(Got(partition=r.partition, offset=r.offset, key=r.key, value=r.value,
                                       headers=list(r.headers or []), timestamp=r.timestamp) for r in rs)
                return out
        _fail(f"kafka-python {isolation} consumer of {topic} did not reach {ends}: positions "
              f"{ {p: c.position(KTP(topic, p)) for p in range(partitions)} }, read {_show(out)}", broker)
    finally:
        c.close()


class KpTx:
    """A kafka-python transactional producer."""

    def __init__(self, broker, txid: str):
        self.broker, self.txid = broker, txid
        self.p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=txid, linger_ms=5,
                               client_id=unique("kp-tx"), max_block_ms=int(TIMEOUT * 1000))
        self.ok("init_transactions", self.p.init_transactions)

    def ok(self, what, fn):
        try:
            return fn()
        except KErrors.KafkaError as e:
            _fail(f"kafka-python {self.txid}: {what} failed: {e!r}", self.broker)

    def send(self, topic: str, recs: List[Rec]) -> List[Rec]:
        futs = [self.p.send(topic, key=r.key, value=r.value, headers=r.headers, partition=r.partition) for r in recs]
        self.p.flush(timeout=TIMEOUT)
        for r, f in zip(recs, futs):
            try:
                md = f.get(timeout=TIMEOUT)
            except KErrors.KafkaError as e:
                _fail(f"kafka-python {self.txid}: transactional send failed: {e!r}", self.broker)
            r.out_partition, r.out_offset = md.partition, md.offset
        return recs

    def close(self):
        try:
            self.p.close(timeout=5)
        except Exception:  # noqa: BLE001  (a fenced producer may complain on close)
            pass


def test_kafka_python_transactional_producer_commits_are_read_and_aborts_skipped_by_read_committed(broker):
    topic = unique("kp-tx")
    cf_create_topic(broker, topic)
    p = KpTx(broker, unique("kp-txid"))
    try:
        p.ok("begin_transaction", p.p.begin_transaction)
        a = p.send(topic, txn_recs("a", {0: 3, 1: 2, 2: 1}))
        p.ok("commit_transaction", p.p.commit_transaction)
        p.ok("begin_transaction", p.p.begin_transaction)
        b = p.send(topic, txn_recs("b-aborted", {0: 2, 1: 2, 2: 2}))
        p.ok("abort_transaction", p.p.abort_transaction)
        p.ok("begin_transaction", p.p.begin_transaction)
        c = p.send(topic, txn_recs("c", {0: 1, 1: 1, 2: 3}))
        p.ok("commit_transaction", p.p.commit_transaction)
    finally:
        p.close()
    ends = latest(broker, topic, RU)
    assert ends == {0: 9, 1: 8, 2: 9}, f"records plus one marker per transaction and partition: {ends}"
    assert latest(broker, topic, RC) == ends
    check_exact(kp_read(broker, topic, RC, ends), a + c, "kafka-python read_committed", broker)
    check_exact(kp_read(broker, topic, RU, ends), a + b + c, "kafka-python read_uncommitted", broker)
    check_exact(read_to_eof(broker, topic, RC, ends, "the high watermark"), a + c,
                "confluent-kafka read_committed of kafka-python's transactions", broker)


def test_kafka_python_open_transaction_is_invisible_to_its_read_committed_consumer_until_commit(broker):
    topic = unique("kp-tx-open")
    cf_create_topic(broker, topic)
    p = KpTx(broker, unique("kp-txid"))
    try:
        p.ok("begin_transaction", p.p.begin_transaction)
        b = p.send(topic, txn_recs("open", {0: 2, 1: 2}))
        c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, isolation_level=RC,
                          client_id=unique("kp-tx-lso"))
        try:
            tps = [KTP(topic, part) for part in range(PARTITIONS)]
            assert c.end_offsets(tps) == {tp: 0 for tp in tps}, \
                "kafka-python read_committed end_offsets must stop at the open transaction's first offset"
        finally:
            c.close()
        got = kp_read(broker, topic, RC, {}, linger=1.5)
        assert got == [], f"kafka-python read_committed read the open transaction: {_show(got)}"
        p.ok("commit_transaction", p.p.commit_transaction)
    finally:
        p.close()
    ends = latest(broker, topic, RU)
    assert ends == {0: 3, 1: 3, 2: 0}
    check_exact(kp_read(broker, topic, RC, ends), b, "kafka-python read_committed after the commit", broker)


def test_kafka_python_send_offsets_to_transaction_and_fencing_by_a_second_producer(broker):
    topic, group = unique("kp-tx-offs"), unique("kp-tx-g")
    cf_create_topic(broker, topic)
    txid = unique("kp-txid")
    p = KpTx(broker, txid)
    zombie = None
    try:
        p.ok("begin_transaction", p.p.begin_transaction)
        p.send(topic, txn_recs("a", {0: 1}))
        # Empty metadata: confluent-kafka 2.16's list_consumer_group_offsets reads
        # a non-empty metadata string past its end (garbage bytes after "kp",
        # then UnicodeDecodeError), whoever stored it; metadata is checked
        # with confluent-kafka alone in the send_offsets test above.
        p.ok("send_offsets_to_transaction", lambda: p.p.send_offsets_to_transaction(
            {KTP(topic, 0): OffsetAndMetadata(6, "", -1), KTP(topic, 1): OffsetAndMetadata(2, "", -1)}, group))
        pending = group_offsets(broker, group, topic, [0, 1])
        assert {k: v[:2] for k, v in pending.items()} == {0: (-1001, None), 1: (-1001, None)}, \
            f"pending offsets visible before the commit: {pending}"
        p.ok("commit_transaction", p.p.commit_transaction)
        assert {k: v[:2] for k, v in group_offsets(broker, group, topic, [0, 1]).items()} == \
            {0: (6, None), 1: (2, None)}

        p.ok("begin_transaction", p.p.begin_transaction)
        zombie = p.send(topic, txn_recs("zombie", {0: 2, 2: 1}))
        p.ok("send_offsets_to_transaction", lambda: p.p.send_offsets_to_transaction(
            {KTP(topic, 0): OffsetAndMetadata(9, "", -1)}, group))
        second = KpTx(broker, txid)
        try:
            with pytest.raises((KErrors.ProducerFencedError, KErrors.InvalidProducerEpochError)):
                p.p.commit_transaction()
            ends = latest(broker, topic, RU)
            assert ends == {0: 5, 1: 0, 2: 2}, f"the fenced transaction's records plus abort markers: {ends}"
            got = kp_read(broker, topic, RC, ends)
            assert [g.value for g in got] == [b"a|p0|0"], f"read_committed after the fencing: {_show(got)}"
            assert {k: v[:2] for k, v in group_offsets(broker, group, topic, [0, 1]).items()} == \
                {0: (6, None), 1: (2, None)}, "the fenced transaction's offsets were committed"
            second.ok("begin_transaction", second.p.begin_transaction)
            fresh = second.send(topic, txn_recs("fresh", {1: 1}))
            second.ok("commit_transaction", second.p.commit_transaction)
        finally:
            second.close()
    finally:
        p.close()
    ends = latest(broker, topic, RU)
    got = kp_read(broker, topic, RC, ends)
    assert sorted(g.value for g in got) == sorted([b"a|p0|0"] + [r.value for r in fresh]), _show(got)
