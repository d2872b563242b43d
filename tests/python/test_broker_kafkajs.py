"""keyflow's `broker` through kafkajs 2.2.4 (a pure-JavaScript Kafka client
with its own protocol code): runs tests/js/conformance.mjs against a fresh
broker. The script covers CreateTopics, idempotent produce with keys and
headers, per-partition order, a 2-member group with no partition owned twice,
commit/resume, describeGroups/listGroups, describeConfigs,
fetchTopicOffsets(ByTimestamp) and deleteTopics, and prints a JSON summary.

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


def test_kafkajs_scenario_topics_idempotent_produce_group_commit_configs_and_offsets(broker, node_with_kafkajs):
    env = {**os.environ, "KAFKA_BROKERS": broker.bootstrap, "KAFKAJS_NO_PARTITIONER_WARNING": "1"}
    argv = [node_with_kafkajs, str(SCRIPT)]
    try:
        cp = subprocess.run(argv, cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"kafkajs conformance did not finish within {RUN_TIMEOUT:.0f} s\n"
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
            f"kafkajs conformance failed (exit {cp.returncode})"
            + (f" in step {err['step']!r}: {err['message']}" if err else "")
            + f"\n--- summary ---\n{json.dumps(summary, indent=1) if summary else cp.stdout[-2000:]}"
            + f"\n--- node stderr (kafkajs logs) ---\n{cp.stderr[-5000:]}"
            + f"\n--- broker ---\n{broker.describe()}",
            pytrace=False,
        )
    names = [s["name"] for s in summary["steps"]]
    assert len(names) == 8 and all(s["ok"] for s in summary["steps"]), names
    assert summary["counts"]["groupConsumed"]["a"] > 0 and summary["counts"]["groupConsumed"]["b"] > 0
