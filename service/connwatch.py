"""Says at WARNING when the broker or the store cannot be reached, for as long as it lasts.

paho retries a broker that refuses or does not answer, and the writer spools while the
store is away, both without a word after the first: ``/readyz`` knew, the log did not
(issue #16: an unreachable broker logged ``Application startup complete`` and then
nothing). ``ConnectionWatch`` reads each part's state (flags the parts keep, no I/O) every
``interval_s``. A part down for longer than ``grace_s`` (a normal connect takes less) is
logged at WARNING, then again every ``repeat_s`` while it stays down, so an outage of a day
is a few dozen lines, not one per retry; when it is back, one INFO line says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("sensorcast.connections")

# name -> () -> (up, what to say while it is down)
Check = Callable[[], tuple[bool, str]]


class ConnectionWatch:
    def __init__(
        self,
        checks: Mapping[str, Check],
        interval_s: float = 1.0,
        grace_s: float = 5.0,
        repeat_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checks = dict(checks)
        self.interval_s, self.grace_s, self.repeat_s = interval_s, grace_s, repeat_s
        self._clock = clock
        self._down_since: dict[str, float] = {}
        self._logged_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """One round of checks (the thread's body; tests call it with their own clock)."""
        now = self._clock()
        for name, check in self.checks.items():
            try:
                up, detail = check()
            except Exception as e:  # a check that fails says the part is in trouble
                up, detail = False, f"state unknown ({e})"
            if up:
                if name in self._logged_at:
                    log.info("%s: reachable again after %.0f s", name, now - self._down_since[name])
                self._down_since.pop(name, None)
                self._logged_at.pop(name, None)
                continue
            since = self._down_since.setdefault(name, now)
            last = self._logged_at.get(name)
            if now - since >= self.grace_s and (last is None or now - last >= self.repeat_s):
                self._logged_at[name] = now
                log.warning("%s: %s (down for %.0f s; retrying)", name, detail, now - since)

    def start(self) -> None:
        if not self.checks:
            return
        self._thread = threading.Thread(target=self._run, name="connection watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()


def pipeline_checks(broker: str, ingester: Any, intake: Any, publisher: Any, what: str = "the MQTT broker",
                    queued: str = "alerts wait in the outbox") -> dict[str, Check]:
    """The checks for the parts a pipeline runs (each may be None): the ingester's broker
    subscription and store, an inference process's own subscription, the alert publisher.
    ``what``/``queued``: the broker's kind and where alerts wait (NATS: "NATS", in memory).
    Typed loosely: this module sits below the parts it watches (pyproject layers)."""
    checks: dict[str, Check] = {}
    down = f"cannot reach {what} {broker}"
    if ingester is not None:
        if ingester.subscribes:
            checks["broker (ingest)"] = lambda: (ingester.status().broker_connected, down)

        def store() -> tuple[bool, str]:
            st = ingester.status()
            return st.store_ok, f"store write failed: {st.last_error}; {st.spool_readings} readings spooled durably"

        checks["store"] = store
    if intake is not None:
        checks["broker (inference)"] = lambda: (intake.subscribed.is_set(), down)
    if publisher is not None:
        checks["broker (alerts)"] = lambda: (publisher.connected, f"{down}; {queued}")
    return checks
