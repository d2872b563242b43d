"""keyflow's `broker` through kafkajs 2.2.4 (a pure-JavaScript Kafka client
with its own protocol code): runs scripts of tests/js against a fresh broker,
each printing a JSON summary.

* tests/js/conformance.mjs: CreateTopics, idempotent produce with keys and
  headers, per-partition order, a 2-member group with no partition owned
  twice, commit/resume, describeGroups/listGroups, describeConfigs,
  fetchTopicOffsets(ByTimestamp) and deleteTopics.
* tests/js/transactions.mjs: a transactional producer commits a transaction
  with sendOffsets (the group offsets appear with the commit only), aborts one
  (records and offsets), commits another; a second producer with the same
  transactionalId fences the first (its send and commit reject); a
  ``readUncommitted: false`` consumer reads exactly the committed records, a
  ``readUncommitted: true`` one the aborted and fenced ones too.

Needs Node.js (>= 18) and npm; kafkajs is installed into tests/js/node_modules
from tests/js/package-lock.json (`npm ci`) the first time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from broker_fixture import broker  # noqa: F401  (the fixture)

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "conformance.mjs"
TXN_SCRIPT = JS_DIR / "transactions.mjs"
NPM_TIMEOUT = 300.0
RUN_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def node_with_kafkajs() -> str:
    node = shutil.which("node")
    if not node:
        pytest.fail("Node.js not installed (apt-get install nodejs npm; tests/run.sh installs it)", pytrace=False)
    if not (JS_DIR / "node_modules" / "kafkajs" / "package.json").is_file():
        npm = shutil.which("npm")
        if not npm:
            pytest.fail("tests/js/node_modules is missing and npm is not installed (apt-get install npm)", pytrace=False)
        how = ["ci"] if (JS_DIR / "package-lock.json").is_file() else ["install"]
        argv = [npm, *how, "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            cp = subprocess.run(argv, cwd=JS_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT,
                                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm {' '.join(how)}` in {JS_DIR} did not finish within {NPM_TIMEOUT:.0f} s", pytrace=False)
        if cp.returncode != 0:
            pytest.fail(f"`{' '.join(argv)}` in {JS_DIR} exited with {cp.returncode}\n{cp.stderr[-3000:]}",
                        pytrace=False)
    installed = json.loads((JS_DIR / "node_modules" / "kafkajs" / "package.json").read_text())["version"]
    assert installed == "2.2.4", f"tests/js has kafkajs {installed}, package.json pins 2.2.4 (rm -r tests/js/node_modules)"
    return node


def run_script(script: Path, broker, node: str, what: str) -> dict:
    """Runs one kafkajs script against the broker; its JSON summary, or the
    test fails with the failed step, kafkajs' logs and the broker's."""
    env = {**os.environ, "KAFKA_BROKERS": broker.bootstrap, "KAFKAJS_NO_PARTITIONER_WARNING": "1"}
    argv = [node, str(script)]
    try:
        cp = subprocess.run(argv, cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"kafkajs {what} did not finish within {RUN_TIMEOUT:.0f} s\n"
                    f"--- stderr ---\n{(e.stderr or b'')[-4000:]!r}\n--- broker ---\n{broker.describe()}",
                    pytrace=False)
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
    summary = None
    if lines:
        try:
            summary = json.loads(lines[-1])
        except ValueError:
            pass
    if cp.returncode != 0 or not summary or not summary.get("ok"):
        err = (summary or {}).get("error")
        pytest.fail(
            f"kafkajs {what} failed (exit {cp.returncode})"
            + (f" in step {err['step']!r}: {err['message']}" if err else "")
            + f"\n--- summary ---\n{json.dumps(summary, indent=1) if summary else cp.stdout[-2000:]}"
            + f"\n--- node stderr (kafkajs logs) ---\n{cp.stderr[-5000:]}"
            + f"\n--- broker ---\n{broker.describe()}",
            pytrace=False,
        )
    return summary


def test_kafkajs_scenario_topics_idempotent_produce_group_commit_configs_and_offsets(broker, node_with_kafkajs):
    summary = run_script(SCRIPT, broker, node_with_kafkajs, "conformance")
    names = [s["name"] for s in summary["steps"]]
    assert len(names) == 8 and all(s["ok"] for s in summary["steps"]), names
    assert summary["counts"]["groupConsumed"]["a"] > 0 and summary["counts"]["groupConsumed"]["b"] > 0


def test_kafkajs_transactions_commit_abort_send_offsets_fencing_and_read_committed(broker, node_with_kafkajs):
    summary = run_script(TXN_SCRIPT, broker, node_with_kafkajs, "transactions")
    steps = {s["name"]: s for s in summary["steps"]}
    assert len(steps) == 7 and all(s["ok"] for s in steps.values()), list(steps)
    fenced = steps["a second producer with the same transactionalId fences the first"]["detail"]
    assert fenced["fencedWith"] in ("INVALID_PRODUCER_EPOCH", "PRODUCER_FENCED"), fenced
    # 6 + 4 + 2 committed records; + 6 aborted + 2 fenced
    assert summary["counts"] == {"readCommitted": 12, "readUncommitted": 20}, summary["counts"]
