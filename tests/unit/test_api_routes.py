"""Every API route: answers, status codes, validation, body limit (engine twin, real ingester)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiharness import MIN, T0, Harness, harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


def test_healthz(h: Harness) -> None:
    assert h.client.get("/healthz").json() == {"status": "ok"}


def test_streams_list_and_filter(h: Harness) -> None:
    r = h.client.get("/v1/streams")
    assert r.status_code == 200
    ids = {s["id"] for s in r.json()}
    assert ids == {"pump-1/temperature", "pump-2/temperature;site=north"}
    only = h.client.get("/v1/streams", params={"status": "warming"}).json()
    assert [s["id"] for s in only] == ["pump-2/temperature;site=north"]
    assert h.client.get("/v1/streams", params={"status": "bogus"}).status_code == 422


def test_streams_are_listed_in_pages(h: Harness) -> None:
    from tests.apitwin import TwinStatus

    for i in range(5):
        sid = f"p{i}/t"
        h.engine.statuses[sid] = TwinStatus(sid, f"p{i}", "t", "twin", "1", "ok", 5, 5, T0, 1.0, 0.1, 1.0, 0.0, 2.0)
    ids, url, pages = [], "/v1/streams?limit=3&status=ok", 0
    while url:
        r = h.client.get(url)
        assert r.status_code == 200 and len(r.json()) <= 3
        ids += [s["id"] for s in r.json()]
        pages += 1
        nxt = r.headers.get("x-next-cursor")
        link = r.headers.get("link")
        assert (nxt is None) == (link is None)
        if nxt is not None:  # the Link header is the same request with the cursor
            assert link == f'</v1/streams?limit=3&status=ok&cursor={nxt}>; rel="next"'
            assert h.client.get("/v1/streams", params={"limit": 3, "status": "ok", "cursor": nxt}).json() == \
                h.client.get(link[1 : link.index(">")]).json()
        url = link[1 : link.index(">")] if link else ""
    assert ids == ["p0/t", "p1/t", "p2/t", "p3/t", "p4/t", "pump-1/temperature"] and pages == 2
    assert h.client.get("/v1/streams").headers.get("x-next-cursor") is None  # default limit: one page here
    for bad in ({"cursor": "%%%"}, {"cursor": "_w"}, {"limit": 0}, {"limit": 10_001}):
        r = h.client.get("/v1/streams", params=bad)
        assert r.status_code == 422, (bad, r.text)


def test_stream_by_id_with_slash_and_tags(h: Harness) -> None:
    s = h.client.get("/v1/streams/pump-1/temperature").json()
    assert s["status"] == "ok" and s["last_value"] == 21.0 and s["score"] == 0.5
    assert s["warm_up"] == {"have": 5, "need": 5, "message": "ready"}
    w = h.client.get("/v1/streams/pump-2/temperature;site=north").json()
    assert w["warm_up"]["message"] == "warming up (2 / 5)"
    assert w["last_value"] is None  # NaN is not JSON: sent as null


def test_unknown_stream_is_404(h: Harness) -> None:
    r = h.client.get("/v1/streams/nope/none")
    assert r.status_code == 404 and "nope/none" in r.json()["detail"]
    assert h.client.get("/v1/streams/nope/none/forecast").status_code == 404


def test_forecast_with_bands(h: Harness) -> None:
    f = h.client.get("/v1/streams/pump-1/temperature/forecast").json()
    assert f["mean"] == [[21.0], [21.5], [22.0]]
    assert f["band_z"] == 1.96
    assert f["lower"][1][0] == pytest.approx(21.5 - 1.96 * 2.0)
    assert f["upper"][2][0] == pytest.approx(22.0 + 1.96 * 3.0)
    assert f["times"][0] == "2023-11-14T22:14:20Z"  # one cadence after made_at
    f2 = h.client.get("/v1/streams/pump-1/temperature/forecast", params={"z": 1}).json()
    assert f2["upper"][0][0] == pytest.approx(22.0)


def test_forecast_while_warming_is_409_with_progress(h: Harness) -> None:
    r = h.client.get("/v1/streams/pump-2/temperature;site=north/forecast")
    assert r.status_code == 409 and "warming up (2 / 5)" in r.json()["detail"]


def _predict_body(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "twin", "values": [[20.0], [None], [21.0]], "timestamps_ns": [T0, T0 + MIN, T0 + 2 * MIN]
    }
    body.update(kw)
    return body


def test_predict_ok(h: Harness) -> None:
    r = h.client.post("/v1/predict", json=_predict_body())
    assert r.status_code == 200, r.text
    assert r.json()["mean"] == [[21.0], [21.0], [21.0]] and r.json()["stream_id"] is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_predict_body(values=[[1.0], [2.0, 3.0], [4.0]]), "row widths"),
        (_predict_body(values=[[], [], []]), "values"),
        (_predict_body(timestamps_ns=[T0, T0 + MIN]), "must match"),
        (_predict_body(timestamps_ns=[T0, T0, T0 + MIN]), "strictly increasing"),
        (_predict_body(values=[[1.0, 2.0]] * 3), "expects 1"),  # engine's ValueError
        (_predict_body(values=[[1e39], [1.0], [2.0]]), "float32"),
        (_predict_body(extra=1), "extra"),
        (_predict_body(values=[]), "values"),
    ],
)
def test_predict_bad_input_is_422(h: Harness, body: dict[str, object], needle: str) -> None:
    r = h.client.post("/v1/predict", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.text


def test_predict_work_is_capped(tmp_path: Path) -> None:
    with harness(tmp_path, predict_max_steps=3, predict_max_values=5) as hh:
        assert hh.client.post("/v1/predict", json=_predict_body()).status_code == 200  # 3 steps, 3 values
        r = hh.client.post("/v1/predict", json=_predict_body(values=[[1.0]] * 4, timestamps_ns=[T0 + i * MIN for i in range(4)]))
        assert r.status_code == 413 and "4 steps" in r.json()["detail"] and "api.predict_max_steps" in r.json()["detail"]
        r = hh.client.post("/v1/predict", json=_predict_body(values=[[1.0, 2.0]] * 3))
        assert r.status_code == 413 and "6 values" in r.json()["detail"] and "api.predict_max_values" in r.json()["detail"]


def test_predict_nan_literal_is_422(h: Harness) -> None:
    raw = b'{"model": "twin", "values": [[NaN], [1.0]], "timestamps_ns": [1, 2]}'
    r = h.client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_predict_unknown_model_is_404(h: Harness) -> None:
    assert h.client.post("/v1/predict", json=_predict_body(model="nope")).status_code == 404


def test_malformed_json_is_422(h: Harness) -> None:
    r = h.client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_readings_go_through_decoder_and_durable_path(h: Harness) -> None:
    body = {"messages": [
        {"topic": "sensors/pump-9/temperature", "payload": {"value": 20.5, "ts": T0}},
        {"topic": "sensors/pump-9/temperature", "payload": "21.5"},
        {"topic": "sensors/pump-9/temperature", "payload": {"value": "hot"}},
        {"topic": "wrong/topic", "payload": 1},
    ]}
    r = h.client.post("/v1/readings", json=body)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["accepted"] == 2
    assert [x["index"] for x in out["refused"]] == [2, 3]
    stored = h.store.read_last(h.store.streams()[0], 10)
    assert [x.value for x in stored] == [20.5, 21.5]  # durable before the answer
    assert [x.value for x in h.engine.accepted] == [20.5, 21.5]  # and fed to the engine
    metrics = h.client.get("/metrics").text
    assert 'sensorcast_readings_in_total{source="http"} 2.0' in metrics
    assert "sensorcast_readings_refused_total" in metrics


def test_readings_all_refused_still_answers(h: Harness) -> None:
    r = h.client.post("/v1/readings", json={"messages": [{"topic": "sensors/a/b", "payload": "x y z"}]})
    assert r.status_code == 202 and r.json()["accepted"] == 0 and r.json()["refused"]


def test_readings_empty_list_is_422(h: Harness) -> None:
    assert h.client.post("/v1/readings", json={"messages": []}).status_code == 422


def test_alerts_filters(h: Harness) -> None:
    all_ = h.client.get("/v1/alerts").json()
    assert [a["state"] for a in all_] == ["resolved", "firing"]  # newest first
    assert [a["state"] for a in h.client.get("/v1/alerts", params={"state": "firing"}).json()] == ["firing"]
    assert h.client.get("/v1/alerts", params={"stream": "x/y"}).json() == []
    since = h.client.get("/v1/alerts", params={"since": "2023-11-14T22:14:00Z"}).json()
    assert [a["state"] for a in since] == ["resolved"]
    assert h.client.get("/v1/alerts", params={"since": "2023-11-14T22:14:00"}).status_code == 422
    assert h.client.get("/v1/alerts", params={"limit": 0}).status_code == 422


def test_models_and_reload(h: Harness) -> None:
    models = h.client.get("/v1/models").json()
    assert [(m["name"], m["version"], m["horizon"]) for m in models] == [("twin", "1", 3)]
    r = h.client.post("/v1/models/reload").json()
    assert r == {"loaded": ["twin/1"], "refused": {"bad/2": "SHA-256 mismatch"}}
    assert h.engine.reloads == 1


def test_readyz_reports_each_check(h: Harness) -> None:
    r = h.client.get("/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["store"]["ok"] and checks["models"]["ok"]
    h.engine.manifests.clear()
    r = h.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["models"] == {"ok": False, "detail": "no model loaded", "degraded": False}


def test_metrics_has_stream_gauges(h: Harness) -> None:
    text = h.client.get("/metrics").text
    assert 'sensorcast_streams{status="warming"} 1.0' in text
    assert 'sensorcast_streams{status="ok"} 1.0' in text
    assert "sensorcast_alert_outbox_messages 0.0" in text


def test_body_over_limit_is_413(h: Harness) -> None:
    big = {"messages": [{"topic": "sensors/a/b", "payload": "1" * 70_000}]}
    r = h.client.post("/v1/readings", json=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_chunked_body_over_limit_is_413(h: Harness) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"topic": "sensors/a/b", "payload": "'
        for _ in range(100):
            yield b"1" * 1000
        yield b'"}]}'

    r = h.client.post("/v1/readings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unexpected_error_is_500_without_details(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("secret-token-123 leaked?")

    monkeypatch.setattr(h.engine, "streams_page", boom)
    r = h.client.get("/v1/streams")
    assert r.status_code == 500 and "secret-token-123" not in r.text


def test_readings_payload_that_cannot_be_encoded_is_refused(h: Harness) -> None:
    body = {"messages": [{"topic": "sensors/a/b", "payload": {"value": 2**70}},
                         {"topic": "sensors/a/b", "payload": 3.5}]}
    r = h.client.post("/v1/readings", json=body)
    assert r.status_code == 202
    assert r.json()["accepted"] == 1 and r.json()["refused"][0]["reason"] == "bad_json"


def test_roles_without_inference_or_ingest_answer_503(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings
    from service.metrics import Metrics
    from service.pipeline import Pipeline

    settings = Settings(roles="api")  # type: ignore[call-arg]
    pipeline = Pipeline(settings, Metrics())
    pipeline.start()
    with TestClient(create_app(settings, pipeline=pipeline)) as client:
        r = client.get("/v1/streams")
        assert r.status_code == 503 and "'inference' role" in r.json()["detail"]
        r = client.post("/v1/readings", json={"messages": [{"topic": "sensors/a/b", "payload": 1}]})
        assert r.status_code == 503 and "'ingest' role" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_unknown_role_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match=r"roles: \['training'\] not understood"):
        Settings(roles="api,training")  # type: ignore[call-arg]
    assert Settings(roles=" ingest , api ").roles == {"ingest", "api"}  # type: ignore[call-arg]
    monkeypatch.setenv("SENSORCAST_ROLES", "inference,api")  # text, not JSON, in the environment
    assert Settings().roles == {"inference", "api"}  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="roles: none given"):
        Settings(roles=" , ")  # type: ignore[call-arg]


@pytest.mark.parametrize("busy", [False, True], ids=["lock-free", "locked-fallback"])
def test_forecast_answers_alike_on_both_read_paths(h: Harness, busy: bool) -> None:
    h.engine.busy = busy  # True: the lock-free read overlapped writes, the route asks under the lock
    f = h.client.get("/v1/streams/pump-1/temperature/forecast").json()
    assert f["mean"] == [[21.0], [21.5], [22.0]]
    r = h.client.get("/v1/streams/pump-2/temperature;site=north/forecast")
    assert r.status_code == 409 and "warming up (2 / 5)" in r.json()["detail"]
    assert h.client.get("/v1/streams/nope/none/forecast").status_code == 404


def test_delete_forgets_the_stream_and_the_unit_its_readings_gave(h: Harness) -> None:
    from service.records import StreamKey

    h.pipeline.units.seen(StreamKey("pump-1", "temperature"), "°C")
    assert h.client.get("/v1/streams/pump-1/temperature").json()["unit"] == "°C"
    assert h.client.delete("/v1/streams/pump-1/temperature").status_code == 204
    assert h.client.get("/v1/streams/pump-1/temperature").status_code == 404
    assert h.pipeline.units.unit_of("pump-1/temperature") is None  # a new stream learns its unit again
    assert h.client.delete("/v1/streams/pump-1/temperature").status_code == 404
