"""The compose stack under podman, for the stack tests (issue #13).

No Docker engine runs here, so docker-compose 1.29 drives podman through podman's
Docker-compatible socket, and since podman schedules health checks with systemd timers
(there is no systemd), a thread runs them with ``podman healthcheck run`` (docs/measured.md,
"Containers on this machine"). Images come from ``deploy/standins/build.sh``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "standins" / "build.sh"
STACK_DIR = Path(os.environ.get("STACK_DIR", "/var/tmp/sensorcast-stack"))
PROJECT = "scstack"  # compose project: containers scstack_<service>_1, volumes scstack_<volume>
SERVICES = ("mosquitto", "influxdb", "sensorcast")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman_env() -> dict[str, str]:
    """The environment podman needs here: runc and no default ulimits (build.sh writes it)."""
    return {**os.environ, "CONTAINERS_CONF": str(STACK_DIR / "containers.conf")}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True,
                          timeout=timeout, check=check)


def parse_time(text: str) -> float:
    """podman's '2026-12-06 03:45:00.487496549 +0000 UTC' (or RFC 3339) as epoch seconds."""
    text = text.strip()
    m = re.match(r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(\.\d+)?", text)
    assert m, f"unexpected time {text!r}"
    frac = float(m.group(3)[:7]) if m.group(3) else 0.0
    return datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}+00:00").timestamp() + frac


@dataclass
class Health:
    """Runs the project's health checks, as podman's systemd timers would: a container still
    starting (or unhealthy) every second, a healthy one every ``healthy_every`` seconds.
    Records when each container start (name, StartedAt) first passed."""

    project: str
    healthy_every: float = 10.0
    passed: dict[tuple[str, float], float] = field(default_factory=dict)  # (name, started) -> time
    runs: int = 0
    _last: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="healthchecks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick()
            except (subprocess.SubprocessError, OSError, AssertionError):
                continue  # a container that went away between ps and the check

    def tick(self) -> None:
        ps = podman("ps", "--filter", f"label=com.docker.compose.project={self.project}",
                    "--format", "{{.Names}}|{{.Status}}", check=False, timeout=30).stdout
        for line in ps.splitlines():
            name, _, status = line.partition("|")
            m = re.search(r"\((starting|healthy|unhealthy)\)", status)
            if m is None:
                continue  # no health check (simulator, trainer)
            now = time.time()
            if m.group(1) == "healthy" and now - self._last.get(name, 0.0) < self.healthy_every:
                continue
            self._last[name] = now
            ok = podman("healthcheck", "run", name, check=False, timeout=30).returncode == 0
            self.runs += 1
            if ok:
                started = parse_time(podman("inspect", "--format", "{{.State.StartedAt}}", name).stdout)
                self.passed.setdefault((name, started), time.time())

    def healthy_since(self, name: str) -> float | None:
        """When the container's current start first passed its check (None: not yet)."""
        started = parse_time(podman("inspect", "--format", "{{.State.StartedAt}}", name).stdout)
        return self.passed.get((name, started))


@dataclass
class Stack:
    """A copy of the compose deployment (docker-compose.yml, deploy/, models/) in ``workdir``,
    driven by docker-compose through a podman socket of its own."""

    workdir: Path
    images: dict[str, str]  # MOSQUITTO_IMAGE / INFLUXDB_IMAGE from build.sh
    mqtt_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    influx_port: int = field(default_factory=free_port)
    project: str = PROJECT
    service: subprocess.Popen[bytes] | None = None
    health: Health = field(init=False)

    def __post_init__(self) -> None:
        self.health = Health(self.project)

    @property
    def sock(self) -> Path:
        return self.workdir / "podman.sock"

    def env(self) -> dict[str, str]:
        """The documented overrides: image names and host ports, nothing else."""
        return {
            **podman_env(),
            "DOCKER_HOST": f"unix://{self.sock}",
            "COMPOSE_PROJECT_NAME": self.project,
            "MOSQUITTO_IMAGE": self.images["MOSQUITTO_IMAGE"],
            "INFLUXDB_IMAGE": self.images["INFLUXDB_IMAGE"],
            "MQTT_PORT": str(self.mqtt_port),
            "API_PORT": str(self.api_port),
            "INFLUXDB_PORT": str(self.influx_port),
        }

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "docker-compose.yml", self.workdir)
        shutil.copytree(REPO / "deploy", self.workdir / "deploy",
                        ignore=shutil.ignore_patterns("secrets", "wheels", "standins"))
        shutil.copytree(REPO / "models", self.workdir / "models",
                        ignore=shutil.ignore_patterns("__pycache__", "*.py"))

    def start_socket(self) -> None:
        with (self.workdir / "podman-service.log").open("ab") as log:
            self.service = subprocess.Popen(
                ["podman", "system", "service", "--time", "0", f"unix://{self.sock}"],
                env=podman_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            assert self.service.poll() is None, (self.workdir / "podman-service.log").read_text()
            assert time.monotonic() < deadline, "podman socket did not appear"
            time.sleep(0.1)

    def stop_socket(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(20)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(10)

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["docker-compose", *args], cwd=self.workdir, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"docker-compose {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def inspect(self, service: str, fmt: str) -> str:
        return podman("inspect", "--format", fmt, self.container(service)).stdout.strip()

    def started_at(self, service: str) -> float:
        return parse_time(self.inspect(service, "{{.State.StartedAt}}"))

    def host_pid(self, service: str) -> int:
        return int(self.inspect(service, "{{.State.Pid}}"))

    def rss_mb(self, service: str) -> float:
        """Resident memory of the container's main process (the service: `sensorcast serve`)."""
        status = Path(f"/proc/{self.host_pid(service)}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)
        assert m
        return int(m.group(1)) / 1024

    def logs(self, service: str, since: float | None = None) -> str:
        args = ["logs"] + (["--since", str(int(since))] if since is not None else []) + [self.container(service)]
        proc = podman(*args, check=False)
        return proc.stdout + proc.stderr

    def secret(self, name: str) -> str:
        return (self.workdir / "deploy" / "secrets" / name).read_text().strip()

    def api(self, path: str, key: str | None = "read_key", **kw: object) -> httpx.Response:
        headers = {"X-API-Key": self.secret(key)} if key else {}
        return httpx.get(f"http://127.0.0.1:{self.api_port}{path}", headers=headers, timeout=10, **kw)  # type: ignore[arg-type]

    def influx_count(self, device: str) -> int:
        """Readings stored for ``device``, asked as the service's InfluxDB user."""
        q = f"SELECT count(\"value\") FROM \"readings\" WHERE \"device\"='{device}'"
        r = httpx.get(f"http://127.0.0.1:{self.influx_port}/query", timeout=10,
                      params={"db": "sensorcast", "q": q, "u": "sensorcast", "p": self.secret("influxdb_password")})
        r.raise_for_status()
        series = r.json()["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    def wait_healthy(self, service: str, timeout: float = 120) -> float:
        """Wait until the container's current start passed its health check; return when it did."""
        deadline = time.monotonic() + timeout
        name = self.container(service)
        while True:
            try:
                at = self.health.healthy_since(name)
            except (subprocess.CalledProcessError, AssertionError):
                at = None  # being recreated
            if at is not None:
                return at
            assert time.monotonic() < deadline, f"{name} not healthy in {timeout} s:\n{self.logs(service)[-3000:]}"
            time.sleep(0.2)
