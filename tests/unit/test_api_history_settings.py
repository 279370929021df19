"""GET /v1/alerts from the persisted history (pages, cursors, filters) and the per-stream
settings routes (GET/PUT/DELETE /v1/streams/{id}/settings): engine twin, real stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import StreamRules
from service.records import Alert, StreamKey
from service.store.streamsettings import StreamSettings
from tests.apiharness import MIN, T0, Harness, harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


def _add(h: Harness, n: int, check: str = "stuck") -> None:
    for i in range(n):
        h.alert_log.append(Alert(
            StreamKey(f"dev{i % 3}", "t"), "t", "firing" if i % 2 else "resolved", T0 + (10 + i) * MIN,  # type: ignore[arg-type]
            1.0, 2.0, 0.0, 3.0, 0.5, "twin", "1", True, check=check, kind=check,
        ))
    assert h.alert_log.flush()


def test_alerts_are_paged_newest_first_with_a_cursor_and_link(h: Harness) -> None:
    _add(h, 12)
    seen, url = [], "/v1/alerts?limit=5&check=stuck"
    while url:
        r = h.client.get(url)
        assert r.status_code == 200 and len(r.json()) <= 5
        seen += [a["ts_ns"] for a in r.json()]
        nxt, link = r.headers.get("x-next-cursor"), r.headers.get("link")
        assert (nxt is None) == (link is None)
        if nxt is not None:
            assert link == f'</v1/alerts?limit=5&check=stuck&before={nxt}>; rel="next"'
        url = link[1 : link.index(">")] if link else ""
    assert seen == [T0 + (10 + i) * MIN for i in reversed(range(12))]
    # The dashboard's call: a plain list, the newest 50 of everything.
    everything = h.client.get("/v1/alerts?limit=50").json()
    assert len(everything) == 14 and everything[-1]["state"] == "firing" and everything[-1]["ts_ns"] == T0


def test_alert_filters_and_bad_parameters(h: Harness) -> None:
    _add(h, 6, check="silent")
    q = h.client.get
    assert {a["check"] for a in q("/v1/alerts", params={"check": "silent"}).json()} == {"silent"}
    one = q("/v1/alerts", params={"kind": "silent", "stream": "dev1/t", "state": "firing"}).json()
    assert [a["ts_ns"] for a in one] == [T0 + 11 * MIN]  # i = 1 of dev1's i = 1, 4
    assert [a["check"] for a in q("/v1/alerts", params={"until": "2023-11-14T22:20:00Z"}).json()] == ["anomaly"] * 2
    since = q("/v1/alerts", params={"since": "2023-11-14T22:27:20Z", "until": "2023-11-14T22:29:20Z"}).json()
    assert [a["ts_ns"] for a in since] == [T0 + 15 * MIN, T0 + 14 * MIN]
    for bad in ({"before": "%%%"}, {"before": "bm90LWEtY3Vyc29y"}, {"check": "nope"}, {"kind": "nope"},
                {"until": "2023-11-14T22:20:00"}, {"limit": 10_001}):
        r = q("/v1/alerts", params=bad)
        assert r.status_code == 422, (bad, r.text)


def test_alerts_without_a_history_are_503_without_the_path(h: Harness) -> None:
    log, h.pipeline.alert_log = h.pipeline.alert_log, None
    h.pipeline.history_error = f"cannot open the alert history {h.alert_log.path}: file is not a database"
    try:
        r = h.client.get("/v1/alerts")
        assert r.status_code == 503 and "could not be opened" in r.text and "sqlite" not in r.text
    finally:
        h.pipeline.alert_log = log


def test_put_get_delete_settings_of_a_served_stream(h: Harness, tmp_path: Path) -> None:
    url = "/v1/streams/pump-1/temperature/settings"
    before = h.client.get(url).json()
    assert before["known"] is True and before["own"] is None
    assert before["effective"]["features"]["value"]["max"] is None
    r = h.client.put(url, json={"max": 125.0, "upper": 90.0, "threshold": 0.999})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["own"]["max"] == 125.0 and body["own"]["threshold"] == 0.999
    assert body["effective"]["features"]["value"]["max"] == 125.0 and body["effective"]["threshold"] == 0.999
    assert h.engine.own_rules["pump-1/temperature"] == StreamRules(max=125.0, upper=90.0, threshold=0.999)  # live
    assert h.client.get(url).json() == body
    # Durable: a fresh open of the file has it.
    assert StreamSettings(tmp_path / "stream_settings.sqlite").get("pump-1/temperature") == StreamRules(
        max=125.0, upper=90.0, threshold=0.999)
    gone = h.client.delete(url)
    assert gone.status_code == 200 and gone.json()["own"] is None
    assert gone.json()["effective"]["features"]["value"]["max"] is None
    assert h.engine.own_rules["pump-1/temperature"] is None
    assert StreamSettings(tmp_path / "stream_settings.sqlite").get("pump-1/temperature") is None


def test_a_stream_not_seen_yet_can_be_configured_ahead(h: Harness) -> None:
    url = "/v1/streams/new-dev/flow;site=hq/settings"
    assert h.client.get(url).status_code == 404
    r = h.client.put(url, json={"stuck_steps": 10})
    assert r.status_code == 200 and r.json() == {
        "stream_id": "new-dev/flow;site=hq", "known": False, "own": {**_NONE, "stuck_steps": 10}, "effective": None}
    assert h.client.get(url).json()["own"]["stuck_steps"] == 10
    assert h.stream_settings.get("new-dev/flow;site=hq") == StreamRules(stuck_steps=10)
    assert h.client.put("/v1/streams/pump-7;line=2/settings", json={"max": 3.0}).status_code == 200  # device stream


_NONE = {name: None for name in StreamRules.model_fields}


@pytest.mark.parametrize(("body", "where", "says"), [
    ({"threshold": 2.0}, ["body", "threshold"], "less than 1"),
    ({"stuck_steps": -1}, ["body", "stuck_steps"], "greater than or equal to 0"),
    ({"maximum": 3.0}, ["body", "maximum"], "Extra inputs are not permitted"),
    ({"max": "hot"}, ["body", "max"], "valid number"),
])
def test_invalid_rules_are_422_saying_where_and_what(h: Harness, body: dict[str, object], where: list[str], says: str) -> None:
    r = h.client.put("/v1/streams/pump-1/temperature/settings", json=body)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == where and says in err["msg"]
    assert h.stream_settings.get("pump-1/temperature") is None and "pump-1/temperature" not in h.engine.own_rules


@pytest.mark.parametrize(("body", "says"), [
    ({"min": 5.0, "max": 5.0}, "min (5.0) must be below max (5.0)"),
    ({"lower": 9.0, "upper": 1.0}, "lower (9.0) must be below upper (1.0)"),
    ({"features": {"pressure": {"max": 1.0}}}, "features.pressure: the stream's model has no input feature 'pressure'"),
    ({"features": {"value": {"min": 3.0, "max": 1.0}}}, "features.value.min (3.0) must be below features.value.max"),
])
def test_rules_that_contradict_themselves_or_the_model_are_422(h: Harness, body: dict[str, object], says: str) -> None:
    r = h.client.put("/v1/streams/pump-1/temperature/settings", json=body)
    assert r.status_code == 422 and says in r.json()["detail"], r.text
    assert h.stream_settings.get("pump-1/temperature") is None


@pytest.mark.parametrize("bad", ["a/b/c", "a/b;z=1;a=2", "dev%2x/t"])
def test_a_path_that_is_not_a_stream_id_is_422(h: Harness, bad: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        r = h.client.request(method, f"/v1/streams/{bad}/settings", json={"max": 1.0} if method == "PUT" else None)
        assert r.status_code == 422 and "stream id" in r.json()["detail"], (method, r.text)
    assert h.stream_settings.all() == {}


def test_rules_the_engine_refuses_are_not_kept(h: Harness) -> None:
    url = "/v1/streams/pump-1/temperature/settings"
    assert h.client.put(url, json={"max": 10.0}).status_code == 200
    h.engine.refuse_rules = "the model cannot take these rules"
    r = h.client.put(url, json={"max": 20.0})
    assert r.status_code == 422 and r.json()["detail"] == "the model cannot take these rules"
    assert h.stream_settings.get("pump-1/temperature") == StreamRules(max=10.0)  # the previous rules stay
