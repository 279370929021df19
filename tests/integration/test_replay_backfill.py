"""`sensorcast replay` against a real mosquitto and a real `serve`: what the service refused is
reported by reason with the fix, and `--backfill` keeps the real spacing with the newest row at now."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.records import NS_PER_S, StreamKey
from service.store.sqlite import SqliteStore
from tests.integration.serving import REPO, ServeProcess
from tests.waiting import wait_until
from tools.localservers import Mosquitto, free_port

pytestmark = pytest.mark.integration

ROWS = 40
STEP_S = 300  # NAB's machine temperatures: one reading every 5 minutes, in 2013


def _csv(path: Path) -> Path:
    t0 = 1_386_000_000  # 2013-12-02
    path.write_text("timestamp,value\n" + "".join(f"{t0 + STEP_S * i},{70 + i % 5}\n" for i in range(ROWS)))
    return path


def _replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "replay", *args, "--drain-s", "5"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_replay_reports_the_services_refusals_and_backfill_is_taken(mosquitto: Mosquitto, tmp_path: Path) -> None:
    f = _csv(tmp_path / "machine.csv")
    serve = ServeProcess(tmp_path / "serve", mosquitto.url, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models")
    (tmp_path / "models").mkdir()
    serve.start(wait_ready=False)  # no model: never ready, but ingesting once subscribed
    wait_until(lambda: "MQTT subscribed" in serve.log.read_text(), timeout=30)
    try:
        old = _replay(str(f), "--mqtt-url", mosquitto.url, "--device", "m1", "--api", serve.url)
        # The broker acknowledged every reading; the service kept none of them, and says why.
        assert old.returncode == 1, old.stderr
        assert f"{ROWS} readings" in old.stderr and "all acknowledged" in old.stderr
        assert f"accepted 0 readings; refused {ROWS} (too_old {ROWS})" in old.stderr
        assert "fix: " in old.stderr and "--backfill" in old.stderr and "sensorcast import" in old.stderr

        before = time.time_ns()
        new = _replay(str(f), "--mqtt-url", mosquitto.url, "--device", "m2", "--api", serve.url, "--backfill")
        after = time.time_ns()
        assert new.returncode == 0, new.stderr
        assert f"accepted {ROWS} readings; refused 0; engine dropped 0" in new.stderr
        store = SqliteStore(tmp_path / "store.db")
        try:
            got = [r.ts_ns for r in store.read_range(StreamKey("m2", "value"), 0, 2**62)]
            assert store.read_range(StreamKey("m1", "value"), 0, 2**62) == []
        finally:
            store.close()
        assert len(got) == ROWS
        assert {b - a for a, b in itertools.pairwise(got)} == {STEP_S * NS_PER_S}  # the real spacing
        assert before <= got[-1] <= after  # the newest row at now
    finally:
        serve.kill()


def test_replay_says_when_the_service_cannot_be_reached(mosquitto: Mosquitto, tmp_path: Path) -> None:
    f = _csv(tmp_path / "machine.csv")
    api = f"http://127.0.0.1:{free_port()}"
    proc = _replay(str(f), "--mqtt-url", mosquitto.url, "--device", "m3", "--api", api, "--backfill")
    assert proc.returncode == 0, proc.stderr  # the broker took them: what the service did is unknown, not failed
    assert f"the service at {api} cannot be reached" in proc.stderr
    assert "all acknowledged" in proc.stderr
