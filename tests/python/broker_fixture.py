"""The ``broker`` fixture: keyflow's own single-node Kafka-API broker, fresh per test.

The binary is ``$KEYFLOW_BIN_DIR/broker`` (looked up like every keyflow binary,
see ``conftest.binary``). Its contract:

* ``broker --data-dir DIR --listen 127.0.0.1:0 --metrics 127.0.0.1:0``;
* when ready it prints one JSON line on stdout,
  ``{"event":"listening","kafka":"127.0.0.1:PORT","metrics":"127.0.0.1:PORT"}``;
  its logs go to stderr;
* SIGTERM stops it; SIGKILL loses nothing acknowledged; a restart on the same
  data dir keeps topics, records and committed group offsets.

``Broker.restart()`` (SIGTERM) and ``Broker.kill9()`` + ``Broker.start()``
reuse the data dir and, when possible, the same Kafka port, so a bootstrap
string taken before a restart stays valid. Teardown ends the process group
(SIGTERM, then SIGKILL), like the fixtures of conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Optional

import pytest

from conftest import ManagedProcess, _port_problem, binary

BROKER_START_TIMEOUT = float(os.environ.get("KEYFLOW_BROKER_START_TIMEOUT", "30"))


class Broker:
    """One ``broker`` process over a data dir that outlives restarts."""

    def __init__(self, data_dir: Path, log_dir: Path):
        self.exe = binary("broker")
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.proc: Optional[ManagedProcess] = None
        self.kafka: Optional[str] = None  # "127.0.0.1:PORT"
        self.metrics: Optional[str] = None
        self.starts = 0
        self.start()

    # ------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the Kafka listener (bootstrap.servers)."""
        assert self.kafka, "broker not started"
        return self.kafka

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def describe(self) -> str:
        return self.proc.describe() if self.proc else "<broker never started>"

    # ------------------------------------------------------------------

    def start(self, port: Optional[int] = None) -> None:
        """Starts the broker on the data dir; ``port`` None → 0 (the OS picks).

        A wanted port that cannot be bound (port problem in stderr) is retried
        a few times, then given up for port 0."""
        assert not self.alive(), "broker already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = [port] * 5 + [None] if port else [None]
        last = ""
        for want in attempts:
            self.proc = ManagedProcess(
                [
                    self.exe,
                    "--data-dir", self.data_dir,
                    "--listen", f"127.0.0.1:{want or 0}",
                    "--metrics", "127.0.0.1:0",
                ],
                self.log_dir,
                "broker",
            )
            err = self._wait_ready()
            if err is None:
                self.starts += 1
                return
            last = err
            self.proc.stop(grace=5)
            if not _port_problem(err):
                break
            time.sleep(0.5)
        pytest.fail(f"broker did not become ready:\n{last}", pytrace=False)

    def _wait_ready(self) -> Optional[str]:
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.proc.stdout().splitlines():
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and ev.get("event") == "listening":
                    if not isinstance(ev.get("kafka"), str) or ":" not in ev["kafka"]:
                        return f"listening line without a usable `kafka` address: {line}\n{self.proc.describe()}"
                    self.kafka = ev["kafka"]
                    self.metrics = ev.get("metrics")
                    return None
            if not self.proc.alive():
                # one last look: the line may have been written just before exiting
                if '"listening"' in self.proc.stdout():
                    continue
                return f"it exited before printing its `listening` line\n{self.proc.describe()}"
            time.sleep(0.05)
        return (
            f"no {{\"event\":\"listening\",...}} line on stdout within {BROKER_START_TIMEOUT:.0f} s\n"
            f"{self.proc.describe()}"
        )

    def stop(self, grace: float = 10.0) -> Optional[int]:
        """SIGTERM, then SIGKILL of the process group after ``grace`` s."""
        return self.proc.stop(grace) if self.proc else None

    def kill9(self) -> None:
        """SIGKILL to the whole process group, as a crash (or the OOM killer) would."""
        if self.proc is None:
            return
        self.proc._signal_group(signal.SIGKILL)
        self.proc.wait(10)
        self.proc._close()

    def restart(self, graceful: bool = True) -> None:
        """Stops it (SIGTERM; SIGKILL when ``graceful`` is False) and starts it
        again on the same data dir, on the same Kafka port when it can be bound."""
        port = self.port if self.kafka else None
        if graceful:
            rc = self.stop()
            assert rc == 0 or rc == -signal.SIGTERM, f"broker exited with {rc} on SIGTERM\n{self.describe()}"
        else:
            self.kill9()
        self.start(port)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker-data", tmp_path / "logs")
    try:
        yield b
    finally:
        b.stop()
