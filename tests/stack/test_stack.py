"""The edge stack for real (issue #13): the project's images, the real docker-compose.yml,
docker-compose 1.29 driving podman, stand-ins for eclipse-mosquitto and influxdb:1.8.

The tests run in file order and share one stack (module fixture): init, up, readings,
alerts, refusals, restart and kill -9, the trainer, the demo simulator, down and up.
The only changes to the deployment are the documented ones: MOSQUITTO_IMAGE and
INFLUXDB_IMAGE, the host ports, and two settings appended to .env (conftest.ENV_OVERRIDES).
"""

from __future__ import annotations

import re
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqttwatch import Received
from tests.stack.conftest import ENV_OVERRIDES, FACTS, KIT
from tests.stack.podstack import SERVICES, Stack, podman
from tests.waiting import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800)]

C = 60 * 10**9  # the kit model's cadence (60 s) in ns
T0 = 1_700_000_000 // 60 * C  # cadence-aligned history
N = 200
SPIKE = 120
# What deploy/init.sh makes (tests/unit/test_deploy_files.py checks the same list without podman);
# the last two are for deploy/compose.scale.yml's NATS cluster.
SECRETS = ("mqtt_service_password", "mqtt_device_password", "influxdb_admin_password",
           "influxdb_password", "api_key", "read_key", "grafana_admin_password",
           "nats_route_password", "nats_leaf_password")


def sine(spike: bool) -> np.ndarray:
    rng = np.random.default_rng(1)
    v = np.sin(np.arange(N) / 8.0) * 3 + 20 + rng.normal(0, 0.1, N)
    if spike:
        v[SPIKE] += 30
    return v


class Client:
    """An MQTT client of the stack's broker on the host port, with a user (or anonymous)."""

    def __init__(self, st: Stack, user: str | None, password_secret: str | None = None) -> None:
        self.connected = threading.Event()
        self.refused: list[str] = []
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stack-{uuid.uuid4().hex[:8]}")
        if user is not None:
            self.client.username_pw_set(user, st.secret(password_secret or ""))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", st.mqtt_port)
        self.client.loop_start()

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.refused.append(str(rc))
        else:
            self.connected.set()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def subscribe(self, topic: str) -> None:
        assert self.connected.wait(10), f"not connected: {self.refused}"
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10)

    def publish(self, device: str, values: np.ndarray, start: int = 0) -> int:
        """Publish QoS 1 readings one cadence apart; return how many the broker acknowledged."""
        assert self.connected.wait(10), f"not connected: {self.refused}"
        infos = [self.client.publish(f"sensors/{device}/value",
                                     orjson.dumps({"ts": T0 + (start + i) * C, "value": float(v)}), qos=1)
                 for i, v in enumerate(values)]
        for info in infos:
            info.wait_for_publish(30)
        return sum(1 for i in infos if i.is_published())

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LivePublisher:
    """A device publishing one reading every 20 ms until stopped, each acknowledged (QoS 1)
    before the next: ``acked`` is exactly what the broker took responsibility for."""

    def __init__(self, st: Stack, device: str) -> None:
        self.device, self.acked = device, 0
        self.client = Client(st, "device", "mqtt_device_password")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(2)
        while not self._stop.is_set():
            v = 20 + 3 * np.sin(self.acked / 8.0) + rng.normal(0, 0.1)
            self.acked += self.client.publish(self.device, np.array([v]), start=self.acked)
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        self.client.close()
        return self.acked


def stream(st: Stack, sid: str) -> dict[str, Any] | None:
    r = st.api(f"/v1/streams/{sid}")
    return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]


def test_init_creates_secrets_and_env(stack: Stack) -> None:
    proc = subprocess.run(["sh", "deploy/init.sh"], cwd=stack.workdir, capture_output=True, text=True,
                          timeout=30, check=True)
    secrets = stack.workdir / "deploy" / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert sorted(p.name for p in secrets.iterdir()) == sorted(SECRETS)
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", stack.secret(s)) for s in SECRETS)
    assert proc.stdout.count("created") == len(SECRETS) + 1  # the secrets and .env
    env = stack.workdir / ".env"
    assert env.read_text() == (stack.workdir / "deploy" / "env.example").read_text()
    env.write_text(env.read_text() + ENV_OVERRIDES)


def test_service_image_within_the_size_goal(stack: Stack) -> None:
    # The goal is 350 MB on python:3.11-slim; its stand-in here (Debian's python3 on a
    # trimmed bookworm) is about as big (130 MB), so the same bound holds for this image.
    sizes = FACTS["image_mb"]
    assert sizes[stack.images["PYTHON_IMAGE"]] <= 140
    assert sizes["sensorcast:0.1.0"] <= 350, sizes


