"""Forecasts, scores and alerts in the store (``store.write_outputs``), and the Grafana
dashboard's queries against them, with ``sensorcast serve`` on real mosquitto and influxd.

- A spiky and a clean stream go through serve (defaults: outputs on with InfluxDB,
  sampled); ``forecasts`` then holds sampled one-step forecasts at the time they are for
  (the last equal to the served forecast), ``scores`` sampled scores, and ``alerts`` the
  spike's firing and resolved events.
- With ``outputs_interval_s=0`` the engine (real store) writes every warm step's forecast;
  sampled, a multivariate stream writes one forecast point per output feature.
- A store outage drops output points with a count and never blocks the sinks.
- Every query of deploy/grafana/dashboards/sensorcast.json (panels, annotations, template
  variables), with Grafana's macros substituted as Grafana does for InfluxQL, returns the
  streams' series from the same influxd.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from service.config import Settings, StoreSettings
from service.metrics import Metrics
from service.records import Forecast, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.store import open_store
from service.store.outputs import StoreOutputs, line_writer
from service.streams.engine import Engine
from tests.integration.serving import REPO, ServeProcess
from tests.modelkit import settings_for
from tests.waiting import wait_until
from tools.localservers import Influxd, Mosquitto, free_port
from tools.modelkit import KitSpec, write_model

pytestmark = pytest.mark.integration

C = 60 * 10**9  # kit cadence (60 s) in ns
T0 = 1_700_000_000 // 60 * C
N = 150
SPIKE = 100
SPEC = KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=10)
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "sensorcast.json"


def series(spike: bool) -> np.ndarray:
    rng = np.random.default_rng(2)
    v = np.sin(np.arange(N) / 8.0) * 3 + 20 + rng.normal(0, 0.1, N)
    if spike:
        v[SPIKE] += 30
    return v


class Db:
    def __init__(self, influxd: Influxd, name: str) -> None:
        self.url, self.name = influxd.url, name

    def query(self, q: str) -> list[dict[str, Any]]:
        r = httpx.post(f"{self.url}/query", params={"db": self.name, "epoch": "ns"}, data={"q": q}, timeout=10)
        r.raise_for_status()
        (result,) = r.json()["results"]
        assert "error" not in result, f"{q}: {result['error']}"
        series: list[dict[str, Any]] = result.get("series", [])
        return series

    def rows(self, q: str) -> list[dict[str, Any]]:
        return [dict(zip(s["columns"], v, strict=True)) | (s.get("tags") or {}) for s in self.query(q)
                for v in s["values"]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto, influxd: Influxd) -> Iterator[tuple[Db, ServeProcess]]:
    tmp = tmp_path_factory.mktemp("outputs")
    write_model(tmp / "models", SPEC)
    db = f"t{uuid.uuid4().hex[:8]}"
    influxd.create_db(db)
    # write_outputs is on by default with InfluxDB; sampled every second (the floor) to be quick.
    svc = ServeProcess(tmp / "svc", mosquitto.url, f"influxdb://127.0.0.1:{influxd.port}/{db}", tmp / "models",
                       extra_env={"SENSORCAST_STORE__OUTPUTS_INTERVAL_S": "1"})
    svc.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{svc.tag}")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        for device, values in (("clean", series(False)), ("spiky", series(True))):
            infos = [pub.publish(f"sensors/{device}/value", orjson.dumps({"ts": T0 + i * C, "value": float(v)}), qos=1)
                     for i, v in enumerate(values)]
            for info in infos:
                info.wait_for_publish(10)
        end = T0 + (N - 1) * C
        wait_until(lambda: svc.last_step("clean/value") == end and svc.last_step("spiky/value") == end,
                   timeout=60, what="all steps")
        store = Db(influxd, db)
        # The writer flushes every second: wait for the last step's forecast and the resolution.
        wait_until(lambda: store.rows(f'SELECT "mean" FROM "forecasts" WHERE time = {end + C}')
                   and store.rows("SELECT \"state\" FROM \"alerts\" WHERE \"state\" = 'resolved'")
                   and store.rows('SELECT "score" FROM "scores"'), timeout=30, what="outputs in the store")
        yield store, svc
    finally:
        pub.disconnect()
        pub.loop_stop()
        svc.kill()


def test_forecasts_scores_and_alerts_land_in_the_store(served: tuple[Db, ServeProcess]) -> None:
    store, svc = served
    for device in ("clean", "spiky"):
        rows = store.rows(f'SELECT "mean", "lower", "upper" FROM "forecasts" WHERE "device" = \'{device}\' GROUP BY *')
        assert {(r["quantity"], r["stream"]) for r in rows} == {("value", f"{device}/value")}
        # Sampled, stamped with the step each is for; the last one made after the last reading.
        times = [r["time"] for r in rows]
        assert times == sorted(set(times)) and times[-1] == T0 + N * C
        assert all((t - T0) % C == 0 and t > T0 + SPEC.warmup_steps * C for t in times)
        assert all(r["lower"] < r["mean"] < r["upper"] for r in rows)
        served_fc = svc.get(f"/v1/streams/{device}/value/forecast").json()
        assert math.isclose(rows[-1]["mean"], served_fc["mean"][0][0], rel_tol=1e-6)
        assert math.isclose(rows[-1]["upper"], served_fc["upper"][0][0], rel_tol=1e-6)

    scores = store.rows('SELECT "score", "value", "expected" FROM "scores" GROUP BY *')
    assert scores and all(0.0 <= r["score"] <= 1.0 for r in scores)
    assert {r["stream"] for r in scores} <= {"clean/value", "spiky/value"}

    alerts = store.rows('SELECT * FROM "alerts" GROUP BY *')
    assert [(a["stream"], a["check"], a["state"]) for a in alerts] == [
        ("spiky/value", "anomaly", "firing"), ("spiky/value", "anomaly", "resolved")]
    firing = alerts[0]
    assert firing["time"] in (T0 + SPIKE * C, T0 + (SPIKE + 1) * C) and firing["score"] >= 0.99
    assert firing["kind"] and firing["model"] == "m" and not firing["lower"] <= firing["value"] <= firing["upper"]
    rest = svc.get("/v1/alerts").json()
    assert [a["ts_ns"] for a in reversed(rest)] == [a["time"] for a in alerts]


# -- the dashboard's queries, as Grafana sends them ----------------------------------------

def _regex_escape(v: str) -> str:
    # Grafana's regex formatting of a variable value (lodash-style escapeRegExp).
    return re.sub(r"[\\^$.|?*+()\[\]{}/]", lambda m: "\\" + m.group(0), v)


def _grafana_vars(values: dict[str, list[str] | None]) -> dict[str, str]:
    """Values as Grafana's InfluxDB datasource interpolates them (format ``regex``): All gives
    the variable's allValue, one value is escaped, several become ``(a|b)``."""
    out = {}
    for name, chosen in values.items():
        if chosen is None:
            out[name] = ".*"  # allValue
        elif len(chosen) == 1:
            out[name] = _regex_escape(chosen[0])
        else:
            out[name] = "(" + "|".join(_regex_escape(v) for v in chosen) + ")"
    return out


