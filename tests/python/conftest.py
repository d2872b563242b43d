"""Fixtures that run the keyflow binaries as subprocesses.

The binaries are looked up in ``$KEYFLOW_BIN_DIR`` (default
``/root/.cache/keyflow/target/debug``); this suite never builds them.

* ``registry``: a fresh ``schema-registry`` on a free port with its own data
  dir, per test. It can be restarted (``restart()``), SIGKILLed (``kill9()``)
  and stopped; it is always terminated at teardown.
* ``devstack``: one ``devstack up --partitions 3`` per test module (broker +
  registry + topics + schemas), waited for until it prints ``devstack ready``.

Every process is started in its own session so that teardown can end it and
any child it started (the embedded broker) by that process group's id: SIGTERM
first, SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN_DIR = "/root/.cache/keyflow/target/debug"

REGISTRY_START_TIMEOUT = float(os.environ.get("KEYFLOW_REGISTRY_START_TIMEOUT", "30"))
DEVSTACK_START_TIMEOUT = float(os.environ.get("KEYFLOW_DEVSTACK_START_TIMEOUT", "180"))


def pytest_configure(config):
    config.addinivalue_line("markers", "interop: needs `devstack up` (Kafka-API broker + registry)")


# --------------------------------------------------------------------------
# binaries and ports


def bin_dir() -> Path:
    return Path(os.environ.get("KEYFLOW_BIN_DIR") or DEFAULT_BIN_DIR)


def binary(name: str) -> Path:
    """Path of a keyflow binary; fails the test (not the session) when missing."""
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        env = os.environ.get("KEYFLOW_BIN_DIR")
        how = f"KEYFLOW_BIN_DIR={env}" if env else f"KEYFLOW_BIN_DIR unset, default {DEFAULT_BIN_DIR}"
        pytest.fail(
            f"keyflow binary `{name}` not found (looked at {path}; {how}). Build it with "
            f"`cargo build -p keyflow-devstack --bins` (target dir {DEFAULT_BIN_DIR.rsplit('/', 1)[0]}) "
            f"or point KEYFLOW_BIN_DIR at the directory that holds it.",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data[-limit:].decode("utf-8", "replace")
    return ("…" + text) if len(data) > limit else text


# --------------------------------------------------------------------------
# a managed subprocess


class ManagedProcess:
    """A subprocess whose stdout/stderr go to files, in its own process group."""

    def __init__(self, argv: List[str], log_dir: Path, name: str, env: Optional[dict] = None):
        self.argv = [str(a) for a in argv]
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        n = 0
        while (log_dir / f"{name}.{n}.stderr").exists():
            n += 1
        self.stdout_path = log_dir / f"{name}.{n}.stdout"
        self.stderr_path = log_dir / f"{name}.{n}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=env,
            start_new_session=True,
        )
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return _tail(self.stdout_path, 1 << 20)

    def describe(self) -> str:
        rc = self.proc.poll()
        state = "running" if rc is None else f"exited with {rc}"
        return (
            f"command: {' '.join(self.argv)}\n{self.name} {state}\n"
            f"--- stderr ({self.stderr_path}) ---\n{_tail(self.stderr_path)}\n"
            f"--- stdout ({self.stdout_path}) ---\n{_tail(self.stdout_path, 2000)}"
        )

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def signal(self, sig: int) -> None:
        """Signals only the main process."""
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 10.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``grace`` s; also reaps leftover children of its group."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self._signal_group(signal.SIGKILL)
                self.wait(10)
        # children (e.g. the broker) that outlived their parent
        if self._group_alive():
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._group_alive():
                self._signal_group(signal.SIGKILL)
        self._close()
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL to the main process only, as a crash would."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.wait(10)
        self._close()

    def _close(self) -> None:
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass


def _port_problem(text: str) -> bool:
    t = text.lower()
    return "in use" in t or "cannot listen" in t or "addrinuse" in t or "address already" in t


# --------------------------------------------------------------------------
# schema-registry


class Registry:
    """One ``schema-registry`` process over a data dir that outlives restarts."""

    def __init__(self, data_dir: Path, log_dir: Path):
        self.exe = binary("schema-registry")
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.proc: Optional[ManagedProcess] = None
        self.port: Optional[int] = None
        self._clients = []
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or not self.proc.alive(), "registry already running"
        last = ""
        for _ in range(5):
            self.port = free_port()
            self.proc = ManagedProcess(
                [self.exe, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir],
                self.log_dir,
                "schema-registry",
            )
            err = self._wait_ready()
            if err is None:
                return
            last = err
            self.proc.stop()
            if not _port_problem(err):
                break
        pytest.fail(f"schema-registry did not become ready:\n{last}", pytrace=False)

    def _wait_ready(self) -> Optional[str]:
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if not self.proc.alive():
                return f"it exited before answering on {self.url}\n{self.proc.describe()}"
            try:
                r = requests.get(self.url + "/subjects", timeout=2)
                if r.status_code == 200:
                    return None
                last = f"GET /subjects → {r.status_code} {r.text[:500]}"
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.05)
        return (
            f"no 200 from GET {self.url}/subjects within {REGISTRY_START_TIMEOUT:.0f} s "
            f"(last: {last})\n{self.proc.describe()}"
        )

    def stop(self, grace: float = 10.0) -> Optional[int]:
        rc = self.proc.stop(grace) if self.proc else None
        self._close_clients()
        return rc

    def kill9(self) -> None:
        self.proc.kill9()
        self._close_clients()

    def restart(self) -> None:
        """Graceful stop (SIGTERM), then start again on the same data dir (new port)."""
        self.stop()
        self.start()

    def client(self, **conf):
        """A new Confluent SchemaRegistryClient (empty caches) for the current URL."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        c = SchemaRegistryClient({"url": self.url, **conf})
        self._clients.append(c)
        return c

    def http(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 30)
        return requests.request(method, self.url + path, **kw)

    def _close_clients(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()

    def data_files(self) -> List[Path]:
        return sorted(p for p in self.data_dir.rglob("*") if p.is_file())


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry-data", tmp_path / "logs")
    try:
        yield reg
    finally:
        reg.stop()


# --------------------------------------------------------------------------
# devstack


@dataclass
class Devstack:
    exe: Path
    brokers: str
    registry: str
    proc: ManagedProcess
    data_dir: Path

    def run(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        """Runs ``devstack ARGS`` (e.g. smoke, peek, topics) and returns it."""
        argv = [str(self.exe), *args]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            pytest.fail(
                f"`{' '.join(argv)}` did not finish within {timeout} s\n"
                f"--- stderr ---\n{(e.stderr or b'')[-4000:]!r}\n--- stdout ---\n{(e.stdout or b'')[-2000:]!r}",
                pytrace=False,
            )
        if check and cp.returncode != 0:
            pytest.fail(
                f"`{' '.join(argv)}` exited with {cp.returncode}\n--- stderr ---\n{cp.stderr[-4000:]}\n"
                f"--- stdout ---\n{cp.stdout[-4000:]}\n--- devstack up ---\n{self.proc.describe()}",
                pytrace=False,
            )
        return cp


@pytest.fixture(scope="module")
def devstack(tmp_path_factory):
    exe = binary("devstack")
    base = tmp_path_factory.mktemp("devstack")
    last = ""
    for attempt in range(3):
        broker_port, registry_port = free_ports(2)
        data_dir = base / f"data{attempt}"
        argv = [
            exe, "up",
            "--data-dir", data_dir,
            "--broker-port", broker_port,
            "--registry-port", registry_port,
            "--partitions", "3",
        ]
        proc = ManagedProcess(argv, base / "logs", "devstack-up")
        deadline = time.monotonic() + DEVSTACK_START_TIMEOUT
        ready = False
        while time.monotonic() < deadline:
            if "devstack ready" in proc.stdout():
                ready = True
                break
            if not proc.alive():
                break
            time.sleep(0.2)
        if ready:
            stack = Devstack(
                exe=exe,
                brokers=f"localhost:{broker_port}",
                registry=f"http://127.0.0.1:{registry_port}",
                proc=proc,
                data_dir=data_dir,
            )
            try:
                yield stack
            finally:
                proc.stop(grace=30)
            return
        why = "exited" if not proc.alive() else f"printed no `devstack ready` within {DEVSTACK_START_TIMEOUT:.0f} s"
        last = f"devstack up {why}\n{proc.describe()}"
        proc.stop(grace=30)
        if not _port_problem(last):
            break
    pytest.fail(last, pytrace=False)
