"""Run ``sensorcast serve`` as a real subprocess for integration tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tools.localservers import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServeProcess:
    """One ``sensorcast serve`` with all its state under ``workdir``; restartable."""

    workdir: Path
    mqtt_url: str
    store_url: str
    models_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "serve.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
        w = self.workdir
        env.update({
            "SENSORCAST_MQTT__URL": self.mqtt_url,
            # Fixed per test (persistent sessions), unique across tests sharing a broker.
            "SENSORCAST_MQTT__CLIENT_ID": f"ingest-{self.tag}",
            "SENSORCAST_ALERTS__CLIENT_ID": f"alerts-{self.tag}",
            "SENSORCAST_STORE__URL": self.store_url,
            "SENSORCAST_STORE__SPOOL_DIR": str(w / "spool"),
            "SENSORCAST_MODELS__DIR": str(self.models_dir),
            "SENSORCAST_MODELS__WATCH": "false",
            "SENSORCAST_STREAMS__CHECKPOINT_DIR": str(w / "state"),
            "SENSORCAST_STREAMS__CHECKPOINT_INTERVAL_S": "0.5",
            "SENSORCAST_STREAMS__TICK_S": "0.01",
            "SENSORCAST_INGEST__BATCH_INTERVAL_S": "0.01",
            "SENSORCAST_ALERTS__OUTBOX_DIR": str(w / "outbox"),
            "SENSORCAST_ALERTS__HISTORY_PATH": str(w / "alerts.sqlite"),
            "SENSORCAST_STREAMS__SETTINGS_PATH": str(w / "stream_settings.sqlite"),
            "SENSORCAST_API__PORT": str(self.port),
            "SENSORCAST_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve"], cwd=REPO, env=self.env(),
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve not {'ready' if wait_ready else 'up'} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def last_step(self, stream: str) -> int | None:
        """The stream's last fed step (ns), None while unknown or not stepped."""
        r = self.get(f"/v1/streams/{stream}")
        if r.status_code != 200 or r.json()["last_time"] is None:
            return None
        from datetime import datetime

        return int(datetime.fromisoformat(r.json()["last_time"]).timestamp()) * 10**9

    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, **kw)  # type: ignore[arg-type]
