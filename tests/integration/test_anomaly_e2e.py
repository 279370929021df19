"""Anomaly alerts end to end: real mosquitto, a real ``sensorcast serve``, the shipped demo model.

- A +60 excursion of 6 readings on a sine (amplitude 5 around 20, 1 s cadence) fires one
  alert on its first reading, whose value is the excursion and whose expected value is
  the pre-excursion level; it stays firing during the excursion and resolves after it.
- A sensor that falls silent fires ``silent`` from the wall-clock watchdog, with no
  reading to trigger it, and resolves when it speaks again.
- A stuck sensor fires ``stuck``; its anomaly alert resolves as held and none fires
  while it is stuck; the stream status says what holds it.
- A slow ramp toward an operating limit fires ``predicted_breach`` with an ETA before the
  crossing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.records import Reading, StreamKey
from tests.integration import ingest_helpers
from tests.integration.serving import ServeProcess
from tests.mqttwatch import Watcher
from tests.waiting import wait_until
from tools.localservers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = Path(__file__).resolve().parents[2] / "models"
S = 10**9
T0 = 1_700_000_000 * S
WARM = 240  # past the demo model's 150 warm-up steps and the evidence's first 30 residuals


def sine(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 20 + 5 * np.sin(np.arange(n) / 10) + rng.normal(0, 0.1, n)


class Publisher(ingest_helpers.Publisher):
    """Readings of one value per second from T0 on ``sensors/{device}/value``, QoS 1, acknowledged."""

    def send(self, device: str, values: np.ndarray, start: int) -> None:
        key = StreamKey(device, "value")
        self.publish([Reading(key, T0 + (start + i) * S, float(v)) for i, v in enumerate(values)])
        self.wait_acked(timeout=30)


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[ServeProcess]:
    svc = ServeProcess(tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'readings.db'}", MODELS,
                       # Bound explicitly: the demo model serves the simulator's devices only.
                       extra_env={"SENSORCAST_ANOMALY__COOLDOWN_S": "0",
                                  "SENSORCAST_MODELS__BINDINGS": '[{"model": "demo"}]'})
    svc.start()
    yield svc
    svc.kill()


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(mosquitto.port, client_id=f"anomaly-pub-{uuid.uuid4().hex[:6]}")
    yield p
    p.close()


def last_ts(svc: ServeProcess, stream: str) -> int | None:
    return svc.last_step(stream)


def events(watch: Watcher, stream: str) -> list[dict[str, object]]:
    return [m.json() for m in watch.messages if m.json()["stream_id"] == stream]


def put_rules(svc: ServeProcess, stream: str, rules: dict[str, object]) -> None:
    r = httpx.put(svc.url + f"/v1/streams/{stream}/settings", json=rules, timeout=10)
    assert r.status_code == 200, r.text


def test_a_sustained_excursion_fires_once_on_its_first_reading(service: ServeProcess, mosquitto: Mosquitto,
                                                               pub: Publisher) -> None:
    watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{service.tag}")
    v = sine(WARM + 40)
    at = WARM + 10
    v[at : at + 6] += 60
    pub.send("exc", v, 0)
    wait_until(lambda: last_ts(service, "exc/value") == T0 + (len(v) - 1) * S, what="every reading stepped")
    wait_until(lambda: len(events(watch, "exc/value")) >= 2, what="firing and resolved", timeout=10)
    got = events(watch, "exc/value")
    assert [(e["check"], e["state"]) for e in got] == [("anomaly", "firing"), ("anomaly", "resolved")], got
    firing, resolved = got
    assert firing["ts_ns"] == T0 + at * S and firing["kind"] in ("spike", "level_shift")
    assert firing["value"] == pytest.approx(v[at], abs=1e-3)  # the excursion, not the return
    assert abs(float(firing["expected"]) - (v[at] - 60)) < 2.0  # the level before it (a 0.1-noise sine)
    assert firing["onset_value"] == pytest.approx(v[at], abs=1e-3) and firing["onset_time"]
    # One episode: it stays firing through the excursion and resolves after it.
    assert int(resolved["ts_ns"]) >= T0 + (at + 6) * S and resolved["kind"] in ("spike", "level_shift")
    assert int(resolved["ts_ns"]) <= T0 + (at + 16) * S
    hist = service.get("/v1/alerts", params={"stream": "exc/value"}).json()
    assert [(a["state"], a["kind"]) for a in hist][::-1] == [(e["state"], e["kind"]) for e in got]


def test_a_silent_sensor_fires_from_the_watchdog(service: ServeProcess, mosquitto: Mosquitto, pub: Publisher) -> None:
    put_rules(service, "quiet/value", {"silent_after": 2})  # 2 cadences of 1 s, configured ahead
    watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{service.tag}")
    v = sine(WARM)  # an established stream (warm): a topic seen once never goes silent
    pub.send("quiet", v, 0)
    wait_until(lambda: last_ts(service, "quiet/value") == T0 + (WARM - 1) * S, what="every reading stepped")
    # Nothing more is published: the watchdog alone notices.
    wait_until(lambda: any(e["check"] == "silent" for e in events(watch, "quiet/value")), what="silent", timeout=15)
    fired = [e for e in events(watch, "quiet/value") if e["check"] == "silent"]
    assert [e["state"] for e in fired] == ["firing"] and fired[0]["kind"] == "silent"
    status = service.get("/v1/streams/quiet/value").json()
    assert "silent" in status["checks_firing"] and status["held_by"] == "silent"
    pub.send("quiet", sine(WARM + 1)[WARM:], WARM)  # it speaks again
    wait_until(lambda: [e["state"] for e in events(watch, "quiet/value") if e["check"] == "silent"]
               == ["firing", "resolved"], what="silent resolved", timeout=10)


def test_a_stuck_sensor_fires_stuck_and_holds_its_anomaly_alerts(service: ServeProcess, mosquitto: Mosquitto,
                                                                 pub: Publisher) -> None:
    put_rules(service, "stk/value", {"stuck_steps": 10})
    watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{service.tag}")
    v = sine(WARM + 60)
    v[WARM:] = v[WARM - 1]  # stuck at its last value while the process goes on
    pub.send("stk", v, 0)
    wait_until(lambda: last_ts(service, "stk/value") == T0 + (len(v) - 1) * S, what="every reading stepped")
    wait_until(lambda: any(e["check"] == "stuck" for e in events(watch, "stk/value")), what="stuck", timeout=10)
    got = events(watch, "stk/value")
    stuck = [e for e in got if e["check"] == "stuck"]
    assert stuck[0]["state"] == "firing" and int(stuck[0]["ts_ns"]) <= T0 + (WARM + 12) * S
    after = [e for e in got if e["check"] == "anomaly" and int(e["ts_ns"]) >= int(stuck[0]["ts_ns"])]
    # An anomaly alert that fired as the stuck value drifted from the process resolves, held.
    assert all(e["state"] == "resolved" and e["extra"]["reason"] == "held" for e in after), after
    status = service.get("/v1/streams/stk/value").json()
    assert status["held_by"] == "stuck" and "stuck" in status["checks_firing"]


def test_a_ramp_toward_a_limit_is_announced_before_the_crossing(service: ServeProcess, mosquitto: Mosquitto,
                                                                pub: Publisher) -> None:
    put_rules(service, "ramp/value", {"upper": 28.0, "stuck_steps": 0})
    watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{service.tag}")
    n = 700
    rng = np.random.default_rng(3)
    v = 20 + rng.normal(0, 0.1, n)
    v[300:] += np.arange(n - 300) * 0.03  # a slow degradation
    crossing = int(np.argmax(v > 28.0))
    pub.send("ramp", v[:crossing], 0)
    wait_until(lambda: last_ts(service, "ramp/value") == T0 + (crossing - 1) * S, what="readings up to the crossing")
    got = [e for e in events(watch, "ramp/value") if e["check"] == "predicted_breach"]
    assert got and got[0]["state"] == "firing", events(watch, "ramp/value")
    first = got[0]
    eta = float(first["extra"]["eta_s"])
    assert int(first["ts_ns"]) < T0 + crossing * S and eta > 0
    assert float(first["extra"]["limit"]) == 28.0 and first["extra"]["side"] == "upper"
    status = service.get("/v1/streams/ramp/value").json()
    assert status["predicted_breach"] is not None and status["predicted_breach"]["eta_s"] > 0
