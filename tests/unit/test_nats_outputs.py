"""The subjects, message ids and KV keys alerts get on NATS (no server needed)."""

from __future__ import annotations

import re

import pytest

from service.config import Settings
from service.nats import outputs
from service.records import Alert, Forecast, StreamKey


def _alert(device: str, quantity: str = "temp", state: str = "firing", ts_ns: int = 5, **tags: str) -> Alert:
    return Alert(key=StreamKey(device, quantity, tuple(sorted(tags.items()))), quantity=quantity,
                 state=state, ts_ns=ts_ns, value=1.0, expected=0.0, lower=0.0,  # type: ignore[arg-type]
                 upper=0.5, score=3.0, model="m", model_version="1", warm=True)


def test_alerts_stream_captures_the_topics_fixed_levels_under_its_own_prefix() -> None:
    assert outputs.alert_subjects("sensorcast/alerts/{stream}") == "sensorcast.alerts.>"
    assert outputs.alert_subjects("site.a/alerts/{device}/{quantity}") == "site//a.alerts.>"
    with pytest.raises(ValueError, match="fixed first level"):
        outputs.alert_subjects("{stream}/alerts")
    s = Settings()  # type: ignore[call-arg]
    s.nats.stream = "X1"
    names = outputs.names_for(s)
    assert (names.alert_subjects, names.alert_prefix) == ("sc.X1.sensorcast.alerts.>", "sc.X1.")


@pytest.mark.parametrize(("topic", "subject"), [
    ("sensorcast/alerts/dev1/temp", "sensorcast.alerts.dev1.temp"),
    ("sensorcast/alerts/pump 1/temp", "sensorcast.alerts.pump%201.temp"),
    ("sensorcast/alerts/a*b/>", "sensorcast.alerts.a%2Ab.%3E"),
    ("sensorcast/alerts/v1.2/temp", "sensorcast.alerts.v1//2.temp"),  # NATS's MQTT spelling of '.'
])
def test_alert_topics_become_publishable_subjects(topic: str, subject: str) -> None:
    assert outputs.nats_subject(topic) == subject


def test_message_ids_are_per_event_and_the_same_on_a_replay() -> None:
    a = _alert("dev1")
    assert outputs.message_id(a) == outputs.message_id(_alert("dev1"))
    others = {outputs.message_id(x) for x in (_alert("dev1", state="resolved"), _alert("dev1", ts_ns=6),
                                              _alert("dev2"), _alert("dev1", site="a"))}
    assert outputs.message_id(a) not in others and len(others) == 4


def test_state_keys_are_valid_kv_keys_and_distinct() -> None:
    alerts = [_alert("dev1"), _alert("dev1", site="a/b"), _alert("pump 1"), _alert("ü*>"), _alert("dev1", "rpm")]
    keys = [outputs.state_key(a) for a in alerts]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[-/_=.a-zA-Z0-9]+", k) for k in keys), keys


def test_a_full_queue_drops_and_counts_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "ALERT_QUEUE_MAX", 2)
    monkeypatch.setattr(outputs, "FORECAST_QUEUE_MAX", 1)
    s = Settings()  # type: ignore[call-arg]
    s.nats.url = "nats://127.0.0.1:9"  # never connected: start() is not called
    s.alerts.forecast_topic = "f/{stream}"
    pub = outputs.NatsAlertPublisher(s.nats, s.alerts)
    for ts in (1, 2, 3):
        pub.publish_alert(_alert("dev1", ts_ns=ts))
    fc = Forecast(StreamKey("dev1", "temp"), 1, 60.0, ("temp",), ((1.0,),), None, "m", "1")
    pub.publish_forecast(fc, "dev1", "temp")
    pub.publish_forecast(fc, "dev1", "temp")
    assert (pub.dropped_alerts, pub.pending(), pub.dropped_forecasts) == (1, 2, 1)
    assert pub.flush(0.01) is False  # two still queued (and one lost)
    pub.stop(0)  # never started: releases the link's loop
