"""Alert payloads, topics, and the outbox's FIFO/ack/reopen behaviour (pure logic, SQLite)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from service.alerts.outbox import Outbox
from service.alerts.payload import alert_payload, forecast_payload, iso_time, topic_for
from service.records import Alert, Forecast, StreamKey

ALERT = Alert(StreamKey("pump-1", "temp", (("site", "n"),)), "temp", "firing", 1_700_000_000_123_456_789, 90.0,
              float("nan"), 18.0, 22.0, 0.999, "m", "1", True, {"feature": "temp"})


def test_payload_carries_every_alert_field_and_iso_time() -> None:
    body = orjson.loads(alert_payload(ALERT))
    # The key is written out as stream_id and device (with quantity); whether the stream
    # is multivariate shows in its id.
    fields = {f.name for f in dataclasses.fields(Alert)} - {"key", "multivariate"} | {"stream_id", "device"}
    assert fields <= set(body)
    assert (body["stream_id"], body["device"], body["quantity"]) == ("pump-1/temp;site=n", "pump-1", "temp")
    assert body["time"] == "2023-11-14T22:13:20.123456Z" and body["ts_ns"] == ALERT.ts_ns
    assert body["expected"] is None  # NaN is not JSON
    assert body["extra"] == {"feature": "temp"}


def test_topic_values_cannot_add_levels_or_wildcards() -> None:
    assert topic_for("a/{device}/{quantity}", "x/y+#", "t", "s") == "a/x%2Fy%2B%23/t"
    # {stream}: the id's one structural '/' stays a level; untagged it equals {device}/{quantity}.
    assert topic_for("s/{stream}", "d", "q", "d/q;k=v") == "s/d/q;k=v"
    key = StreamKey("d+1", "q")
    assert topic_for("s/{stream}", key.device, key.quantity, key.id) == topic_for("s/{device}/{quantity}", "d+1", "q", "")


def test_forecast_payload_times_follow_the_cadence() -> None:
    fc = Forecast(StreamKey("d", "q"), 0, 60.0, ("v",), ((1.0,), (2.0,)), None, "m", "1")
    body = orjson.loads(forecast_payload(fc))
    assert body["times"] == [iso_time(60 * 10**9), iso_time(120 * 10**9)] and body["scale"] is None


def test_outbox_is_fifo_acks_delete_and_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    ids = [box.put(f"t/{i}", b"%d" % i, 1, retain=i == 2) for i in range(4)]
    assert [e.topic for e in box.pending()] == ["t/0", "t/1", "t/2", "t/3"]
    assert [e.retain for e in box.pending()] == [False, False, True, False]
    assert [e.id for e in box.pending(after_id=ids[1])] == ids[2:]
    box.ack(ids[0])
    box.sync()
    box.close()
    again = Outbox(tmp_path)  # a new process after a crash
    assert [e.payload for e in again.pending()] == [b"1", b"2", b"3"] and len(again) == 3
    again.close()
