"""Per-stream settings and alert history survive a SIGKILL of a real ``sensorcast serve``
(real mosquitto, SQLite readings store; issue #11 item 7).

Settings set over REST (for a served stream and for one not seen yet) and the alert
events of a spike are read back after the process was killed with SIGKILL and started
again: the settings come from their file and are what the engine applies (its effective
rules), the history from its file, in the same order.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.serving import ServeProcess
from tests.waiting import wait_until
from tools.localservers import Mosquitto
from tools.modelkit import KitSpec, write_model

pytestmark = pytest.mark.integration

C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
N = 160
SPIKE = 120
SPEC = KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=10)
OWN = {"threshold": 0.9995, "max": 125.0, "upper": 90.0, "stuck_steps": 40}
AHEAD = {"min": -5.0, "silent_after": 20.0}


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[ServeProcess]:
    write_model(tmp_path / "models", SPEC)
    svc = ServeProcess(tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'svc' / 'readings.db'}",
                       tmp_path / "models")
    svc.start()
    yield svc
    svc.kill()


def _send(svc: ServeProcess, values: np.ndarray, start: int) -> None:
    msgs = [{"topic": "sensors/spiky/value", "payload": {"ts": T0 + (start + i) * C, "value": float(v)}}
            for i, v in enumerate(values)]
    r = svc.post("/v1/readings", json={"messages": msgs})
    assert r.status_code == 202 and r.json()["accepted"] == len(msgs), r.text


def _put(svc: ServeProcess, path: str, body: dict[str, float]) -> httpx.Response:
    return httpx.put(svc.url + path, json=body, timeout=10)


def test_settings_and_alert_history_survive_sigkill(service: ServeProcess) -> None:
    rng = np.random.default_rng(3)
    values = np.sin(np.arange(N) / 8.0) * 3 + 20 + rng.normal(0, 0.1, N)
    values[SPIKE] += 30
    _send(service, values, 0)
    wait_until(lambda: service.get("/v1/streams/spiky/value").status_code == 200, what="the stream is served")
    put = _put(service, "/v1/streams/spiky/value/settings", OWN)
    assert put.status_code == 200, put.text
    assert put.json()["known"] is True and put.json()["effective"]["threshold"] == OWN["threshold"]
    ahead = _put(service, "/v1/streams/later/value/settings", AHEAD)
    assert ahead.status_code == 200 and ahead.json()["known"] is False, ahead.text
    bad = _put(service, "/v1/streams/spiky/value/settings", {"max": 1.0, "min": 2.0})
    assert bad.status_code == 422 and "min (2.0) must be below max (1.0)" in bad.json()["detail"]

    wait_until(lambda: len(service.get("/v1/alerts", params={"stream": "spiky/value"}).json()) >= 1, timeout=30,
               what="the spike's alert in the history")
    history = service.get("/v1/alerts").json()
    settings_before = service.get("/v1/streams/spiky/value/settings").json()
    assert settings_before["own"] == {**{k: None for k in settings_before["own"]}, **OWN}

    # A checkpoint written after the stream's rules were set (every 0.5 s here): the
    # restart restores the stream from it (killed sooner, it would warm from the store).
    put_at = time.time()
    state = service.workdir / "state"
    wait_until(lambda: any(f.stat().st_mtime > put_at for f in state.glob("*.state.npz")) if state.exists() else False,
               what="a checkpoint after the settings")
    assert service.kill(signal.SIGKILL) == -signal.SIGKILL  # no shutdown code runs
    service.start()

    assert service.get("/v1/alerts").json() == history
    after = service.get("/v1/streams/spiky/value/settings").json()
    assert after["own"] == settings_before["own"]
    # The engine restored the stream from its checkpoint and resolved its rules from the file.
    wait_until(lambda: service.get("/v1/streams/spiky/value/settings").json()["known"], what="stream restored")
    after = service.get("/v1/streams/spiky/value/settings").json()
    assert after["effective"] == settings_before["effective"]
    assert after["effective"]["threshold"] == OWN["threshold"]
    assert after["effective"]["features"]["value"]["max"] == OWN["max"]
    later = service.get("/v1/streams/later/value/settings").json()
    assert later["known"] is False and later["own"]["min"] == AHEAD["min"]
    # The stream configured ahead gets its rules when it appears.
    msgs = [{"topic": "sensors/later/value", "payload": {"ts": T0 + i * C, "value": 20.0 + (i % 3)}} for i in range(3)]
    assert service.post("/v1/readings", json={"messages": msgs}).status_code == 202
    wait_until(lambda: service.get("/v1/streams/later/value/settings").json()["known"], what="later/value served")
    eff = service.get("/v1/streams/later/value/settings").json()["effective"]
    assert eff["features"]["value"]["min"] == AHEAD["min"] and eff["silent_after_s"] == 20.0 * 60
