"""Webhooks against a real HTTP server on 127.0.0.1 (tests/webhookreceiver.py): signature, retries,
a receiver that is down or slow, 4xx, and the outbox across a restart of the sender."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.alerts.payload import alert_dict
from service.alerts.webhook import Webhooks, event_id, url_label, verify
from service.alerts.webhook_outbox import WebhookOutbox
from service.config import Settings, WebhookSettings
from service.errors import ConfigError
from service.metrics import Metrics
from service.records import Alert, StreamKey
from tests.waiting import wait_until
from tests.webhookreceiver import Receiver, Request
from tools.localservers import free_port

FIRING = Alert(StreamKey("pump-1", "temp"), "temp", "firing", 1_700_000_000_123_456_789, 90.0, 20.0, 18.0, 22.0,
               0.999, "m", "1", True, {"feature": "temp"}, kind="spike")
RESOLVED = dataclasses.replace(FIRING, state="resolved", ts_ns=FIRING.ts_ns + 10**9, value=20.5, score=0.1)
SECRET = b"s3cret-key"


@pytest.fixture
def hooks_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Webhooks] = []

    def make(urls: list[str], metrics: Metrics | None = None, **kw: Any) -> Webhooks:
        secret = tmp_path / "webhook.key"
        secret.write_bytes(SECRET + b"\n")  # a trailing newline, as editors leave it, is not part of the key
        cfg = {"secret_file": secret, "outbox_path": tmp_path / "webhooks.sqlite", "backoff_s": 0.05,
               "backoff_max_s": 0.2, "timeout_s": 5.0, **kw}
        hooks = Webhooks(WebhookSettings(urls=urls, **cfg), metrics or Metrics())
        made.append(hooks)
        return hooks

    yield make
    for h in made:
        if h._threads:
            h.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def sample(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_the_request_is_the_alert_signed_over_timestamp_and_raw_body(hooks_factory: Any, receiver: Receiver) -> None:
    m = Metrics()
    hooks = hooks_factory([receiver.url("/hook?token=abc")], m)
    hooks.start()
    hooks.enqueue(FIRING)
    wait_until(lambda: receiver.requests, what="the webhook")
    (req,) = receiver.requests
    assert req.path == "/hook?token=abc" and req.headers["content-type"] == "application/json"
    body = req.json()
    assert {k: v for k, v in body.items() if k not in ("event_id", "emitted_time")} == _jsonish(alert_dict(FIRING))
    assert body["event_id"] == req.headers["x-sensorcast-event"] == event_id(FIRING)
    assert body["emitted_time"].endswith("Z")
    ts, sig = req.headers["x-sensorcast-timestamp"], req.headers["x-sensorcast-signature"]
    # What a receiver does (docs/api.md): HMAC-SHA256 over "<timestamp>.<raw body>", stdlib only.
    expected = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig, expected)
    assert verify(SECRET, ts, req.body, sig)
    assert not verify(SECRET, ts, req.body.replace(b"90.0", b"91.0"), sig)  # a changed body
    assert not verify(SECRET, str(int(ts) + 1), req.body, sig)  # a new timestamp on an old signature
    assert not verify(SECRET, ts, req.body, sig, now=int(ts) + 3600)  # a replay an hour later
    assert not verify(b"other", ts, req.body, sig)
    docs_verify = _docs_snippet()
    headers = {"X-Sensorcast-Timestamp": ts, "X-Sensorcast-Signature": sig}
    assert docs_verify(SECRET, headers, req.body) and not docs_verify(SECRET, headers, req.body + b" ")
    wait_until(lambda: sample(m, "sensorcast_webhooks_sent_total") == 1, what="counted")
    assert sample(m, "sensorcast_webhooks_pending") == 0 and hooks.pending() == 0


def _docs_snippet() -> Any:
    """The verification code docs/api.md gives receivers, run as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    (code,) = re.findall(r"```python\n(import hashlib, hmac, time\n.*?)```", text, re.S)
    scope: dict[str, Any] = {}
    exec(code, scope)  # the docs' own text, nothing from outside the repository
    return scope["verify"]


def _jsonish(d: dict[str, Any]) -> dict[str, Any]:
    import orjson

    return dict(orjson.loads(orjson.dumps(d)))


def test_5xx_and_429_are_retried_with_the_same_event_until_a_2xx(hooks_factory: Any) -> None:
    answers = iter([(500, {}), (429, {"Retry-After": "0"}), (503, {}), (200, {})])
    r = Receiver(respond=lambda _req: next(answers))
    try:
        m = Metrics()
        hooks = hooks_factory([r.url()], m)
        hooks.start()
        hooks.enqueue(FIRING)
        wait_until(lambda: sample(m, "sensorcast_webhooks_sent_total") == 1, what="delivered after retries")
        assert [q.headers["x-sensorcast-attempt"] for q in r.requests] == ["1", "2", "3", "4"]
        assert {q.headers["x-sensorcast-event"] for q in r.requests} == {event_id(FIRING)}
        assert sample(m, "sensorcast_webhooks_retries_total") == 3
        assert hooks.pending() == 0 and sample(m, "sensorcast_webhooks_pending") == 0
    finally:
        r.close()


