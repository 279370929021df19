"""deploy/nats agrees with nats-server and with the code: every conf passes ``nats-server -t``,
the partition mapping is the one service/nats/subjects.py builds for the default settings,
and start.sh hands the secrets over (issue #15). The servers themselves are started from
these files in tests/integration/test_deploy_nats.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "nats"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
CLUSTER_ENV = {
    "NATS_SERVICE_PASSWORD": "a", "NATS_DEVICE_PASSWORD": "b", "NATS_ROUTE_PASSWORD": "c", "NATS_LEAF_PASSWORD": "d",
    "NATS_ROUTE_1": "nats-route://route:c@nats1:6222", "NATS_ROUTE_2": "nats-route://route:c@nats2:6222",
    "NATS_ROUTE_3": "nats-route://route:c@nats3:6222",
}
LEAF_ENV = {"NATS_GATEWAY_NAME": "gw1", "NATS_DEVICE_PASSWORD": "b", "NATS_HUB_URL": "nats-leaf://leaf:d@hub:7422"}
MAPPING = re.compile(r'^\s*"([^"]+)":\s*"([^"]+)"\s*$', re.M)


def _test_conf(conf: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server not installed (apt-get install nats-server)")
    # -t: parse and check the configuration, then exit (nothing is bound or written).
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    return subprocess.run([NATS_SERVER, "-c", str(DEPLOY / conf), "-t"], capture_output=True, text=True,
                          env={**clean, **env}, timeout=30)


@pytest.mark.parametrize(("conf", "env"), [
    ("nats1.conf", CLUSTER_ENV), ("nats2.conf", CLUSTER_ENV), ("nats3.conf", CLUSTER_ENV), ("leaf.conf", LEAF_ENV),
])
def test_confs_are_valid(conf: str, env: dict[str, str]) -> None:
    proc = _test_conf(conf, env)
    assert proc.returncode == 0 and "is valid" in proc.stdout + proc.stderr, proc.stderr


@pytest.mark.parametrize(("conf", "env", "missing"), [
    ("nats1.conf", CLUSTER_ENV, "NATS_ROUTE_PASSWORD"), ("leaf.conf", LEAF_ENV, "NATS_HUB_URL"),
])
def test_a_missing_secret_stops_the_server(conf: str, env: dict[str, str], missing: str) -> None:
    proc = _test_conf(conf, {k: v for k, v in env.items() if k != missing})
    assert proc.returncode != 0 and missing in proc.stderr, proc.stderr


def test_nodes_differ_only_in_their_name() -> None:
    texts = [(DEPLOY / f"nats{i}.conf").read_text() for i in (1, 2, 3)]
    for i, text in enumerate(texts, start=1):
        assert re.search(rf"^server_name: nats{i}$", text, re.M)
        same = text.replace(f"nats{i}", "natsN").replace(f"node {i} of", "node N of")
        assert same == texts[0].replace("nats1", "natsN").replace("node 1 of", "node N of")
        assert "include ./cluster.conf" in text


def test_mapping_matches_the_service_settings() -> None:
    subjects = pytest.importorskip("service.nats.subjects")
    from service.config import IngestSettings, NatsSettings

    src, dst = subjects.mapping(IngestSettings().topic, NatsSettings().partitions)
    for conf in ("cluster.conf", "leaf.conf"):
        block = (DEPLOY / conf).read_text().split("mappings {", 1)[1].split("}\n", 1)[0]
        found = dict(MAPPING.findall(block))
        assert found[src] == dst, conf
        # The second line maps a device's own p/<n>/sensors/... back onto its device's partition.
        n = NatsSettings().partitions
        assert found["p.*.sensors.*.*"] == f"p.{{{{partition({n},2)}}}}.sensors.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"
        assert len(found) == 2


def _start_sh(tmp_path: Path, env: dict[str, str], secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "secrets").mkdir(exist_ok=True)
    for name, value in secrets.items():
        (tmp_path / "secrets" / name).write_text(value)
    fake = tmp_path / "fake-nats-server"
    fake.write_text('#!/bin/sh\necho "args: $*"; env | grep "^NATS_" | sort\n')
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    return subprocess.run(["sh", str(DEPLOY / "start.sh")], capture_output=True, text=True, timeout=30,
                          env={**clean, "SECRETS_DIR": str(tmp_path / "secrets"), "NATS_SERVER": str(fake), **env})


SECRET_FILES = {"mqtt_service_password": "svc", "mqtt_device_password": "dev", "nats_route_password": "rte",
                "nats_leaf_password": "lf"}


def test_start_sh_hands_the_secrets_to_a_cluster_node(tmp_path: Path) -> None:
    proc = _start_sh(tmp_path, {"NATS_CONF": "/etc/nats/nats2.conf"}, SECRET_FILES)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "args: -c /etc/nats/nats2.conf"
    env = dict(line.split("=", 1) for line in out[1:])
    assert env["NATS_SERVICE_PASSWORD"] == "svc" and env["NATS_DEVICE_PASSWORD"] == "dev"
    assert env["NATS_LEAF_PASSWORD"] == "lf"
    assert [env[f"NATS_ROUTE_{i}"] for i in (1, 2, 3)] == [f"nats-route://route:rte@nats{i}:6222" for i in (1, 2, 3)]


def test_start_sh_hands_the_secrets_to_a_leaf(tmp_path: Path) -> None:
    proc = _start_sh(tmp_path, {"NATS_CONF": "/etc/nats/leaf.conf", "NATS_HUB": "hub.example:7422"},
                     {"mqtt_device_password": "dev", "nats_leaf_password": "lf"})
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines()[1:])
    assert env["NATS_HUB_URL"] == "nats-leaf://leaf:lf@hub.example:7422" and env["NATS_DEVICE_PASSWORD"] == "dev"
    assert "NATS_SERVICE_PASSWORD" not in env  # a gateway holds only what it needs


@pytest.mark.parametrize(("env", "drop", "message"), [
    ({}, "nats_route_password", "nats_route_password is missing"),
    ({"NATS_ROUTE_HOSTS": "a:1 b:2"}, None, "needs the three nodes"),
])
def test_start_sh_refuses_without_what_it_needs(tmp_path: Path, env: dict[str, str], drop: str | None,
                                                message: str) -> None:
    proc = _start_sh(tmp_path, env, {k: v for k, v in SECRET_FILES.items() if k != drop})
    assert proc.returncode == 1 and message in proc.stderr and "args:" not in proc.stdout, proc.stderr


# --- deploy/compose.scale.yml: the scale-out deployment -----------------------------------


@pytest.fixture(scope="module")
def scale() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "compose.scale.yml").read_text())
    return data


def test_scale_compose_validates(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    shutil.copy(REPO / "docker-compose.yml", tmp_path)  # influxdb extends its service
    shutil.copytree(REPO / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("secrets"))
    (tmp_path / "models").mkdir()
    subprocess.run(["sh", str(tmp_path / "deploy" / "init.sh")], capture_output=True, check=True, timeout=30)
    args = [exe, "-f", "deploy/compose.scale.yml", "--env-file", ".env", "config"]
    proc = subprocess.run([*args, "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    services = subprocess.run([*args, "--services"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              check=True).stdout.split()
    assert sorted(services) == ["inference", "influxdb", "nats1", "nats2", "nats3", "writer1", "writer2"]


def test_scale_compose_structure(scale: dict[str, Any]) -> None:
    services = scale["services"]
    for name, svc in services.items():
        if name != "influxdb":  # extends docker-compose.yml's, checked there
            assert svc["healthcheck"]["test"] and svc["healthcheck"]["retries"] >= 3, name
            image = svc["image"]
            m = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", image)
            assert re.search(r":[\w.${}-]+$", m.group(1) if m else image), name  # pinned
            assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
    for i in (1, 2, 3):
        node = services[f"nats{i}"]
        conf = node["environment"]["NATS_CONF"]
        assert conf == f"/etc/nats/nats{i}.conf" and "./nats:/etc/nats:ro" in node["volumes"]
        assert node["entrypoint"] == ["/bin/sh", "/etc/nats/start.sh"]
        # Monitoring (8222) and clients (4222) stay inside the compose network.
        assert {p.rsplit(":", 1)[1] for p in node["ports"]} == {"1883", "7422"}
    assert services["inference"]["environment"]["SENSORCAST_ROLES"] == "inference,api"
    assert all(p.startswith("127.0.0.1:") for p in services["inference"]["ports"])
    for w in ("writer1", "writer2"):
        assert services[w]["environment"]["SENSORCAST_ROLES"] == "ingest,api" and "ports" not in services[w]
    spools = {v for w in ("writer1", "writer2") for v in services[w]["volumes"]}
    assert len(spools) == 2  # a spool volume each
    init = (REPO / "deploy" / "init.sh").read_text()
    for name, spec in scale["secrets"].items():
        assert spec["file"] == f"./secrets/{name}" and name in init, name
    used = {s for svc in services.values() for s in svc.get("secrets", [])}
    assert used == set(scale["secrets"])
    # The default single-gateway stack knows nothing of NATS.
    assert not [s for s in (REPO / "docker-compose.yml").read_text().splitlines() if "nats" in s.lower()]


def test_scale_compose_settings_exist_and_match_the_mapping(scale: dict[str, Any]) -> None:
    from service.config_doc import settings_rows

    settings = {var for var, _, _ in settings_rows()}
    if "SENSORCAST_NATS__URL" not in settings:
        pytest.skip("the nats settings are not in service/config.py yet")
    for name, svc in scale["services"].items():
        env = {k for k in svc.get("environment", {}) if k.startswith("SENSORCAST_")}
        assert not env - settings, f"{name}: {sorted(env - settings)} are not settings"
    parts = {svc["environment"]["SENSORCAST_NATS__PARTITIONS"] for n, svc in scale["services"].items()
             if n.startswith(("inference", "writer"))}
    mapped = set(re.findall(r"partition\((\d+),", (DEPLOY / "cluster.conf").read_text()))
    mapped |= set(re.findall(r"partition\((\d+),", (DEPLOY / "leaf.conf").read_text()))
    assert parts == mapped and len(parts) == 1


def test_scale_entrypoint_builds_the_url_from_the_secret(scale: dict[str, Any], tmp_path: Path) -> None:
    """The service's entrypoint as compose runs it, with the secret path moved and `sensorcast`
    replaced by a script that prints what it got; the URL parses as three servers."""
    from service.config import Settings

    entry = scale["services"]["inference"]["entrypoint"]
    assert entry[:2] == ["/bin/sh", "-c"]
    script = entry[2].replace("$$", "$").replace("/run/secrets/", f"{tmp_path}/")
    (tmp_path / "mqtt_service_password").write_text("s3cret")
    fake = tmp_path / "bin" / "sensorcast"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$*"\necho "$SENSORCAST_NATS__URL"\n')
    fake.chmod(0o755)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=True,
                         env={"PATH": f"{fake.parent}:/usr/bin:/bin"}).stdout.splitlines()
    assert out[0] == "serve"
    if not hasattr(Settings(), "nats"):
        pytest.skip("the nats settings are not in service/config.py yet")
    servers = Settings(nats={"url": out[1]}).nats.servers  # type: ignore[attr-defined]
    assert servers == [f"nats://sensorcast:s3cret@nats{i}:4222" for i in (1, 2, 3)]
