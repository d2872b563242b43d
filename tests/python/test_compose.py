"""The production-shaped stack (docker-compose.yml), checked without a Docker
engine: the compose tooling validates the file, and every keyflow service's
command, flags and environment are checked against what the real binaries
accept (their ``--help``), the README's documented variables, the Kafka
cluster's shape, and the Prometheus and Grafana files the services mount.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, binary

COMPOSE = REPO / "docker-compose.yml"
WORKERS = ["payment", "fulfillment", "loyalty", "publication"]
PRODUCERS = {"order-producer": "orders", "property-producer": "properties"}


def compose_cmd() -> list[str]:
    """`docker compose` (v2 plugin) when present, else `docker-compose`."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("no compose tooling: tests/run.sh installs Debian's docker-compose", pytrace=False)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The file as the compose tooling resolves it (anchors, merges, defaults, every profile)."""
    cmd = compose_cmd() + ["-f", str(COMPOSE), "--profile", "load", "--profile", "tools", "config"]
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert cp.returncode == 0, f"`{' '.join(cmd)}` rejected docker-compose.yml:\n{cp.stderr}"
    return yaml.safe_load(cp.stdout)


def test_compose_tooling_rejects_a_broken_file(tmp_path):
    """The validation can fail: a service with an unknown key is refused."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    replicas_typo: 2\n")
    cp = subprocess.run(compose_cmd() + ["-f", str(bad), "config", "-q"], capture_output=True, text=True)
    assert cp.returncode != 0


def help_text(*argv: str) -> str:
    cp = subprocess.run([str(binary(argv[0])), *argv[1:], "--help"], capture_output=True, text=True)
    assert cp.returncode == 0, f"{argv} --help failed: {cp.stderr}"
    return cp.stdout


def keyflow_services(resolved: dict) -> dict:
    return {n: s for n, s in resolved["services"].items() if s.get("image", "").startswith("keyflow:")}


def argv_of(service: dict) -> list[str]:
    return list(service.get("entrypoint") or []) + list(service.get("command") or [])


def test_every_keyflow_service_runs_a_real_subcommand_with_flags_and_env_the_binary_accepts(resolved):
    services = keyflow_services(resolved)
    assert set(WORKERS) | set(PRODUCERS) | {"init", "devstack"} <= set(services), sorted(services)
    for name, svc in services.items():
        argv = argv_of(svc)
        assert argv and argv[0] in {"worker", "producer", "devstack"}, f"{name}: {argv}"
        positional = [a for a in argv[1:] if not a.startswith("-")][:1]
        if name == "devstack":
            # The tools entry point (`docker compose run --rm devstack verify`):
            # its environment must reach the subcommands that talk to the cluster.
            positional = ["verify"]
        text = help_text(argv[0], *positional)
        for flag in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
            if flag == "--help":
                continue
            assert re.search(rf"(^|\s|,){re.escape(flag)}[\s=<]", text, re.M), f"{name}: {argv[0]} {positional} has no {flag}"
        for var in svc.get("environment", {}):
            if var == "RUST_LOG":
                continue  # read by the logging setup, not by a flag
            assert f"[env: {var}" in text, f"{name}: `{' '.join([argv[0], *positional])}` does not read {var}"


def test_the_environment_the_services_use_is_the_one_the_readme_documents(resolved):
    readme = (REPO / "README.md").read_text()
    for name, svc in keyflow_services(resolved).items():
        for var in svc.get("environment", {}):
            assert f"`{var}`" in readme, f"{name} sets {var}, which README.md does not document"


def test_kafka_is_three_kraft_brokers_with_rf3_min_isr2_and_the_clients_reach_them(resolved):
    svcs = resolved["services"]
    brokers = {n: s for n, s in svcs.items() if s.get("image", "").startswith("apache/kafka:")}
    assert len(brokers) == 3, sorted(brokers)
    ids = set()
    internal = set()
    for name, b in brokers.items():
        env = {k: str(v) for k, v in b["environment"].items()}
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert sorted(v.split("@")[1].split(":")[0] for v in voters) == sorted(brokers), voters
        ids.add(env["KAFKA_NODE_ID"])
        adv = dict(l.split("://") for l in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        internal.add(adv[env["KAFKA_INTER_BROKER_LISTENER_NAME"]])
        assert b.get("healthcheck"), f"{name} has no healthcheck (the registry waits for it)"
    assert len(ids) == 3, "node ids are unique"
    for name, svc in keyflow_services(resolved).items():
        assert set(svc["environment"]["KAFKA_BROKERS"].split(",")) == internal, name
    init = argv_of(svcs["init"])
    assert init[:2] == ["devstack", "init"] and init[init.index("--replication-factor") + 1] == "3", init
    sr = svcs["schema-registry"]
    assert sr["image"].startswith("confluentinc/cp-schema-registry:")
    assert set(sr["environment"]["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"].split(",")) == internal
    port = sr["environment"]["SCHEMA_REGISTRY_LISTENERS"].rsplit(":", 1)[1]
    for name, svc in keyflow_services(resolved).items():
        assert svc["environment"]["SCHEMA_REGISTRY_URL"] == f"http://schema-registry:{port}", name


def test_workers_run_two_instances_after_init_and_prometheus_scrapes_their_metrics_port(resolved):
    svcs = resolved["services"]
    prom_cfg = yaml.safe_load((REPO / "infra/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom_cfg["scrape_configs"]}
    for job, names, var in [
        ("keyflow-workers", WORKERS, "WORKER_METRICS_ADDR"),
        ("keyflow-producers", list(PRODUCERS), "PRODUCER_METRICS_ADDR"),
    ]:
        sd = jobs[job]["dns_sd_configs"][0]
        assert sorted(sd["names"]) == sorted(names), job
        for n in names:
            assert int(svcs[n]["environment"][var].rsplit(":", 1)[1]) == sd["port"], f"{n}: {var} vs {job}"
            assert svcs[n]["environment"][var].startswith("0.0.0.0:"), f"{n} must listen beyond localhost"
    for w in WORKERS:
        s = svcs[w]
        assert argv_of(s) == ["worker", w]
        assert s["deploy"]["replicas"] == 2, w
        assert s["depends_on"]["init"]["condition"] == "service_completed_successfully", w
        assert "ports" not in s, f"{w}: replicas cannot share a host port"
        # Each replica keeps its local state stores on its own volume (an
        # anonymous one: per container, kept across restarts and recreation;
        # a named one would be shared by the replicas, whose lock refuses the second).
        # (compose v1 resolves the short syntax to `/path`, v2 to a mapping.)
        data = s["environment"]["WORKER_DATA_DIR"]
        mounts = [
            v if isinstance(v, dict) else {"type": "volume", "target": v} if ":" not in v else {"target": v.split(":")[1]}
            for v in s.get("volumes", [])
        ]
        mine = [m for m in mounts if m["target"] == data]
        assert mine and mine[0].get("type") == "volume" and not mine[0].get("source"), f"{w}: {data} is not a per-container volume"
    for p, cmd in PRODUCERS.items():
        assert argv_of(svcs[p])[:2] == ["producer", cmd]
        assert svcs[p]["profiles"] == ["load"]
    assert svcs["kcat"]["profiles"] == ["tools"]
    assert (REPO / svcs["kcat"]["build"]["context"] / svcs["kcat"]["build"]["dockerfile"]).is_file()
    df = (REPO / "infra/Dockerfile").read_text()
    for b in ["devstack", "worker", "producer", "schema-registry", "broker"]:
        assert f"target/release/{b}" in df, f"infra/Dockerfile does not ship {b}"
    user = re.search(r"^USER (\d+)", df, re.M).group(1)
    data = svcs[WORKERS[0]]["environment"]["WORKER_DATA_DIR"]
    assert re.search(rf"chown {user}(:\d+)? {re.escape(data)}\b", df), f"the image's user {user} cannot write {data}"


def test_prometheus_and_grafana_mount_the_projects_config_and_dashboards(resolved):
    svcs = resolved["services"]

    def mounts(svc):
        out = {}
        for v in svc["volumes"]:
            src, dst = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
            out[dst] = src
        return out

    prom = mounts(svcs["prometheus"])
    assert Path(prom["/etc/prometheus"]).resolve() == (REPO / "infra/prometheus").resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in svcs["prometheus"]["command"]
    graf = mounts(svcs["grafana"])
    assert Path(graf["/etc/grafana/provisioning"]).resolve() == (REPO / "infra/grafana/provisioning").resolve()
    assert Path(graf["/var/lib/grafana/dashboards"]).resolve() == (REPO / "infra/grafana/dashboards").resolve()
    provider = yaml.safe_load((REPO / "infra/grafana/provisioning/dashboards/keyflow.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = yaml.safe_load((REPO / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "${PROMETHEUS_URL}" and svcs["grafana"]["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"
    home = svcs["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "infra/grafana/dashboards" / Path(home).name).is_file()
    for f in (REPO / "infra/grafana/dashboards").glob("*.json"):
        d = json.loads(f.read_text())
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{f.name}: panel ids repeat"
        for p in d["panels"]:
            assert p["datasource"]["uid"] == ds["uid"], f"{f.name}: {p['title']} uses another datasource"
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), f"{f.name}: {p['title']}"


def test_third_party_images_are_pinned(resolved):
    for name, svc in resolved["services"].items():
        image = svc.get("image", "")
        if image.startswith("keyflow"):
            continue
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
