"""The real ``sensorcast serve`` as a child process, for fault tests and the soak run.

Settings travel as ``SENSORCAST_*`` environment variables, exactly as a deployment sets
them; the process's output goes to a log file the caller can read. ``kill(SIGKILL)`` is
a crash; ``start()`` again reuses the same spool, checkpoint and outbox directories.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tools.localservers import free_port


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

REPO = Path(__file__).resolve().parents[2]


def stack_env(workdir: Path, mqtt_url: str, store_url: str, models_dir: Path, port: int,
              **extra: str) -> dict[str, str]:
    """Environment for one serve process whose state lives under ``workdir``."""
    env = {
        "SENSORCAST_MQTT__URL": mqtt_url,
        "SENSORCAST_STORE__URL": store_url,
        "SENSORCAST_STORE__SPOOL_DIR": str(workdir / "spool"),
        "SENSORCAST_STREAMS__CHECKPOINT_DIR": str(workdir / "state"),
        "SENSORCAST_ALERTS__OUTBOX_DIR": str(workdir / "outbox"),
        "SENSORCAST_ALERTS__HISTORY_PATH": str(workdir / "alerts.sqlite"),
        "SENSORCAST_STREAMS__SETTINGS_PATH": str(workdir / "stream_settings.sqlite"),
        "SENSORCAST_MODELS__DIR": str(models_dir),
        "SENSORCAST_API__HOST": "127.0.0.1",
        "SENSORCAST_API__PORT": str(port),
        "SENSORCAST_MQTT__RECONNECT_MIN_S": "1",
        "SENSORCAST_MQTT__RECONNECT_MAX_S": "2",
    }
    env.update(extra)
    return env


class ServeProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        # Only our settings: a stray SENSORCAST_* or .env in the caller must not leak in.
        base = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
        self.env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.port = int(env["SENSORCAST_API__PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> None:
        """Start and wait until the API answers ``/readyz`` with the pipeline started.

        A free port can be taken by someone else between choosing and binding it: then
        the process exits with "address already in use" and is started on another port.
        """
        for attempt in range(3):
            try:
                self._start(timeout_s)
                return
            except RuntimeError as e:
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                self.port = free_port()
                self.env["SENSORCAST_API__PORT"] = str(self.port)
                self.url = f"http://127.0.0.1:{self.port}"
                self.http.close()
                self.http = httpx.Client(base_url=self.url, timeout=10)

    def _start(self, timeout_s: float) -> None:
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve"], cwd=self.log.parent, env=self.env,
                stdout=f, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sensorcast serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                r = self.http.get("/readyz")
                if "pipeline" not in r.json().get("checks", {}):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sensorcast serve did not come up in {timeout_s} s: {self.tail()}")
            time.sleep(0.1)

    def ready(self) -> dict[str, Any]:
        r = self.http.get("/readyz")
        body: dict[str, Any] = r.json()
        body["http_status"] = r.status_code
        return body

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.ready()
            if body["http_status"] == 200 or time.monotonic() > deadline:
                return body
            time.sleep(0.2)

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples of ``name`` (with ``labels`` text inside the braces, if given)."""
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name) and (not labels or labels in line):
                head = line.split(" ")[0]
                if head.split("{")[0] == name:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def histogram_le(self, name: str, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile of histogram ``name`` (all labels summed)."""
        buckets: dict[float, float] = {}
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        if not buckets or max(buckets.values()) == 0:
            return float("nan")
        total = buckets[max(buckets)]
        return next(b for b in sorted(buckets) if buckets[b] >= q * total)

    def rss_bytes(self) -> int:
        """Resident memory of the serve process now (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        return proc_cpu_s(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        """Graceful stop (SIGTERM: flush, checkpoint)."""
        self.kill(signal.SIGTERM)

    def close(self) -> None:
        self.stop()
        self.http.close()

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""