def test_up_every_service_healthy_in_dependency_order(stack: Stack) -> None:
    assert (stack.workdir / ".env").exists(), "run this module's tests in order (init first)"
    t0 = time.time()
    up = subprocess.Popen(["docker-compose", "up", "-d"], cwd=stack.workdir, env=stack.env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # /healthz from the host, as often as a probe would look: start-up time to healthy.
    healthz_at = None
    while (up.poll() is None or healthz_at is None) and up.returncode in (None, 0):
        try:
            if stack.api("/healthz", key=None).status_code == 200:
                healthz_at = healthz_at or time.time()
        except httpx.HTTPError:
            pass  # not listening yet
        assert time.time() - t0 < 240, "stack did not come up in 240 s"
        time.sleep(0.1)
    out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    healthy = {s: stack.wait_healthy(s) for s in SERVICES}
    started = {s: stack.started_at(s) for s in SERVICES}
    # compose starts the service only once both dependencies passed their checks.
    assert started["sensorcast"] >= max(healthy["mosquitto"], healthy["influxdb"]) - 0.5, (healthy, started)
    assert healthy["sensorcast"] > started["sensorcast"]
    assert healthz_at is not None
    FACTS["up_s"] = round(time.time() - t0, 1)
    FACTS["service_healthz_after_start_s"] = round(healthz_at - started["sensorcast"], 2)
    FACTS["service_first_healthcheck_pass_after_start_s"] = round(healthy["sensorcast"] - started["sensorcast"], 2)
    FACTS["dependencies_healthy_after_up_s"] = round(max(healthy["mosquitto"], healthy["influxdb"]) - t0, 2)
    ready = stack.api("/readyz", key=None).json()
    assert ready["ready"], ready

    # The service container: uid 10001, read-only root, no capabilities, no privilege gain.
    assert stack.inspect("sensorcast", "{{.Config.User}}") == "10001:10001"
    assert stack.inspect("sensorcast", "{{.HostConfig.ReadonlyRootfs}}") == "true"
    status = Path(f"/proc/{stack.host_pid('sensorcast')}/status").read_text()
    assert re.search(r"^Uid:\s+10001\s", status, flags=re.M)
    assert re.search(r"^CapEff:\s+0+$", status, flags=re.M) and re.search(r"^NoNewPrivs:\s+1$", status, flags=re.M)
    probe = podman("exec", stack.container("sensorcast"), "touch", "/probe", check=False)
    assert "Read-only file system" in probe.stderr and probe.returncode != 0
    podman("exec", stack.container("sensorcast"), "touch", "/tmp/probe", "/data/probe")
    FACTS["rss_idle_mb"] = round(stack.rss_mb("sensorcast"), 1)


def test_device_readings_are_stored_and_a_spike_alerts_the_service_user(stack: Stack) -> None:
    watch = Client(stack, "sensorcast", "mqtt_service_password")
    watch.subscribe("sensorcast/alerts/#")
    device = Client(stack, "device", "mqtt_device_password")
    try:
        assert device.publish("kit-clean", sine(False)) == N
        assert device.publish("kit-spiky", sine(True)) == N
        wait_until(lambda: stack.influx_count("kit-clean") == N and stack.influx_count("kit-spiky") == N,
                   timeout=60, every=0.5, what="readings stored in InfluxDB")
        end = T0 + (N - 1) * C
        wait_until(lambda: all((s := stream(stack, f"kit-{d}/value")) and s["last_time"]
                               and int(np.datetime64(s["last_time"][:19], "s").astype(int)) * 10**9 == end
                               for d in ("clean", "spiky")),
                   timeout=60, every=0.5, what="every step fed to the model")
        got = watch.wait_for(2, timeout=20)
        time.sleep(1.0)  # anything more would be a spurious alert
        events = [(m.json()["stream_id"], m.json()["state"]) for m in watch.messages]
        assert events == [("kit-spiky/value", "firing"), ("kit-spiky/value", "resolved")]
        firing = got[0].json()
        assert firing["model"] == KIT.name and firing["ts_ns"] in (T0 + SPIKE * C, T0 + (SPIKE + 1) * C)
        assert got[0].topic == "sensorcast/alerts/kit-spiky/value"
    finally:
        device.close()
        watch.close()


def test_anonymous_mqtt_and_requests_without_a_key_are_refused(stack: Stack) -> None:
    anon = Client(stack, None)
    try:
        wait_until(lambda: anon.refused, timeout=10, what="the broker's answer to an anonymous client")
        assert not anon.connected.is_set() and "authorized" in anon.refused[0].lower()
    finally:
        anon.close()
    assert stack.api("/v1/streams", key=None).status_code == 401
    assert stack.api("/v1/streams", key="read_key").status_code == 200
    assert stack.api("/healthz", key=None).status_code == 200  # probes need no key


def _restored(stack: Stack, since: float) -> int:
    wait_until(lambda: "restored" in stack.logs("sensorcast", since=since), timeout=60, every=0.5,
               what="the checkpoint restore line")
    m = re.search(r"restored (\d+) streams from checkpoints", stack.logs("sensorcast", since=since))
    assert m
    return int(m.group(1))


def test_restart_and_kill9_lose_no_acknowledged_reading_and_restore_state(stack: Stack) -> None:
    before = stream(stack, "kit-clean/value")
    assert before and before["status"] == "ok" and before["warm_up"]["message"] == "ready"
    live = LivePublisher(stack, "kit-live")
    try:
        wait_until(lambda: live.acked > 100, timeout=30, what="live readings flowing")
        # 1. docker-compose restart: SIGTERM, the checkpoint is flushed, the same container starts.
        t = time.time()
        stack.compose("restart", "sensorcast", timeout=120)
        stack.wait_healthy("sensorcast")
        assert _restored(stack, t - 1) >= 2
        after = stream(stack, "kit-clean/value")
        assert after and after["last_time"] == before["last_time"] and after["warm_up"]["message"] == "ready"
        # 2. kill -9 of the service's process from the host (a crash, an OOM kill): the restart
        # policy brings it back. (podman kill would count as a stop: no restart.)
        count = int(stack.inspect("sensorcast", "{{.RestartCount}}"))
        wait_until(lambda: live.acked > 300, timeout=60, what="more live readings")
        t = time.time()
        subprocess.run(["kill", "-9", str(stack.host_pid("sensorcast"))], check=True)
        wait_until(lambda: int(stack.inspect("sensorcast", "{{.RestartCount}}")) > count, timeout=60,
                   every=0.5, what="the restart policy restarting the killed service")
        stack.wait_healthy("sensorcast")
        assert _restored(stack, t - 1) >= 2
        after = stream(stack, "kit-clean/value")
        assert after and after["last_time"] == before["last_time"] and after["warm_up"]["message"] == "ready"
        wait_until(lambda: live.acked > 500, timeout=60, what="live readings after the kill")
    finally:
        acked = live.stop()
    wait_until(lambda: stack.influx_count("kit-live") == acked, timeout=90, every=0.5,
               what=f"all {acked} acknowledged readings stored")
    FACTS["restart_kill9_acked_readings"] = acked


def test_trainer_writes_a_model_the_service_hot_reloads(stack: Stack) -> None:
    t = time.time()
    proc = stack.compose(
        "--profile", "train", "run", "--rm", "trainer", "train", "--name", "plant", "--version", "1",
        "--streams", "kit-clean/value,kit-live/value", "--layout", "univariate", "--cadence-s", "60",
        "--hidden", "8", "--horizon", "4", "--chunk", "24", "--epochs", "2", "--time-features=",
        "--no-progress", timeout=600,
    )
    FACTS["trainer_run_s"] = round(time.time() - t, 1)
    print(f"\ntrainer: {proc.stdout.strip()[-1200:]}")
    assert "data: 2 series" in proc.stdout, proc.stdout + proc.stderr
    folder = stack.workdir / "models" / "plant" / "1"
    assert (folder / "model.onnx").stat().st_size > 0 and (folder / "manifest.json").exists()
    # Hot reload: the running service (./models mounted read-only) loads it and serves plant-*.
    wait_until(lambda: any(m.get("name") == "plant" for m in stack.api("/v1/models").json()), timeout=60,
               every=0.5, what="the service loading the new model")
    device = Client(stack, "device", "mqtt_device_password")
    try:
        assert device.publish("plant-1", sine(False)[:20]) == 20
    finally:
        device.close()
    wait_until(lambda: (s := stream(stack, "plant-1/value")) is not None and s["model"] == "plant",
               timeout=30, every=0.5, what="plant-1 served by the new model")


def test_demo_simulator_feeds_the_stack(stack: Stack) -> None:
    stack.compose("--profile", "demo", "up", "-d", "simulator", timeout=180)
    wait_until(lambda: len([s for s in stack.api("/v1/streams").json() if s["device"].startswith("dev")]) >= 9,
               timeout=90, every=1, what="the simulator's 9 streams")
    wait_until(lambda: stack.influx_count("dev01") > 100, timeout=60, every=1, what="simulated readings stored")
    # The simulator's backfill warms the demo model: forecasts come out.
    wait_until(lambda: stack.api("/v1/streams/dev01/temperature/forecast").status_code == 200,
               timeout=90, every=1, what="a forecast for a simulated stream")
    time.sleep(15)  # live readings at 1/s per stream
    FACTS["rss_under_simulator_mb"] = round(stack.rss_mb("sensorcast"), 1)
    FACTS["simulator_readings_stored_dev01"] = stack.influx_count("dev01")


def test_down_and_up_keep_the_data(stack: Stack) -> None:
    counts = {d: stack.influx_count(d) for d in ("kit-clean", "kit-spiky", "kit-live")}
    before = stream(stack, "kit-clean/value")
    stack.compose("--profile", "demo", "down", timeout=180)
    assert not podman("ps", "-a", "--filter", f"label=com.docker.compose.project={stack.project}",
                      "--format", "{{.Names}}").stdout.strip()
    t = time.time()
    stack.compose("up", "-d", timeout=300)
    for s in SERVICES:
        stack.wait_healthy(s)
    assert {d: stack.influx_count(d) for d in counts} == counts
    assert _restored(stack, t - 1) >= 3
    after = stream(stack, "kit-clean/value")
    assert after and before and after["last_time"] == before["last_time"]
    # The broker's password file is in its volume: kept, not created again.
    assert "created /mosquitto/data/passwd" not in stack.logs("mosquitto")
    assert stack.api("/v1/models").status_code == 200
