"""Faults on the whole service: the real ``sensorcast serve`` process, real mosquitto and
influxd. Ingest-only faults (ingester SIGKILL, broker SIGKILL, spool limit) live in
``test_ingest_faults.py``; these add what only the full process shows: ``/readyz``,
checkpoints, the alert outbox and hot reload of models.

``SENSORCAST_FAULT_OUTAGE_S`` sets the database outage (CI: a few seconds; ``make
faults``: the full 60 s).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.records import Reading, StreamKey
from service.store import open_store
from service.store.base import Store
from tests.faults.serve_helpers import (
    CADENCE_NS,
    KIT,
    Subscriber,
    kit_models,
    restored_counts,
    series,
    serve,
)
from tests.integration.ingest_helpers import (
    Publisher,
    make_settings,
    run_in_thread,
    wait_stored,
)
from tests.waiting import poll
from tools.localservers import Influxd, Mosquitto
from tools.modelkit import KitSpec, write_model

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("SENSORCAST_FAULT_OUTAGE_S", "8"))


def by_key(rs: list[Reading]) -> list[Reading]:
    return sorted(rs, key=lambda r: (r.stream, r.ts_ns))


def store_for(port: int, db: str, tmp: Path) -> Store:
    return open_store(make_settings(1, f"influxdb://127.0.0.1:{port}/{db}", tmp / "unused").store)


def test_influxd_down_mid_stream_serve_degrades_spools_and_recovers(
    mosquitto: Mosquitto, fresh_influxd: Callable[..., Influxd], tmp_path: Path
) -> None:
    influxd = fresh_influxd()
    models = kit_models(tmp_path / "models")
    rate = 500.0
    steps = int((OUTAGE_S + 8) * rate / 20)
    start = (time.time_ns() // 10**9 - steps - 60) * 10**9
    expected = series(20, steps, start)
    url = f"influxdb://127.0.0.1:{influxd.port}/sensorcast"
    statuses: list[tuple[int, str]] = []
    with serve(tmp_path / "svc", mosquitto.url, url, models, SENSORCAST_MQTT__CLIENT_ID="f-serve-outage",
               SENSORCAST_INGEST__TOPIC="fout/{device}/{quantity}") as sp:
        assert sp.wait_ready()["status"] == "ready"
        pub = Publisher(mosquitto.port, client_id="f-serve-outage-pub")
        t = run_in_thread(lambda: pub.publish(expected, rate=rate, topic="fout/{d}/{q}"))
        try:
            time.sleep(2)
            influxd.kill(signal.SIGKILL)
            t_end = time.monotonic() + OUTAGE_S
            while time.monotonic() < t_end:
                body = sp.ready()
                statuses.append((body["http_status"], body["status"]))
                time.sleep(0.5)
            during = sp.ready()
            spooled = sp.metric("sensorcast_spool_readings")
            influxd.start()
            t.join(OUTAGE_S + 60)
            pub.wait_acked()
            store = store_for(influxd.port, "sensorcast", tmp_path)
            got = wait_stored(store, expected, timeout=90)
            assert poll(lambda: sp.metric("sensorcast_spool_readings") == 0, 30)
            after = sp.wait_ready(30)
        finally:
            pub.close()
    assert "degraded" in {s for _, s in statuses}, statuses
    assert all(code == 200 for code, s in statuses if s == "degraded")  # still taking readings
    assert during["checks"]["store"]["degraded"] and "spooling durably" in during["checks"]["store"]["detail"]
    assert spooled > 0
    assert after["status"] == "ready" and after["http_status"] == 200
    assert got == by_key(expected)  # nothing lost, nothing doubled, values exact
    store.close()


def _post(sp: object, rs: list[Reading]) -> int:
    msgs = [{"topic": f"sensors/{r.stream.device}/{r.stream.quantity}", "payload": {"ts": r.ts_ns, "value": r.value}}
            for r in rs]
    resp = sp.http.post("/v1/readings", json={"messages": msgs})  # type: ignore[attr-defined]
    assert resp.status_code == 202, resp.text
    return int(resp.json()["accepted"])


def test_serve_sigkilled_restores_checkpoint_and_keeps_alerts_in_outbox(
    fresh_mosquitto: Callable[..., Mosquitto], influxd: Influxd, tmp_path: Path
) -> None:
    broker = fresh_mosquitto()
    models = kit_models(tmp_path / "models")
    url = f"influxdb://127.0.0.1:{influxd.port}/fsvckill"
    n_streams = 20
    start = (time.time_ns() // 10**9 - 3000) * 10**9
    warm = series(n_streams, 10, start)
    stream_part = series(n_streams, 300, start, first_step=10)
    env = {"SENSORCAST_MQTT__CLIENT_ID": "f-svc-kill", "SENSORCAST_STREAMS__CHECKPOINT_INTERVAL_S": "1",
           "SENSORCAST_ANOMALY__COOLDOWN_S": "0"}
    store = store_for(influxd.port, "fsvckill", tmp_path)
    with serve(tmp_path / "svc", broker.url, url, models, **env) as sp:
        # 1. Warm every stream, let a checkpoint happen.
        pub = Publisher(broker.port, client_id="f-svc-kill-pub")
        pub.publish(warm)
        pub.wait_acked()
        assert poll(lambda: len([s for s in sp.http.get("/v1/streams").json() if s["status"] == "ok"])
                        == n_streams, 30), sp.http.get("/v1/streams").text
        time.sleep(2.5)
        # 2. SIGKILL mid-stream, restart: every acknowledged reading lands once.
        t = run_in_thread(lambda: pub.publish(stream_part, rate=2000))
        time.sleep(1.0)
        sp.kill(signal.SIGKILL)
        time.sleep(0.5)
        sp.start()
        t.join(60)
        pub.wait_acked()
        pub.close()
        all_sent = warm + stream_part
        got = wait_stored(store, all_sent, timeout=60)
        assert got == by_key(all_sent)
        assert restored_counts(sp.tail(10**6))[-1] == n_streams, sp.tail()
        assert poll(lambda: all(s["status"] != "warming" for s in sp.http.get("/v1/streams").json()), 10)

        # 3. An alert emitted while the broker is down waits in the outbox, survives a
        #    SIGKILL of the service, and is published once the broker is back.
        broker.kill(signal.SIGKILL)
        last = max(r.ts_ns for r in all_sent)
        spikes = [Reading(StreamKey("dev000", "temp"), last + (k + 1) * CADENCE_NS, 1e4 if k % 2 == 0 else -1e4)
                  for k in range(6)]
        assert _post(sp, spikes) == len(spikes)
        firing = poll(lambda: sp.http.get("/v1/alerts", params={"state": "firing"}).json(), 20)
        assert firing, sp.http.get("/v1/streams/dev000/temp").text
        assert poll(lambda: "0 alert message" not in sp.ready()["checks"]["alerts"]["detail"], 10)
        outbox_detail = sp.ready()["checks"]["alerts"]["detail"]
        sp.kill(signal.SIGKILL)
        broker.start()
        sub = Subscriber(broker.port, "sensorcast/alerts/#", "f-svc-kill-sub")
        try:
            sp.start()
            got_alerts = poll(lambda: [m for _, m in sub.got() if m.get("state") == "firing"], 30)
            time.sleep(2)  # anything sent twice would have arrived by now
            firings = [m for _, m in sub.got() if m.get("state") == "firing"]
            pending = poll(lambda: "0 alert message" in sp.ready()["checks"]["alerts"]["detail"], 20)
        finally:
            sub.close()
    assert "alert message(s) in the outbox" in outbox_detail
    assert got_alerts, "the alert in the outbox was lost"
    assert {m["stream_id"] for m in firings} == {"dev000/temp"}
    assert len(firings) == len(firing)  # each firing once (QoS 1 would allow a resend; none happened)
    assert pending
    store.close()


def test_model_replaced_by_corrupt_or_mismatched_keeps_old_serving(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    models = kit_models(tmp_path / "models")
    folder = models / KIT.name / KIT.version
    good_onnx = (folder / "model.onnx").read_bytes()
    good_manifest = (folder / "manifest.json").read_bytes()
    # A valid model of another shape (wider state), its manifest made to claim our name.
    other = tmp_path / "other"
    write_model(other, KitSpec(name="kit", version="1", cadence_s=1.0, hidden=16, features=("temp",)))
    url = f"influxdb://127.0.0.1:{influxd.port}/fmodels"
    start = (time.time_ns() // 10**9 - 600) * 10**9
    import orjson

    def replace(onnx: bytes, sha_from: bytes | None) -> None:
        (folder / "model.onnx").write_bytes(onnx)
        if sha_from is not None:  # manifest updated to match the new file's hash
            from service.runtime.manifest import sha256_file

            man = orjson.loads(sha_from)
            man["sha256"] = sha256_file(folder / "model.onnx")
            (folder / "manifest.json").write_bytes(orjson.dumps(man))

    cases = {
        "half-copied (hash mismatch)": lambda: replace(good_onnx[: len(good_onnx) // 2], None),
        "corrupt bytes, hash updated": lambda: replace(b"\x00garbage" * 100, good_manifest),
        "mismatched graph (state size)": lambda: replace((other / "kit" / "1" / "model.onnx").read_bytes(),
                                                         good_manifest),
    }
    with serve(tmp_path / "svc", mosquitto.url, url, models, SENSORCAST_MQTT__CLIENT_ID="f-models",
               SENSORCAST_MODELS__WATCH="true") as sp:
        sha = sp.http.get("/v1/models").json()[0]["sha256"]
        step = 0
        for name, corrupt in cases.items():
            errors_before = sp.metric("sensorcast_model_errors_total")
            corrupt()
            assert poll(lambda b=errors_before: sp.metric("sensorcast_model_errors_total") > b, 15), name
            assert sp.http.get("/v1/models/refused").json().get("kit/1"), name  # the watcher's refusal
            reload = sp.http.post("/v1/models/reload").json()
            assert "kit/1" in reload["refused"] and reload["refused"]["kit/1"], (name, reload)
            listed = sp.http.get("/v1/models").json()
            assert [(m["name"], m["sha256"]) for m in listed] == [("kit", sha)], name
            # The old model still forecasts: a new reading steps the stream.
            _post(sp, series(1, 5, start, first_step=step))
            step += 5
            assert poll(lambda: (sp.http.get("/v1/streams/dev000/temp").json().get("status") == "ok"), 10), name
            assert sp.ready()["checks"]["models"]["ok"]
        log = sp.tail(10**6)
        # Put the good files back: the model is loaded again and errors clear.
        (folder / "model.onnx").write_bytes(good_onnx)
        (folder / "manifest.json").write_bytes(good_manifest)
        reload = sp.http.post("/v1/models/reload").json()
        refused_after = sp.http.get("/v1/models/refused").json()
    assert reload["refused"] == {} and refused_after == {}
    assert "does not match manifest" in log  # half-copied
    assert "onnxruntime cannot load the model" in log  # corrupt
    assert "state width 16, manifest says 8" in log  # mismatched
    assert log.count("model kit/1 refused") >= 3


def test_broker_sigkilled_under_serve_everything_stored_once_and_ready_again(
    fresh_mosquitto: Callable[..., Mosquitto], influxd: Influxd, tmp_path: Path
) -> None:
    """Readings published before the broker's SIGKILL, while it is down (held by the
    publisher's client) and after its restart are all stored exactly once, under the whole
    service; /readyz is 503 while the broker is gone and ready again after.

    Not asserted, because no client can prevent it: mosquitto acknowledges a QoS 1
    PUBLISH before it persists it (autosave), so a message it acknowledged in the instant
    before a SIGKILL and had not yet delivered is lost with the broker. Measured while
    streaming through the kill (docs/reliability.md): 0 lost in most runs, up to ~0.1 s
    of readings in some."""
    broker = fresh_mosquitto()
    models = kit_models(tmp_path / "models")
    url = f"influxdb://127.0.0.1:{influxd.port}/fsvcbroker"
    start = (time.time_ns() // 10**9 - 3000) * 10**9
    before, during, after = (series(20, 100, start, first_step=k * 100) for k in range(3))
    store = store_for(influxd.port, "fsvcbroker", tmp_path)
    with serve(tmp_path / "svc", broker.url, url, models, SENSORCAST_MQTT__CLIENT_ID="f-svc-broker") as sp:
        assert sp.wait_ready()["status"] == "ready"
        pub = Publisher(broker.port, client_id="f-svc-broker-pub")
        try:
            pub.publish(before, rate=2000)
            pub.wait_acked()
            assert len(wait_stored(store, before, timeout=30)) == len(before)
            time.sleep(1.5)  # the broker's 1 s autosave has both sessions
            broker.kill(signal.SIGKILL)
            down = poll(lambda: sp.ready()["http_status"] == 503, 10)
            pub.publish(during, rate=2000)  # queued by the publisher's client, sent on reconnect
            broker.start()
            pub.publish(after, rate=2000)
            pub.wait_acked(timeout=90)
            everything = before + during + after
            got = wait_stored(store, everything, timeout=60)
            ready_again = sp.wait_ready(30)
        finally:
            pub.close()
    assert down, "readyz should report the broker down"
    assert got == by_key(everything)  # every reading once, values exact
    assert ready_again["status"] == "ready" and ready_again["checks"]["alerts"]["ok"]
    assert ready_again["checks"]["broker"]["ok"]
    store.close()
