"""The deploy files agree with the code: compose, Dockerfile, env example, mosquitto.conf.

No Docker engine runs here, so these check what can be checked without one: the compose
file validates (with docker-compose when installed), names only settings that exist,
pins its images, gates start-up on healthchecks, and the generated files are current.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.config_doc import settings_rows

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {var for var, _, _ in settings_rows()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_env_example_is_generated_from_current_settings() -> None:
    exe = Path(sys.executable).parent / "sensorcast"
    if not exe.exists():
        pytest.skip("sensorcast entry point not installed in this environment")
    out = subprocess.run(
        ["sh", str(REPO / "deploy" / "make-env-example.sh")], capture_output=True, text=True,
        env={**os.environ, "SENSORCAST": str(exe)}, cwd=REPO, timeout=60, check=True,
    ).stdout
    assert (REPO / "deploy" / "env.example").read_text() == out, (
        "deploy/env.example is stale: run `make env-example`"
    )
    # Every setting is there, commented out: copying it to .env changes nothing.
    for var in SETTINGS:
        assert f"\n# {var}=" in out
    assert not [ln for ln in out.splitlines() if ln and not ln.startswith("#")]


def test_compose_services_healthchecks_and_ordering(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mosquitto", "influxdb", "sensorcast", "trainer"} <= set(services)
    for name in ("mosquitto", "influxdb", "sensorcast"):
        hc = services[name]["healthcheck"]
        assert hc["test"] and hc["interval"] and hc["retries"] >= 3, name
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
    assert set(services["sensorcast"]["depends_on"]) == {"mosquitto", "influxdb"}
    assert services["trainer"]["profiles"] == ["train"]
    assert services["trainer"]["build"]["target"] == "train"
    assert services["sensorcast"]["build"]["target"] == "service"


def _default_image(image: str) -> str:
    """``${VAR:-default}`` -> ``default``: what compose runs when the variable is unset."""
    m = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", image)
    return m.group(1) if m else image


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = _default_image(svc.get("image", ""))
        assert re.search(r":[\w.${}:-]+$", image) and not image.endswith(":latest"), f"{name}: {image!r}"
    # The InfluxDB the tests exercise speaks the 1.x API: the stack runs a 1.x server.
    # The third-party images are variables (the stack test's stand-ins) whose defaults are
    # the pinned official images.
    assert compose["services"]["influxdb"]["image"] == "${INFLUXDB_IMAGE:-influxdb:1.8}"
    assert compose["services"]["mosquitto"]["image"] == "${MOSQUITTO_IMAGE:-eclipse-mosquitto:2.0.18}"


def test_compose_runs_our_images_hardened(compose: dict[str, Any]) -> None:
    for name in ("sensorcast", "trainer", "simulator"):
        svc = compose["services"][name]
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"], name
        assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"], name


def test_compose_volumes_and_secrets(compose: dict[str, Any]) -> None:
    svc = compose["services"]["sensorcast"]
    targets = {v.split(":")[1] for v in svc["volumes"]}
    assert {"/data", "/data/spool", "/data/state", "/models"} <= targets
    init = (REPO / "deploy" / "init.sh").read_text()
    for name, spec in compose["secrets"].items():
        assert spec["file"] == f"./deploy/secrets/{name}"
        assert name in init, f"deploy/init.sh does not create secret {name}"
    used = {s for svc in compose["services"].values() for s in svc.get("secrets", [])}
    assert used == set(compose["secrets"])


def _env_vars(env: dict[str, Any]) -> set[str]:
    return {k for k in env if k.startswith("SENSORCAST_")}


def test_compose_and_dockerfile_name_only_real_settings(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        unknown = _env_vars(svc.get("environment", {})) - SETTINGS
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"
    docker_env = set(re.findall(r"\b(SENSORCAST_[A-Z0-9_]+)=", (REPO / "Dockerfile").read_text()))
    assert docker_env and not docker_env - SETTINGS, sorted(docker_env - SETTINGS)
    # Secret files are referenced by path, never passed as values.
    env = compose["services"]["sensorcast"]["environment"]
    assert env["SENSORCAST_MQTT__PASSWORD_FILE"].startswith("/run/secrets/")
    assert env["SENSORCAST_STORE__PASSWORD_FILE"].startswith("/run/secrets/")


def test_dockerfile_service_image_is_slim_nonroot_healthchecked() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M)
    assert stages[-1] == "service" and "train" in stages  # default target: the service
    service = text[text.rindex("AS service"):]
    assert re.search(r"^USER 10001:10001$", service, flags=re.M)  # the sensorcast user, numeric
    assert "HEALTHCHECK" in service and "/healthz" in service
    assert "--only-binary=:all:" in text  # wheels only: same build on amd64 and arm64
    assert "torch" not in service


def test_dockerfile_requirement_extraction_has_no_torch() -> None:
    # The exact one-liner the build stage runs to list the service's dependencies.
    line = re.search(r'python -c "(import tomllib;[^"]+)"', (REPO / "Dockerfile").read_text())
    assert line is not None
    code = line.group(1)  # sh keeps \n inside double quotes: Python sees the escape
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    reqs = [r.strip() for r in out.splitlines() if r.strip()]
    names = {re.split(r"[<>=!~\[ ]", r)[0].lower() for r in reqs}
    assert {"onnxruntime", "fastapi", "paho-mqtt", "influxdb-client"} <= names
    assert "torch" not in names and "onnx" not in names


def test_mosquitto_conf_keeps_readings() -> None:
    conf = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    opts = dict(
        [*ln.split(None, 1), ""][:2] for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")
    )
    assert opts["persistence"] == "true"
    assert int(opts["autosave_interval"]) <= 5
    queued = int(opts["max_queued_messages"])
    assert queued == 0 or queued >= 100_000
    assert int(opts["max_inflight_messages"]) >= 100
    assert opts["allow_anonymous"] == "false" and "password_file" in opts and "acl_file" in opts


def test_init_script_creates_private_secrets_and_env_once(tmp_path: Path) -> None:
    shutil.copytree(REPO / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("secrets"))
    proc = subprocess.run(["sh", str(tmp_path / "deploy" / "init.sh")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    secrets = tmp_path / "deploy" / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    files = sorted(p.name for p in secrets.iterdir())
    assert files == sorted(["mqtt_service_password", "mqtt_device_password", "influxdb_admin_password",
                            "influxdb_password", "api_key", "read_key", "grafana_admin_password",
                            "nats_route_password", "nats_leaf_password"])  # the last two: deploy/compose.scale.yml
    values = {p.read_text() for p in secrets.iterdir()}
    assert len(values) == len(files) and all(re.fullmatch(r"[A-Za-z0-9]{32}", v) for v in values)
    assert (tmp_path / ".env").read_text() == (REPO / "deploy" / "env.example").read_text()
    # Again: nothing changes (a password in use is never replaced).
    before = {p.name: p.read_text() for p in secrets.iterdir()}
    subprocess.run(["sh", str(tmp_path / "deploy" / "init.sh")], capture_output=True, check=True, timeout=30)
    assert {p.name: p.read_text() for p in secrets.iterdir()} == before


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    shutil.copy(REPO / "docker-compose.yml", tmp_path)
    shutil.copytree(REPO / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("secrets"))
    (tmp_path / "models").mkdir()
    subprocess.run(["sh", str(tmp_path / "deploy" / "init.sh")], capture_output=True, check=True, timeout=30)
    for profiles in ([], ["--profile", "train", "--profile", "demo", "--profile", "grafana"]):
        proc = subprocess.run(
            [exe, *profiles, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
    services = subprocess.run(
        [exe, "--profile", "train", "--profile", "demo", "--profile", "grafana", "config", "--services"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert sorted(services) == ["grafana", "influxdb", "mosquitto", "sensorcast", "simulator", "trainer"]


def test_compose_commands_parse(compose: dict[str, Any]) -> None:
    """Every `sensorcast ...` command in the compose file names real subcommands and flags."""
    import argparse
    import importlib

    from service.cli import COMMANDS

    checked = 0
    for name, svc in compose["services"].items():
        cmd = list(svc.get("command") or [])
        entry = svc.get("entrypoint")
        if entry == ["sensorcast"]:
            cmd = ["sensorcast", *cmd]
        if not cmd or cmd[0] != "sensorcast":
            continue
        sub, args = cmd[1], cmd[2:]
        assert sub in COMMANDS, f"{name}: unknown command {sub!r}"
        if sub in ("train", "evaluate"):
            pytest.importorskip("torch")
        parser = argparse.ArgumentParser(prog=f"sensorcast {sub}")
        importlib.import_module(COMMANDS[sub][0]).add_arguments(parser)
        if "--help" in args:
            continue
        try:
            parser.parse_args(args)
        except SystemExit as e:  # argparse exits on an unknown flag
            raise AssertionError(f"{name}: `{' '.join(cmd)}` does not parse") from e
        checked += 1
    assert checked >= 2  # the service and the simulator at least


def test_grafana_profile_reads_the_stacks_influxdb(compose: dict[str, Any]) -> None:
    """The optional Grafana: pinned, loopback only, provisioning read-only, and its datasource
    names the database, user and password secret the influxdb service creates."""
    yaml = pytest.importorskip("yaml")
    svc = compose["services"]["grafana"]
    assert svc["profiles"] == ["grafana"]
    assert _default_image(svc["image"]).startswith("grafana/grafana-oss:")
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
    mounts = {v.split(":")[0]: v for v in svc["volumes"]}
    for src in ("./deploy/grafana/provisioning", "./deploy/grafana/dashboards"):
        assert mounts[src].endswith(":ro") and (REPO / src).is_dir()
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/sensorcast.yml").read_text())["datasources"]
    (influx,) = ds
    env = compose["services"]["influxdb"]["environment"]
    assert influx["url"] == "http://influxdb:8086" and influx["user"] == env["INFLUXDB_USER"]
    assert influx["jsonData"]["dbName"] == env["INFLUXDB_DB"] and influx["jsonData"]["version"] == "InfluxQL"
    secret = re.fullmatch(r"\$__file\{/run/secrets/(\w+)\}", influx["secureJsonData"]["password"])
    assert secret and secret.group(1) in svc["secrets"] and secret.group(1) == "influxdb_password"
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/sensorcast.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"].split(":")[1] == path
    dash = json.loads((REPO / "deploy/grafana/dashboards/sensorcast.json").read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {influx["uid"]}
    home = svc["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/sensorcast.json"
