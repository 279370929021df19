"""Webhooks: every alert event POSTed as signed JSON to the configured URLs, through a durable outbox.

Flow of one event: the pipeline's notify sink (``Webhooks.enqueue``, on the engine's
thread) commits one row per URL to the webhook outbox (service/alerts/webhook_outbox.py)
and wakes the senders; nothing else happens on the engine's thread. Each URL has a sender
thread of its own (a slow or dead receiver holds up only itself) that POSTs its events in
the order they were queued:

- 2xx: delivered, the row is deleted.
- a connection error, a timeout, 408, 425, 429 or 5xx: kept and retried after
  ``backoff_s``, doubling per failure up to ``backoff_max_s`` (a numeric ``Retry-After``
  is honoured up to that cap), until ``max_attempts`` or ``max_age_s`` give it up.
- any other answer (3xx, 4xx): the receiver refuses this request and retrying will not
  change its mind, while keeping it would hold every later event to that URL behind it:
  dropped, logged at ERROR with the status, counted in
  ``sensorcast_webhooks_failed{reason="rejected"}``.

Rows survive a restart and are sent after start (at-least-once: a receiver may see an
event twice, and de-duplicates by ``event_id``). Signing (``X-Sensorcast-Signature``) and
how a receiver verifies it: ``sign`` below and docs/api.md, "Webhooks". Logs name a URL by
scheme, host and port only: a webhook path often holds a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sqlite3
import threading
import time
from urllib.parse import urlsplit

import httpx
import orjson

from service import __version__
from service.alerts.payload import alert_dict, iso_time
from service.alerts.webhook_outbox import WebhookEntry, WebhookOutbox
from service.config import WebhookSettings, read_secret
from service.errors import ConfigError
from service.metrics import Metrics
from service.records import Alert

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sensorcast-Signature"
TIMESTAMP_HEADER = "X-Sensorcast-Timestamp"
EVENT_HEADER = "X-Sensorcast-Event"
ATTEMPT_HEADER = "X-Sensorcast-Attempt"
_RETRY_STATUS = frozenset({408, 425, 429})
_SYNC_EVERY_S = 1.0  # outbox fsync period, as the MQTT outbox's


def event_id(alert: Alert) -> str:
    """The same id for the same event, also when a restarted engine emits it again."""
    key = "\x00".join((alert.stream_id, alert.check, alert.kind, alert.state, str(alert.ts_ns)))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def webhook_body(alert: Alert, emitted_s: float) -> bytes:
    """The MQTT alert payload's fields plus ``event_id`` and ``emitted_time`` (when the service queued it)."""
    body = {"event_id": event_id(alert), "emitted_time": iso_time(int(emitted_s * 1e9))}
    body.update(alert_dict(alert))
    return orjson.dumps(body)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<raw body>`` (the timestamp is signed, so a replay
    with a new one fails)."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def url_label(url: str) -> str:
    """``https://host:port``: enough to tell receivers apart in a log, without a token from the path or query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class Webhooks:
    """The webhook addon: ``enqueue`` is the pipeline's notify sink, one sender thread per URL."""

    name = "webhook senders"

    def __init__(self, settings: WebhookSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.urls = list(dict.fromkeys(settings.urls))  # one sender per distinct URL
        try:
            secret = read_secret(None, settings.secret_file)
        except OSError as e:
            raise ConfigError(f"webhooks.secret_file: cannot read {settings.secret_file}: {e}") from e
        if secret == "":
            raise ConfigError(f"webhooks.secret_file: {settings.secret_file} is empty")
        self.secret = None if secret is None else secret.encode("utf-8")
        try:
            self.outbox = WebhookOutbox(settings.outbox_path)
        except (OSError, sqlite3.Error) as e:  # not a database, no permission: one line at start, not a traceback
            raise ConfigError(f"webhooks.outbox_path: cannot open {settings.outbox_path}: {e}") from e
        self._checks = frozenset(settings.checks)
        self._states = frozenset(settings.states)
        self._wake = {url: threading.Event() for url in self.urls}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._dirty = False  # puts since the last fsync
        self._last_sync = 0.0
        self.metrics.webhooks_pending.set(self.outbox.count())

    # -- the notify sink (engine's thread) --------------------------------------------
    def enqueue(self, alert: Alert) -> None:
        """Commit the event for every URL and wake the senders; never waits for a receiver."""
        if alert.state not in self._states or (self._checks and alert.check not in self._checks):
            return
        now = time.time()
        try:
            self.outbox.put(self.urls, event_id(alert), webhook_body(alert, now), now)
        except sqlite3.Error:  # a full disk, an I/O error: counted here, logged by the pipeline
            self.metrics.webhooks_failed.labels("unqueued").inc(len(self.urls))
            raise
        self.metrics.webhooks_pending.inc(len(self.urls))
        with self._lock:
            self._dirty = True
        for wake in self._wake.values():
            wake.set()

    # -- addon lifecycle -------------------------------------------------------------
    def start(self) -> None:
        dropped = self.outbox.drop_other_urls(self.urls)
        if dropped:
            log.warning("webhooks: dropped %d undelivered events for URLs no longer configured", dropped)
            self.metrics.webhooks_failed.labels("unconfigured").inc(dropped)
            self.metrics.webhooks_pending.set(self.outbox.count())
        if self.secret is None:
            log.warning("webhooks: no webhooks.secret_file, requests are unsigned")
        for i, url in enumerate(self.urls):
            pending = self.outbox.count(url)
            log.info("webhook %d: %s%s", i + 1, url_label(url), f" ({pending} undelivered events)" if pending else "")
            t = threading.Thread(target=self._run, args=(url,), name=f"webhook-{i + 1}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """Stop the senders (a request in flight is cut by its timeout); undelivered events stay queued."""
        self._stopping.set()
        for wake in self._wake.values():
            wake.set()
        for t in self._threads:
            t.join(timeout=self.settings.timeout_s + 5)
        self._threads = []
        self.outbox.sync()
        self.outbox.close()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def pending(self, url: str | None = None) -> int:
        return self.outbox.count(url)

    # -- one sender per URL ------------------------------------------------------------
    def _run(self, url: str) -> None:
        label = url_label(url)
        failures = 0  # consecutive, for the backoff
        headers = {"Content-Type": "application/json", "User-Agent": f"sensorcast/{__version__}"}
        with httpx.Client(timeout=self.settings.timeout_s, follow_redirects=False, headers=headers) as client:
            while not self._stopping.is_set():
                self._maybe_sync()
                try:
                    self._wake[url].clear()
                    entry = self.outbox.oldest(url)
                    if entry is None:
                        self._wake[url].wait(_SYNC_EVERY_S)
                        continue
                    delay = self._deliver(client, label, entry, failures)
                except Exception:  # a bug or a broken outbox must not end the thread: the watchdog would exit
                    log.exception("webhook %s: sender error", label)
                    delay = self.settings.backoff_max_s
                if delay is None:
                    failures = 0
                else:
                    failures += 1
                    self._stopping.wait(delay)

    def _deliver(self, client: httpx.Client, label: str, entry: WebhookEntry, failures: int) -> float | None:
        """POST one event; None: done with it (delivered or given up), else seconds until the retry."""
        s = self.settings
        if s.max_age_s and time.time() - entry.queued > s.max_age_s:
            self._give_up(entry, "expired", f"undelivered after {s.max_age_s:.0f} s (webhooks.max_age_s)", label)
            return None
        timestamp = str(int(time.time()))
        headers = {EVENT_HEADER: entry.event_id, TIMESTAMP_HEADER: timestamp, ATTEMPT_HEADER: str(entry.attempts + 1)}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, entry.body)
        retry_after: float | None = None
        try:
            r = client.post(entry.url, content=entry.body, headers=headers)
        except httpx.HTTPError as e:
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        else:
            if r.is_success:
                self.outbox.delete(entry.id)
                self.metrics.webhooks_sent.inc()
                self.metrics.webhooks_pending.dec()
                if failures:
                    log.info("webhook %s: delivered again after %d failed attempts", label, failures)
                return None
            why = f"HTTP {r.status_code}"
            if r.status_code not in _RETRY_STATUS and r.status_code < 500:
                self._give_up(entry, "rejected", f"{why} {r.text[:200]!r} (not retried)", label)
                return None
            retry_after = _seconds(r.headers.get("Retry-After"))
        self.outbox.failed_attempt(entry.id)
        self.metrics.webhooks_retries.inc()
        if s.max_attempts and entry.attempts + 1 >= s.max_attempts:
            self._give_up(entry, "attempts", f"{why}, attempt {entry.attempts + 1} of {s.max_attempts}", label)
            return None
        delay = min(s.backoff_s * 2.0 ** min(failures, 30), s.backoff_max_s)
        if retry_after is not None:
            delay = min(max(delay, retry_after), s.backoff_max_s)
        log.warning("webhook %s: event %s not delivered (%s); retry in %.3g s, %d undelivered", label,
                    entry.event_id, why, delay, self.outbox.count(entry.url))
        return delay

    def _give_up(self, entry: WebhookEntry, reason: str, why: str, label: str) -> None:
        self.outbox.delete(entry.id)
        self.metrics.webhooks_failed.labels(reason).inc()
        self.metrics.webhooks_pending.dec()
        log.error("webhook %s: event %s dropped: %s", label, entry.event_id, why)

    def _maybe_sync(self) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._dirty or now - self._last_sync < _SYNC_EVERY_S:
                return
            self._dirty = False
            self._last_sync = now
        self.outbox.sync()


def _seconds(retry_after: str | None) -> float | None:
    """A numeric ``Retry-After`` (an HTTP date is rare from webhook receivers and falls back to the backoff)."""
    try:
        return max(float(retry_after), 0.0) if retry_after else None
    except ValueError:
        return None