def test_a_receiver_that_is_down_gets_the_alert_when_back_and_others_are_not_held(hooks_factory: Any,
                                                                                  receiver: Receiver) -> None:
    port = free_port()  # nothing listens here yet: connection refused
    m = Metrics()
    hooks = hooks_factory([f"http://127.0.0.1:{port}/hook", receiver.url()], m)
    hooks.start()
    hooks.enqueue(FIRING)
    wait_until(lambda: receiver.requests, what="the receiver that is up")
    wait_until(lambda: sample(m, "sensorcast_webhooks_retries_total") >= 2, what="retries to the one down")
    assert hooks.pending() == 1
    back = Receiver(port=port)
    try:
        wait_until(lambda: back.requests, what="the alert after the receiver came back")
        assert back.requests[0].json()["event_id"] == event_id(FIRING)
        wait_until(lambda: hooks.pending() == 0, what="the outbox emptied")
    finally:
        back.close()


def test_undelivered_events_survive_a_restart_of_the_sender_in_order(hooks_factory: Any, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    first = hooks_factory([url], Metrics())
    first.start()
    first.enqueue(FIRING)
    first.enqueue(RESOLVED)
    wait_until(lambda: (e := first.outbox.oldest(url)) is not None and e.attempts >= 1, what="a failed attempt")
    first.stop()
    reopened = WebhookOutbox(tmp_path / "webhooks.sqlite")
    assert reopened.count(url) == 2
    reopened.close()
    back = Receiver(port=port)
    try:
        m = Metrics()
        second = hooks_factory([url], m)
        assert sample(m, "sensorcast_webhooks_pending") == 2
        second.start()
        wait_until(lambda: len(back.requests) == 2, what="both events after the restart")
        assert [q.json()["state"] for q in back.requests] == ["firing", "resolved"]
        assert [q.headers["x-sensorcast-event"] for q in back.requests] == [event_id(FIRING), event_id(RESOLVED)]
        assert int(back.requests[0].headers["x-sensorcast-attempt"]) >= 2  # failed attempts are kept on disk
        wait_until(lambda: second.pending() == 0, what="outbox emptied")
    finally:
        back.close()


def test_4xx_is_dropped_logged_and_counted_and_does_not_hold_the_next(hooks_factory: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    def respond(req: Request) -> tuple[int, dict[str, str]]:
        return (401, {}) if req.json()["state"] == "firing" else (202, {})

    r = Receiver(respond=respond)
    try:
        m = Metrics()
        hooks = hooks_factory([r.url("/hook?token=secret-token")], m)
        hooks.start()
        hooks.enqueue(FIRING)
        hooks.enqueue(RESOLVED)
        wait_until(lambda: sample(m, "sensorcast_webhooks_sent_total") == 1, what="the next event delivered")
        assert [q.json()["state"] for q in r.requests] == ["firing", "resolved"]  # the 401 was not retried
        assert sample(m, "sensorcast_webhooks_failed_total", reason="rejected") == 1
        assert sample(m, "sensorcast_webhooks_retries_total") == 0 and hooks.pending() == 0
        dropped = [rec.getMessage() for rec in caplog.records if "dropped" in rec.getMessage()]
        assert dropped and "HTTP 401" in dropped[0]
        assert all("secret-token" not in rec.getMessage() for rec in caplog.records)  # the URL's token is not logged
    finally:
        r.close()


def test_a_slow_receiver_does_not_hold_up_the_sink(hooks_factory: Any) -> None:
    gate = threading.Event()
    r = Receiver(gate=gate)
    try:
        hooks = hooks_factory([r.url()], Metrics(), timeout_s=30.0)
        hooks.start()
        hooks.enqueue(FIRING)
        wait_until(lambda: r.arrived, what="the first request in flight")
        # The receiver holds the first request: the sink still takes the next events at once.
        done = threading.Event()

        def engine() -> None:
            hooks.enqueue(RESOLVED)
            hooks.enqueue(dataclasses.replace(FIRING, ts_ns=FIRING.ts_ns + 5 * 10**9))
            done.set()

        threading.Thread(target=engine, daemon=True).start()
        assert done.wait(10), "enqueue waited for the receiver"
        assert not gate.is_set() and r.requests == [] and hooks.pending() == 3
        gate.set()
        wait_until(lambda: len(r.requests) == 3, what="all three once the receiver answers")
        assert [q.json()["state"] for q in r.requests] == ["firing", "resolved", "firing"]
    finally:
        gate.set()
        r.close()


def test_give_up_after_max_attempts(hooks_factory: Any) -> None:
    r = Receiver(respond=lambda _req: (502, {}))
    try:
        m = Metrics()
        hooks = hooks_factory([r.url()], m, max_attempts=3)
        hooks.start()
        hooks.enqueue(FIRING)
        wait_until(lambda: sample(m, "sensorcast_webhooks_failed_total", reason="attempts") == 1, what="given up")
        assert len(r.requests) == 3 and hooks.pending() == 0
    finally:
        r.close()


def test_filters_and_urls_no_longer_configured(hooks_factory: Any, receiver: Receiver) -> None:
    m = Metrics()
    old = hooks_factory(["http://127.0.0.1:9/gone"], m)  # queued but never started
    old.enqueue(FIRING)
    old.outbox.close()
    hooks = hooks_factory([receiver.url()], m, states=["firing"], checks=["anomaly"])
    hooks.enqueue(RESOLVED)  # filtered: state
    hooks.enqueue(dataclasses.replace(FIRING, check="stuck", kind="stuck"))  # filtered: check
    assert hooks.pending() == 1  # only the old URL's
    hooks.start()
    assert sample(m, "sensorcast_webhooks_failed_total", reason="unconfigured") == 1 and hooks.pending() == 0
    hooks.enqueue(FIRING)
    wait_until(lambda: len(receiver.requests) == 1, what="the firing anomaly")
    time.sleep(0.2)  # nothing else follows
    assert len(receiver.requests) == 1


def test_settings_refuse_what_is_not_an_http_url_and_read_json_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for bad in ("ftp://h/x", "hooks.example.com/x", "http:///x", "http://h:99999/x"):
        with pytest.raises(ValidationError):
            WebhookSettings(urls=[bad])
    monkeypatch.setenv("SENSORCAST_WEBHOOKS__URLS", '["https://hooks.example.com/a?t=1", "http://10.0.0.2:8000/b"]')
    monkeypatch.setenv("SENSORCAST_WEBHOOKS__STATES", '["firing"]')
    w = Settings().webhooks
    assert w.urls == ["https://hooks.example.com/a?t=1", "http://10.0.0.2:8000/b"] and w.states == ["firing"]
    assert url_label(w.urls[0]) == "https://hooks.example.com" and url_label(w.urls[1]) == "http://10.0.0.2:8000"
    with pytest.raises(ConfigError, match="secret_file"):
        Webhooks(WebhookSettings(urls=w.urls, secret_file=tmp_path / "missing", outbox_path=tmp_path / "o.db"),
                 Metrics())


def test_an_outbox_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "webhooks.sqlite"
    bad.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(ConfigError, match=r"webhooks\.outbox_path"):
        Webhooks(WebhookSettings(urls=["http://127.0.0.1:9/x"], outbox_path=bad), Metrics())


def test_a_silenced_stream_sends_no_webhook_through_the_pipeline(hooks_factory: Any, receiver: Receiver,
                                                                 tmp_path: Path) -> None:
    from service.pipeline import Pipeline
    from service.store.streamsettings import StreamSettings

    streams = StreamSettings(tmp_path / "stream_settings.sqlite")
    try:
        pipe = Pipeline(Settings(), Metrics(), stream_settings=streams)
        hooks = hooks_factory([receiver.url()])
        pipe.notify_sinks.append(("webhooks", hooks.enqueue))
        hooks.start()
        streams.silence(FIRING.stream_id, time.time_ns() + 3600 * 10**9)
        pipe.on_alert(FIRING)  # silenced: recorded elsewhere, no one is called
        other = dataclasses.replace(FIRING, key=StreamKey("pump-2", "temp"))
        pipe.on_alert(other)
        wait_until(lambda: receiver.requests, what="the unsilenced stream's webhook")
        # One URL's events go in order: the silenced one, had it been queued, would have come first.
        assert [q.json()["stream_id"] for q in receiver.requests] == ["pump-2/temp"] and hooks.pending() == 0
    finally:
        streams.close()


def test_an_outbox_that_refuses_the_write_is_counted_and_the_engine_goes_on(hooks_factory: Any) -> None:
    from service.pipeline import Pipeline

    m = Metrics()
    hooks = hooks_factory(["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"], m)
    hooks.outbox._db.execute("PRAGMA query_only=1")  # SQLite refuses writes, as on a read-only or full disk
    pipe = Pipeline(Settings(), m)
    pipe.notify_sinks.append(("webhooks", hooks.enqueue))
    pipe.on_alert(FIRING)  # logged by the pipeline, never raised into the engine
    assert sample(m, "sensorcast_webhooks_failed_total", reason="unqueued") == 2
    assert sample(m, "sensorcast_webhooks_pending") == 0


def test_config_output_shows_a_webhook_url_without_its_path_or_query(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config_doc import describe_config_error, redact

    good = '["https://hooks.example.com/services/T0/SECRET?token=abc"]'
    assert redact("SENSORCAST_WEBHOOKS__URLS", good) == '["https://hooks.example.com/***"]'
    bad = '["https://ok.example.com/a", "ftp://h.example.com/SECRET"]'
    monkeypatch.setenv("SENSORCAST_WEBHOOKS__URLS", bad)
    with pytest.raises(ValidationError) as exc:
        Settings()
    line = describe_config_error(exc.value, {"SENSORCAST_WEBHOOKS__URLS": bad})
    assert line.startswith("SENSORCAST_WEBHOOKS__URLS=") and "item 1" in line and "SECRET" not in line, line
