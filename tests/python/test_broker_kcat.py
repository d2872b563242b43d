"""keyflow's `broker` through Debian's kcat (librdkafka's command-line
client): metadata (-L -J), produce with keys and headers (-P -K -H), consume
as JSON (-C -J -e), offsets by timestamp (-Q) and a consumer group (-G).

Topics are created with confluent-kafka's admin client beforehand (the broker
does not auto-create topics). tests/run.sh installs kcat (Debian package
`kcat`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from typing import List

import pytest

from broker_fixture import broker  # noqa: F401  (the fixture)
from brokerkit import (
    Rec,
    cf_create_topic,
    cf_end_offsets,
    cf_group_offsets,
    cf_produce,
    cf_read_all,
    sample_records,
    unique,
)

KCAT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def kcat_exe() -> str:
    exe = shutil.which("kcat")
    if not exe:
        pytest.fail("kcat not found: install the Debian package (apt-get install -y kcat); tests/run.sh does",
                    pytrace=False)
    return exe


def kcat(exe, broker, *args, input: str = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = [exe, "-b", broker.bootstrap, *args]
    try:
        cp = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=KCAT_TIMEOUT,
                            stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`{' '.join(argv)}` did not finish within {KCAT_TIMEOUT:.0f} s\n"
                    f"--- stderr ---\n{e.stderr!r}\n--- stdout ---\n{e.stdout!r}\n--- broker ---\n{broker.describe()}",
                    pytrace=False)
    if check and cp.returncode != 0:
        pytest.fail(f"`{' '.join(argv)}` exited with {cp.returncode}\n--- stderr ---\n{cp.stderr[-3000:]}\n"
                    f"--- stdout ---\n{cp.stdout[-3000:]}\n--- broker ---\n{broker.describe()}", pytrace=False)
    return cp


def json_lines(text: str) -> List[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pairs(flat):
    """kcat -J prints headers as a flat [name, value, name, value, …] list."""
    flat = flat or []
    return list(zip(flat[0::2], flat[1::2]))


def test_kcat_metadata_json_lists_the_topic_with_3_partitions_led_by_the_single_broker(broker, kcat_exe):
    topic = unique("kc-meta")
    cf_create_topic(broker, topic)
    md = json.loads(kcat(kcat_exe, broker, "-L", "-J").stdout)
    assert len(md["brokers"]) == 1, md["brokers"]
    node = md["brokers"][0]["id"]
    assert md["brokers"][0]["name"] == broker.bootstrap, f"advertised {md['brokers'][0]['name']}, bootstrap {broker.bootstrap}"
    assert md["controllerid"] == node
    (t,) = [t for t in md["topics"] if t["topic"] == topic]
    assert "error" not in t, t
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    for p in t["partitions"]:
        assert p["leader"] == node and p["replicas"] == [{"id": node}] and p["isrs"] == [{"id": node}], p
    # -t narrows the query to one topic
    one = json.loads(kcat(kcat_exe, broker, "-L", "-J", "-t", topic).stdout)
    assert [t["topic"] for t in one["topics"]] == [topic]


def test_kcat_produces_keys_and_headers_and_reads_them_back_as_json_with_offsets(broker, kcat_exe):
    topic = unique("kc-roundtrip")
    cf_create_topic(broker, topic)
    lines = [f"key-{i % 5}:value-{i}" for i in range(40)]
    kcat(kcat_exe, broker, "-P", "-t", topic, "-K", ":", "-H", "trace=kcat", "-H", "dup=1", "-H", "dup=2",
         "-X", "enable.idempotence=true", "-X", "acks=all", input="\n".join(lines) + "\n")
    out = json_lines(kcat(kcat_exe, broker, "-C", "-t", topic, "-o", "beginning", "-e", "-J").stdout)
    assert len(out) == 40, f"kcat -C read {len(out)} of 40 records"
    assert sorted(m["payload"] for m in out) == sorted(f"value-{i}" for i in range(40))
    by_part = {}
    for m in out:
        assert m["topic"] == topic
        i = int(m["payload"].split("-")[1])
        assert m["key"] == f"key-{i % 5}", m
        assert pairs(m["headers"]) == [("trace", "kcat"), ("dup", "1"), ("dup", "2")], m["headers"]
        assert m["tstype"] == "create" and abs(m["ts"] - time.time() * 1000) < 120_000, m
        by_part.setdefault(m["partition"], []).append((m["offset"], i))
    for p, rows in by_part.items():
        rows.sort()
        assert [o for o, _ in rows] == list(range(len(rows))), f"partition {p}: offsets {rows}"
        assert [i for _, i in rows] == sorted(i for _, i in rows), f"partition {p}: lines out of order {rows}"
    where = {}
    for m in out:
        where.setdefault(m["key"], set()).add(m["partition"])
    assert all(len(v) == 1 for v in where.values()), f"a key on several partitions: {where}"
    # another client sees the same headers
    got = cf_read_all(broker, topic, 40)
    assert all(g.headers == [("trace", b"kcat"), ("dup", b"1"), ("dup", b"2")] for g in got)


def test_kcat_reads_null_keys_and_binary_safe_headers_written_by_confluent_kafka(broker, kcat_exe):
    topic = unique("kc-cross")
    cf_create_topic(broker, topic)
    recs = cf_produce(broker, topic, sample_records(30, "cf"))
    out = json_lines(kcat(kcat_exe, broker, "-C", "-t", topic, "-o", "beginning", "-e", "-J").stdout)
    assert len(out) == len(recs)
    at = {(m["partition"], m["offset"]): m for m in out}
    for r in recs:
        m = at[(r.out_partition, r.out_offset)]
        assert m["key"] == (r.key.decode() if r.key is not None else None), (m["key"], r.key)
        assert m["payload"] == r.value.decode()
        want = [(k, v.decode() if v is not None else None) for k, v in r.headers]
        assert pairs(m["headers"]) == want, (m["headers"], want)


def _query(exe, broker, topic, partition, ts) -> int:
    cp = kcat(exe, broker, "-Q", "-t", f"{topic}:{partition}:{ts}")
    m = re.search(rf"{re.escape(topic)} \[{partition}\]\s+offset (-?\d+)", cp.stdout)
    assert m, f"unexpected kcat -Q output: {cp.stdout!r} {cp.stderr!r}"
    return int(m.group(1))


def test_kcat_query_finds_the_first_offset_at_or_after_a_timestamp(broker, kcat_exe):
    topic = unique("kc-query")
    cf_create_topic(broker, topic)
    base = (int(time.time()) - 3600) * 1000
    recs = [Rec(key=b"k", value=f"v{i}".encode(), headers=[], partition=2, timestamp=base + i * 1000)
            for i in range(8)]
    cf_produce(broker, topic, recs)
    assert _query(kcat_exe, broker, topic, 2, base + 2500) == 3
    assert _query(kcat_exe, broker, topic, 2, base) == 0
    assert _query(kcat_exe, broker, topic, 2, base - 60_000) == 0
    # -1 / -2 are kcat's (and Kafka's) latest / earliest
    assert _query(kcat_exe, broker, topic, 2, -1) == 8
    assert _query(kcat_exe, broker, topic, 2, -2) == 0
    # after the newest record: Kafka answers -1 (no such offset)
    assert _query(kcat_exe, broker, topic, 2, base + 7001) == -1
    js = json.loads(kcat(kcat_exe, broker, "-Q", "-J", "-t", f"{topic}:2:{base + 4500}").stdout)
    assert js[topic]["2"]["offset"] == 5, js


def test_kcat_consumer_group_reads_everything_once_commits_and_resumes(broker, kcat_exe):
    topic, group = unique("kc-group"), unique("kc-g")
    cf_create_topic(broker, topic)
    first = cf_produce(broker, topic, sample_records(25, "one"))
    args = ["-G", group, topic, "-e", "-J", "-X", "auto.offset.reset=earliest",
            "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"]
    run1 = json_lines(kcat(kcat_exe, broker, *args).stdout)
    assert sorted((m["partition"], m["offset"]) for m in run1) == sorted(
        (r.out_partition, r.out_offset) for r in first), "kcat -G did not read each record once"
    ends = cf_end_offsets(broker, topic)
    committed = {k: v for k, v in cf_group_offsets(broker, group).items() if v > 0}  # empty partitions: no commit
    assert committed == {(topic, p): n for p, n in ends.items() if n > 0}, f"kcat -G committed {committed}, ends {ends}"
    run2 = json_lines(kcat(kcat_exe, broker, *args).stdout)
    assert run2 == [], f"second run re-read {len(run2)} committed records"
    second = cf_produce(broker, topic, sample_records(3, "two"))
    run3 = json_lines(kcat(kcat_exe, broker, *args).stdout)
    assert sorted((m["partition"], m["offset"]) for m in run3) == sorted(
        (r.out_partition, r.out_offset) for r in second), "third run did not resume at the committed offsets"
