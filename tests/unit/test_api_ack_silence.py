"""Acknowledge alerts (POST /v1/alerts/{id}/ack) and silence streams (PUT/GET/DELETE
/v1/streams/{id}/silence): the routes on the real SQLite files, persistence across a
reopen, and what Pipeline.on_alert does with a silenced stream's alert."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.routes.silence import parse_until
from service.config import Settings
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.records import Alert, StreamKey
from service.store.alertlog import AlertLog
from service.store.streamsettings import StreamSettings
from tests.apiharness import T0, Harness, harness

NS = 1_000_000_000
STREAM = "pump-1/temperature"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


def _alert(ts_ns: int = T0, device: str = "pump-1", state: str = "firing") -> Alert:
    return Alert(StreamKey(device, "temperature"), "temperature", state, ts_ns, 90.0, 20.0, 18.0, 22.0,  # type: ignore[arg-type]
                 9.5, "twin", "1", True)


def test_alerts_carry_ids_and_an_ack_is_kept_and_idempotent(h: Harness) -> None:
    items = h.client.get("/v1/alerts").json()
    assert [a["id"] for a in items] == [2, 1]  # newest first; the history's row ids
    assert all(a["acked_at"] is None and a["acked_by"] is None and a["silenced"] is False for a in items)
    r = h.client.post("/v1/alerts/1/ack", json={"by": "ops", "note": "valve replaced"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["id"] == 1 and first["stream_id"] == STREAM and first["state"] == "firing"
    assert first["acked_by"] == "ops" and first["ack_note"] == "valve replaced" and first["acked_at"]
    # Again, by someone else: the first ack stands.
    again = h.client.post("/v1/alerts/1/ack", json={"by": "someone else"}).json()
    assert again == first
    assert h.client.post("/v1/alerts/2/ack").status_code == 200  # no body: an anonymous ack
    listed = {a["id"]: a for a in h.client.get("/v1/alerts").json()}
    assert listed[1]["acked_by"] == "ops" and listed[1]["acked_at"] == first["acked_at"]
    assert listed[2]["acked_at"] is not None and listed[2]["acked_by"] is None
    h.alert_log.append(_alert(T0 + 10 * NS))
    assert h.alert_log.flush()
    assert [a["id"] for a in h.client.get("/v1/alerts?acked=false").json()] == [3]
    assert [a["id"] for a in h.client.get("/v1/alerts?acked=true").json()] == [2, 1]


def test_ack_of_an_unknown_or_invalid_id(h: Harness) -> None:
    r = h.client.post("/v1/alerts/99/ack")
    assert r.status_code == 404 and "99" in r.json()["detail"]
    for bad in ("0", "-1", "abc", str(2**63)):
        assert h.client.post(f"/v1/alerts/{bad}/ack").status_code == 422, bad
    assert h.client.post("/v1/alerts/1/ack", json={"by": "x" * 201}).status_code == 422


def test_ack_needs_the_write_key(tmp_path: Path) -> None:
    (tmp_path / "w").write_text("write-key-123")
    (tmp_path / "r").write_text("read-key-456")
    with harness(tmp_path, api_key_file=tmp_path / "w", read_key_file=tmp_path / "r") as h:
        assert h.client.post("/v1/alerts/1/ack").status_code == 401
        assert h.client.post("/v1/alerts/1/ack", headers={"X-API-Key": "read-key-456"}).status_code == 403
        put = h.client.put(f"/v1/streams/{STREAM}/silence", params={"until": str(time.time() + 60)},
                           headers={"X-API-Key": "read-key-456"})
        assert put.status_code == 403
        assert h.client.post("/v1/alerts/1/ack", headers={"X-API-Key": "write-key-123"}).status_code == 200


def test_silence_put_get_delete_and_stream_status(h: Harness) -> None:
    url = f"/v1/streams/{STREAM}/silence"
    assert h.client.get(url).status_code == 404
    assert h.client.get(f"/v1/streams/{STREAM}").json()["silenced_until"] is None
    until = int(time.time()) + 3600
    r = h.client.put(url, params={"until": str(until), "reason": "pump maintenance"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stream_id"] == STREAM and body["reason"] == "pump maintenance"
    assert body["until"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(until)))
    assert h.client.get(url).json() == body
    status = h.client.get(f"/v1/streams/{STREAM}").json()
    assert status["silenced_until"] == body["until"]
    listed = {s["id"]: s["silenced_until"] for s in h.client.get("/v1/streams").json()}
    assert listed == {STREAM: body["until"], "pump-2/temperature;site=north": None}
    # ISO 8601 with a zone replaces it.
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(until + 60))
    assert h.client.put(url, params={"until": iso}).json()["reason"] is None
    assert h.client.delete(url).status_code == 204
    assert h.client.delete(url).status_code == 204  # idempotent
    assert h.client.get(url).status_code == 404
    assert h.client.get(f"/v1/streams/{STREAM}").json()["silenced_until"] is None
    # A stream not served yet may be silenced ahead; not a stream id is refused.
    assert h.client.put("/v1/streams/later/x/silence", params={"until": str(until)}).status_code == 200
    assert h.client.put("/v1/streams/a;b/x/silence", params={"until": str(until)}).status_code == 422


@pytest.mark.parametrize("until, says", [
    ("yesterday", "neither ISO 8601"), ("2020-01-01T00:00:00Z", "in the past"), ("1000", "in the past"),
    ("2030-01-01T00:00:00", "time zone"), ("1e400", "out of range"), ("nan", "neither"),
    (str(int(time.time()) + 400 * 86_400), "days ahead"), ("", "neither"),
])
def test_bad_until_is_a_clear_422(h: Harness, until: str, says: str) -> None:
    r = h.client.put(f"/v1/streams/{STREAM}/silence", params={"until": until})
    assert r.status_code == 422 and says in r.json()["detail"], r.text
    assert h.client.get(f"/v1/streams/{STREAM}/silence").status_code == 404


def test_parse_until_forms() -> None:
    now = 1_800_000_000 * NS
    assert parse_until("1800000060", now) == 1_800_000_060 * NS
    assert parse_until("1800000060.5", now) == 1_800_000_060_500_000_000
    assert parse_until("2027-01-15T09:00:00Z", now) == now + 3600 * NS  # now is 2027-01-15T08:00:00Z
    assert parse_until("2027-01-15T11:00:00+02:00", now) == now + 3600 * NS
    assert parse_until(" 2027-01-15T09:00:00.25+00:00 ", now) == now + 3600 * NS + 250_000_000
    with pytest.raises(ValueError, match="in the past"):
        parse_until("2027-01-15T08:00:00Z", now)


class _Publisher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def publish_alert(self, alert: Alert, event: bool = True) -> None:
        self.calls.append((alert.stream_id, event))


def test_on_alert_of_a_silenced_stream_records_but_does_not_notify(tmp_path: Path) -> None:
    history = AlertLog(tmp_path / "a.sqlite")
    rules = StreamSettings(tmp_path / "s.sqlite")
    pub = _Publisher()
    pipe = Pipeline(Settings(), Metrics(), alert_log=history, stream_settings=rules, publisher=pub)  # type: ignore[arg-type]
    seen: list[str] = []
    notified: list[str] = []
    pipe.alert_sinks.append(("seen", lambda a: seen.append(a.stream_id)))
    pipe.notify_sinks.append(("notified", lambda a: notified.append(a.stream_id)))
    try:
        rules.silence(STREAM, time.time_ns() + 3600 * NS)
        pipe.on_alert(_alert(T0))
        pipe.on_alert(_alert(T0 + NS, device="pump-9"))
        rules.unsilence(STREAM)
        pipe.on_alert(_alert(T0 + 2 * NS, state="resolved"))
        assert history.flush()
        rows, _ = history.rows(10)
        assert [(r.alert.stream_id, r.silenced) for r in reversed(rows)] == [
            (STREAM, True), ("pump-9/temperature", False), (STREAM, False)]
        assert seen == [STREAM, "pump-9/temperature", STREAM]
        assert notified == ["pump-9/temperature", STREAM]
        # The state topic still updates while silenced: event=False, not skipped.
        assert pub.calls == [(STREAM, False), ("pump-9/temperature", True), (STREAM, True)]
    finally:
        history.close()
        rules.close()