def interpolate(q: str, variables: dict[str, str], start_ns: int, end_ns: int) -> str:
    """$timeFilter, $__interval and $var / ${var} the way Grafana's InfluxQL datasource does."""
    start_ms, end_ms = start_ns // 10**6, end_ns // 10**6
    q = q.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    # Grafana: range / max data points, never below the datasource's timeInterval (10s).
    interval_s = max(10, (end_ms - start_ms) // 1000 // 1000)
    q = q.replace("$__interval", f"{interval_s}s")
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        q = q.replace("${" + name + "}", value).replace("$" + name, value)
    assert not re.search(r"\$\{?\w", q), f"unsubstituted macro in {q}"  # a regex's closing $/ stays
    return q


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, raw query) of every panel target and annotation; all raw InfluxQL."""
    out = []
    for p in dash["panels"]:
        for t in p["targets"]:
            assert t["rawQuery"] is True, f"panel {p['title']}: builder queries are not tested"
            out.append((f"panel {p['title']!r} {t['refId']}", t["query"]))
    for a in dash["annotations"]["list"]:
        if a.get("datasource", {}).get("type") == "influxdb":
            assert a["query"] == a["target"]["query"]
            out.append((f"annotation {a['name']!r}", a["query"]))
    return out


@pytest.mark.parametrize("chosen", [
    {"device": None, "quantity": None},  # All
    {"device": ["spiky"], "quantity": ["value"]},
    {"device": ["clean", "spiky"], "quantity": ["value"]},
], ids=["all", "one", "several"])
def test_every_dashboard_query_returns_the_series(served: tuple[Db, ServeProcess], chosen: dict[str, list[str] | None]) -> None:
    store, _ = served
    dash = json.loads(DASHBOARD.read_text())
    variables = _grafana_vars(chosen)
    start, end = T0 - 3600 * 10**9, T0 + N * C + 3600 * 10**9
    wanted = set(chosen["device"] or ["clean", "spiky"])

    # Template variables (refreshed without a time range): the streams' devices and quantities.
    for var in dash["templating"]["list"]:
        got = {v[1] for s in store.query(interpolate(var["query"], variables, start, end)) for v in s["values"]}
        assert got >= ({"clean", "spiky"} if var["name"] == "device" else {"value"}), var["name"]

    queries = dashboard_queries(dash)
    assert len(queries) >= 5
    for where, raw in queries:
        result = store.query(interpolate(raw, variables, start, end))
        assert result and all(s["values"] for s in result), f"{where}: no series"
        devices = {(s.get("tags") or {}).get("device") for s in result}
        if devices != {None}:  # grouped by device: one series per chosen stream that has data
            only_spiky = "alerts" in raw or "scores" in raw  # alerts only spiky; scores are sampled
            assert devices <= wanted and (devices & wanted if only_spiky else devices == wanted), where
        else:  # the alert table and annotations: rows of the spike's events
            cols = result[0]["columns"]
            streams = {row[cols.index("stream")] for s in result for row in s["values"]}
            assert streams == {"spiky/value"}, where


# -- the engine and the writer with the real store -----------------------------------------

def test_every_steps_forecast_with_interval_zero(influxd: Influxd, tmp_path: Path) -> None:
    db = f"t{uuid.uuid4().hex[:8]}"
    influxd.create_db(db)
    write_model(tmp_path / "models", SPEC)
    settings = settings_for(tmp_path, tmp_path / "models",
                            store={"url": f"influxdb://127.0.0.1:{influxd.port}/{db}", "outputs_interval_s": 0})
    store = open_store(settings.store)
    out = StoreOutputs(line_writer(store), settings, Metrics())
    assert out.every_step
    eng = Engine(settings, ModelRegistry(tmp_path / "models"), store, Metrics(), on_forecast=out.on_forecast)
    eng.publish_forecasts = True  # as Pipeline.build sets it for outputs_interval_s=0
    values = series(False)[:40]
    try:
        for i, v in enumerate(values):
            eng.accept([Reading(StreamKey(d, "value"), T0 + i * C, float(v)) for d in ("a", "b")])
            eng.tick(T0 + i * C)
        out.flush()
        rows = Db(influxd, db).rows('SELECT "mean", "lower", "upper" FROM "forecasts" GROUP BY *')
        for d in ("a", "b"):
            times = [r["time"] for r in rows if r["device"] == d]
            # Every step from the first warm one on, stamped with the step it is for.
            assert times == [T0 + (i + 1) * C for i in range(len(values) - len(times), len(values))]
            assert len(times) >= len(values) - SPEC.warmup_steps - 1
        fc = eng.forecast("a/value")
        assert fc is not None and fc.scale is not None
        last = [r for r in rows if r["device"] == "a"][-1]
        assert math.isclose(last["mean"], fc.mean[0][0], rel_tol=1e-6)
        assert math.isclose(last["upper"] - last["mean"], settings.api.band_z * fc.scale[0][0], rel_tol=1e-5)
    finally:
        eng.close()
        store.close()


def test_sampled_multivariate_stream_writes_a_point_per_feature(influxd: Influxd, tmp_path: Path) -> None:
    db = f"t{uuid.uuid4().hex[:8]}"
    influxd.create_db(db)
    write_model(tmp_path / "models", KitSpec(name="mv", features=("t", "h"), hidden=8, warmup_steps=3))
    settings = settings_for(tmp_path, tmp_path / "models", store={"url": f"influxdb://127.0.0.1:{influxd.port}/{db}"})
    store = open_store(settings.store)
    eng = Engine(settings, ModelRegistry(tmp_path / "models"), store, Metrics())
    out = StoreOutputs(line_writer(store), settings, Metrics(), eng)  # sampled: the engine builds no Forecast
    try:
        for i, v in enumerate(series(False)[:20]):
            ts = T0 + i * C
            eng.accept([Reading(StreamKey("d", "t"), ts, float(v)), Reading(StreamKey("d", "h"), ts, float(-v))])
            eng.tick(ts)
        out.flush()
        out.flush()  # nothing new since: nothing written twice
        db_ = Db(influxd, db)
        fcs = db_.rows('SELECT "mean", "upper" FROM "forecasts" GROUP BY *')
        assert sorted((r["quantity"], r["stream"], r["time"]) for r in fcs) == [
            (q, "d", T0 + 20 * C) for q in ("h", "t")]
        fc = eng.forecast("d")
        assert fc is not None
        by_q = {r["quantity"]: r["mean"] for r in fcs}
        assert by_q == pytest.approx({f: fc.mean[0][j] for j, f in enumerate(fc.features)}, rel=1e-6)
        (score,) = db_.rows('SELECT "score" FROM "scores" GROUP BY *')
        status = eng.stream("d")
        assert status is not None and score["stream"] == "d" and score["quantity"] == status.feature
        assert score["time"] == T0 + 19 * C
    finally:
        eng.close()
        store.close()


def _forecast(device: str, ts_ns: int) -> Forecast:
    return Forecast(key=StreamKey(device, "value"), ts_ns=ts_ns, cadence_s=60.0, features=("value",),
                    mean=((20.0,), (20.0,)), scale=((0.5,), (0.7,)), model="m", model_version="1")


def test_store_outage_drops_and_counts_without_blocking_the_sinks(influxd: Influxd) -> None:
    # Nothing listens on this port: every write fails at once, like a stopped influxd.
    settings = Settings(store=StoreSettings(url=f"influxdb://127.0.0.1:{free_port()}/x",  # type: ignore[call-arg]
                                            outputs_interval_s=0, outputs_queue_max=5))
    metrics = Metrics()
    store = open_store(settings.store)
    out = StoreOutputs(line_writer(store), settings, metrics)
    out.start()
    try:
        for i in range(8):  # the sinks never wait: beyond the queue's 5 they drop
            out.on_forecast(_forecast("a", T0 + i * C))
        dropped = metrics.outputs_dropped
        assert dropped.labels("queue_full")._value.get() == 3
        wait_until(lambda: dropped.labels("store_error")._value.get() == 5, timeout=15, what="store errors counted")
        assert out.alive()  # the outage cost the points, not the writer
    finally:
        out.stop()
        store.close()
    assert not out.alive()
