"""The README's "Bring your own data (10 minutes)" quickstart, run command by command.

The commands are read from the README's section, so the two cannot drift apart. The
test generates the two CSVs the section names and runs each command in a fresh folder (as
a checkout would be, with the demo model in ``./models``): ``mosquitto`` is the fixture's
broker, ``sensorcast ...`` the installed command (``... &`` in the background until it is
ready), ``curl -s URL`` an HTTP GET. Only the broker's and the API's ports differ from the
README's, set through the same ``SENSORCAST_*`` variables a user would set.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.serving import REPO
from tests.waiting import poll
from tools.localservers import Mosquitto, free_port

pytestmark = pytest.mark.integration

SECTION = "## Bring your own data (10 minutes)"
STEP_S = 60
HISTORY_ROWS = 3 * 24 * 60  # three days, one row a minute
RECENT_ROWS = 60
SPIKE_ROW = RECENT_ROWS - 8  # a reading far off the signal, late in the live hour


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    part = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```sh\n(.*?)```", part, re.S)
    assert m, "the quickstart section has no ```sh block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _signal(i: int, rng: np.random.Generator) -> float:
    day, wave = 24 * 60, 90
    return 60 + 5 * math.sin(2 * math.pi * i / day) + math.sin(2 * math.pi * i / wave) + float(rng.normal(0, 0.1))


def _write_data(folder: Path) -> None:
    rng = np.random.default_rng(7)
    end = (int(time.time()) // STEP_S) * STEP_S - RECENT_ROWS * STEP_S  # history ends where the live hour starts
    t0 = end - HISTORY_ROWS * STEP_S

    def iso(i: int) -> str:
        return datetime.fromtimestamp(t0 + i * STEP_S, UTC).strftime("%Y-%m-%d %H:%M:%S")

    rows = [f"{iso(i)},{_signal(i, rng):.3f}" for i in range(HISTORY_ROWS)]
    (folder / "history.csv").write_text("timestamp,temperature [°C]\n" + "\n".join(rows) + "\n", encoding="utf-8")
    recent = []
    for k in range(RECENT_ROWS):
        i = HISTORY_ROWS + k
        v = _signal(i, rng) + (25.0 if k == SPIKE_ROW else 0.0)
        recent.append(f"{iso(i)},{v:.3f}")
    (folder / "recent.csv").write_text("timestamp,temperature\n" + "\n".join(recent) + "\n", encoding="utf-8")


class Runner:
    def __init__(self, workdir: Path, mosquitto: Mosquitto) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.exe = Path(sys.executable).parent / "sensorcast"
        tag = workdir.name[-8:]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
        self.env.update({
            "SENSORCAST_MQTT__URL": mosquitto.url,
            "SENSORCAST_MQTT__CLIENT_ID": f"qs-ingest-{tag}",
            "SENSORCAST_ALERTS__CLIENT_ID": f"qs-alerts-{tag}",
            "SENSORCAST_API__PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        })
        self.background: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[str, subprocess.CompletedProcess[str]] = {}
        self.answers: dict[str, Any] = {}

    def url(self, text: str) -> str:
        text = text.replace("localhost:8080", f"127.0.0.1:{self.port}")
        return text if "://" in text else "http://" + text

    def run(self, line: str) -> None:
        argv = shlex.split(line.removesuffix("&").strip())
        if argv[0] == "mosquitto":
            return  # the fixture's broker, on its own port (SENSORCAST_MQTT__URL)
        if argv[0] == "curl":
            self.answers[line] = self.get(self.url(argv[-1]))
            return
        assert argv[0] == "sensorcast", f"quickstart line {line!r}: expected mosquitto, sensorcast or curl"
        cmd = [str(self.exe), *argv[1:]]
        if line.endswith("&"):
            with (self.workdir / f"{argv[1]}.log").open("ab") as log:
                self.background.append(subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True))
            self._ready(argv[1])
            return
        proc = subprocess.run(cmd, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        self.outputs[argv[1]] = proc

    def _ready(self, name: str) -> None:
        def ready() -> bool:
            assert self.background[-1].poll() is None, (self.workdir / f"{name}.log").read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, timeout=60)

    def get(self, url: str) -> Any:
        r = httpx.get(url, timeout=10)
        assert r.status_code == 200, f"GET {url}: {r.status_code} {r.text[:500]}\n{self.log_tail()}"
        return r.json()

    def log_tail(self) -> str:
        log = self.workdir / "serve.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        for p in self.background:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def test_readme_quickstart_commands_are_the_ones_this_test_knows() -> None:
    cmds = readme_commands()
    verbs = [c.split()[0] if c.split()[0] != "sensorcast" else c.split()[1] for c in cmds]
    assert verbs == ["mosquitto", "import", "train", "serve", "replay", "curl", "curl", "curl"], cmds


def test_readme_quickstart(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cmds = readme_commands()
    _write_data(tmp_path)
    shutil.copytree(REPO / "models" / "demo", tmp_path / "models" / "demo")  # as in a checkout
    runner = Runner(tmp_path, mosquitto)
    stream = "machine2/temperature"
    try:
        for line in cmds:
            if line.startswith("curl"):
                break
            runner.run(line)
        # The import reported what it stored and named the train command the README runs next.
        out = runner.outputs["import"].stdout
        assert f"stored {HISTORY_ROWS} readings" in out and "refused nothing" in out, out
        assert f"{stream} [°C]: {HISTORY_ROWS} readings" in out, out
        suggested = next(ln for ln in out.splitlines() if ln.startswith("next: ")).removeprefix("next: ")
        assert next(c for c in cmds if " train " in c).startswith(suggested), (suggested, cmds)
        # The replay's readings were taken by the service, not only acknowledged by the broker.
        assert f"accepted {RECENT_ROWS} readings; refused 0" in runner.outputs["replay"].stderr

        # The user looks a moment later: the stream is served by the model trained on it.
        status = poll(lambda: (s := runner.get(runner.url(f"localhost:8080/v1/streams/{stream}")))["status"]
                      != "warming" and s, timeout=60)
        for line in cmds[cmds.index(next(c for c in cmds if c.startswith("curl"))):]:
            runner.run(line)
        answers = list(runner.answers.values())
        status, forecast = answers[0], answers[1]
        assert (status["model"], status["status"]) in {("machine2", "ok"), ("machine2", "firing")}, status
        assert forecast["model"] == "machine2" and forecast["stream_id"] == stream, forecast
        assert len(forecast["mean"]) >= 1 and all(math.isfinite(v[0]) for v in forecast["mean"]), forecast
        made_at = datetime.fromisoformat(forecast["made_at"]).timestamp()
        assert made_at > time.time() - 5 * STEP_S, forecast  # forecasting from the live readings, not history
        alerts = answers[2] or poll(lambda: runner.get(runner.url(cmds[-1].split()[-1].strip("'"))), timeout=30)
        assert any(a["stream_id"] == stream and a["state"] == "firing" for a in alerts), alerts
    finally:
        runner.stop()
