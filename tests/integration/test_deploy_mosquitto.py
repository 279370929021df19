"""The shipped deploy/mosquitto config and start script, run with the real mosquitto.

The compose stack cannot run here (no Docker engine), so its broker configuration is
exercised directly: same mosquitto.conf, acl and start.sh, with paths moved to a temp
directory and the listener on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tools.localservers import MOSQUITTO, LocalServer, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
PASSWORDS = {"sensorcast": "service-pw-123", "device": "device-pw-456"}


def _need_mosquitto() -> None:
    if not Path(MOSQUITTO).exists() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto / mosquitto_passwd not installed (make setup installs them)")


def _layout(tmp: Path, port: int) -> dict[str, str]:
    conf = (DEPLOY / "mosquitto.conf").read_text()
    assert "listener 1883\n" in conf
    conf = conf.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    conf = conf.replace("/mosquitto/data/", f"{tmp}/data/").replace("/mosquitto/config/acl", f"{tmp}/acl")
    (tmp / "data").mkdir()
    (tmp / "secrets").mkdir()
    (tmp / "mosquitto.conf").write_text(conf)
    shutil.copy(DEPLOY / "acl", tmp / "acl")
    (tmp / "secrets" / "mqtt_service_password").write_text(PASSWORDS["sensorcast"])
    (tmp / "secrets" / "mqtt_device_password").write_text(PASSWORDS["device"])
    if os.geteuid() == 0:  # mosquitto drops to its own user: it must read and write here
        for p in [tmp, *tmp.rglob("*")]:
            shutil.chown(p, user="mosquitto")
    env = dict(os.environ)
    env.update(
        MOSQUITTO_PASSWD=str(tmp / "data" / "passwd"),
        SECRETS_DIR=str(tmp / "secrets"),
        MOSQUITTO_CONF=str(tmp / "mosquitto.conf"),
        PATH=f"{Path(MOSQUITTO).parent}:{env.get('PATH', '')}",
    )
    return env


@dataclass
class _EnvServer(LocalServer):
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env,
            start_new_session=True,
        )
        logf.close()
        from tools.localservers import _wait_port

        _wait_port(self.port, self.proc, self.log)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and mosquitto (which drops
    # to its own user, as in the container) must reach the files.
    d = Path(tempfile.mkdtemp(prefix="sc-deploy-mosq-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def broker(workdir: Path) -> Iterator[tuple[_EnvServer, Path]]:
    _need_mosquitto()
    port = free_port()
    env = _layout(workdir, port)
    server = _EnvServer(argv=["sh", str(DEPLOY / "start.sh")], port=port, workdir=workdir, env=env)
    server.start()
    try:
        yield server, workdir
    finally:
        server.kill()


def _client(port: int, user: str | None, client_id: str) -> tuple[mqtt.Client, mqtt.ReasonCode | None]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if user is not None:
        c.username_pw_set(user, PASSWORDS[user])
    done = threading.Event()
    result: list[mqtt.ReasonCode] = []

    def on_connect(client: mqtt.Client, u: object, f: object, rc: mqtt.ReasonCode, p: object) -> None:
        result.append(rc)
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(5)
    return c, (result[0] if result else None)


def _collect(c: mqtt.Client, topic: str) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    c.on_message = lambda cl, u, m: got.append((m.topic, bytes(m.payload)))
    c.on_subscribe = lambda *a: subscribed.set()
    c.subscribe(topic, qos=1)
    assert subscribed.wait(5)
    return got


def test_password_file_created_at_first_start_and_anonymous_refused(broker: tuple[_EnvServer, Path]) -> None:
    server, tmp = broker
    passwd = tmp / "data" / "passwd"
    assert passwd.exists() and oct(passwd.stat().st_mode & 0o777) == "0o600"
    users = {line.split(":", 1)[0] for line in passwd.read_text().splitlines()}
    assert users == {"sensorcast", "device"}
    assert PASSWORDS["device"] not in passwd.read_text()  # hashed, not stored
    c, rc = _client(server.port, None, "anon")
    assert rc is not None and rc.is_failure
    c.loop_stop()
    # A wrong password is refused too.
    bad = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bad")
    bad.username_pw_set("device", "wrong")
    seen: list[mqtt.ReasonCode] = []
    ev = threading.Event()
    bad.on_connect = lambda c, u, f, rc, p: (seen.append(rc), ev.set())
    bad.connect("127.0.0.1", server.port)
    bad.loop_start()
    ev.wait(5)
    bad.loop_stop()
    assert seen and seen[0].is_failure
    # Second start keeps the existing file (passwords are not reset behind the user's back).
    before = passwd.read_bytes()
    server.restart()
    assert passwd.read_bytes() == before


def test_acl_devices_write_readings_only_service_reads_them(broker: tuple[_EnvServer, Path]) -> None:
    server, _ = broker
    service, rc = _client(server.port, "sensorcast", "svc")
    assert rc is not None and not rc.is_failure
    device, rc = _client(server.port, "device", "dev")
    assert rc is not None and not rc.is_failure
    try:
        got_service = _collect(service, "#")
        got_device = _collect(device, "sensors/#")
        device.publish("sensors/pump-1/temperature", b'{"value": 21.5}', qos=1).wait_for_publish(5)
        device.publish("sensorcast/alerts/pump-1/temperature", b"forged", qos=1).wait_for_publish(5)
        service.publish("sensorcast/state/pump-1/temperature", b"ok", qos=1).wait_for_publish(5)
        probe = _collect(service, "sensorcast/#")  # round trip: earlier messages have arrived
        service.publish("sensorcast/probe", b"x", qos=1).wait_for_publish(5)
        deadline = threading.Event()
        for _ in range(50):
            if any(t == "sensorcast/probe" for t, _ in probe):
                break
            deadline.wait(0.1)
        topics = [t for t, _ in got_service if not t.startswith("$SYS")]
        assert "sensors/pump-1/temperature" in topics
        assert "sensorcast/alerts/pump-1/temperature" not in topics  # device may not forge alerts
        assert "sensorcast/state/pump-1/temperature" in topics
        assert got_device == []  # devices cannot read other devices' readings
    finally:
        for c in (service, device):
            c.disconnect()
            c.loop_stop()


def test_compose_healthcheck_command_succeeds(broker: tuple[_EnvServer, Path]) -> None:
    server, _ = broker
    if shutil.which("mosquitto_sub") is not None:
        # The command docker-compose.yml runs inside the container, with this port.
        proc = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(server.port), "-u", "sensorcast",
             "-P", PASSWORDS["sensorcast"], "-t", "$SYS/broker/uptime", "-C", "1", "-W", "5"],
            capture_output=True, text=True, timeout=15,
        )
        assert proc.returncode == 0, proc.stderr
        assert "seconds" in proc.stdout
        return
    # Without mosquitto-clients: the same subscription with paho (what the ACL must allow).
    c, rc = _client(server.port, "sensorcast", "health")
    assert rc is not None and not rc.is_failure
    try:
        got = _collect(c, "$SYS/broker/uptime")
        for _ in range(100):
            if got:
                break
            threading.Event().wait(0.1)
        assert got and got[0][1].endswith(b"seconds")
    finally:
        c.disconnect()
        c.loop_stop()


def test_start_script_refuses_to_start_without_secrets(workdir: Path) -> None:
    _need_mosquitto()
    tmp_path = workdir
    env = _layout(tmp_path, free_port())
    (tmp_path / "secrets" / "mqtt_device_password").unlink()
    proc = subprocess.run(["sh", str(DEPLOY / "start.sh")], env=env, capture_output=True, text=True, timeout=15)
    assert proc.returncode == 1
    assert "mqtt_device_password is missing" in proc.stderr
    assert not (tmp_path / "data" / "passwd").exists()
