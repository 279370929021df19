"""What happens to a refused message: counted by reason, logged (rate-limited), dead-lettered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import orjson

from service.ingest.decode import Refusal
from service.metrics import Metrics

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # per reason: the first refusal is logged, then one line per interval
PAYLOAD_SHOWN = 120  # bytes of a refused payload that reach the log


class RefusalReporter:
    def __init__(
        self,
        metrics: Metrics,
        dead_letter: Callable[[bytes], None] | None = None,
    ) -> None:
        self._counter = metrics.readings_refused
        self._dead_letter = dead_letter
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, source: str, topic: str, payload: bytes, refusals: Sequence[Refusal]) -> None:
        for r in refusals:
            self._counter.labels(r.reason).inc()
        now = time.monotonic()
        for r in refusals:
            with self._lock:
                if now - self._last.get(r.reason, -1e9) < LOG_EVERY_S:
                    self._suppressed[r.reason] = self._suppressed.get(r.reason, 0) + 1
                    continue
                self._last[r.reason] = now
                hidden = self._suppressed.pop(r.reason, 0)
            log.warning(
                "refused (%s) from %s topic %r: %s; payload %r%s",
                r.reason, source, topic[:200], r.detail[:300], payload[:PAYLOAD_SHOWN],
                f" ({hidden} more '{r.reason}' refusals not logged)" if hidden else "",
            )
        self._publish_dead_letter(topic, payload, refusals)

    def internal(self, source: str, topic: str, payload: bytes, exc: BaseException) -> None:
        """A message whose handling raised: counted (reason ``internal``) and logged with its traceback.

        Kept apart from ``report`` (which may itself be what raised): only the counter, the
        dead-letter publish (which catches its own errors) and the log. Rate-limited like
        ``report``.
        """
        self._counter.labels("internal").inc()
        self._publish_dead_letter(topic, payload, [Refusal("internal", f"{type(exc).__name__}: {exc}"[:300])])
        now = time.monotonic()
        with self._lock:
            if now - self._last.get("internal", -1e9) < LOG_EVERY_S:
                self._suppressed["internal"] = self._suppressed.get("internal", 0) + 1
                return
            self._last["internal"] = now
            hidden = self._suppressed.pop("internal", 0)
        log.error(
            "refused (internal) from %s topic %r: %s: %s; payload %r%s",
            source, topic[:200], type(exc).__name__, str(exc)[:300], payload[:PAYLOAD_SHOWN],
            f" ({hidden} more 'internal' refusals not logged)" if hidden else "",
            exc_info=exc,
        )

    def _publish_dead_letter(self, topic: str, payload: bytes, refusals: Sequence[Refusal]) -> None:
        if self._dead_letter is not None and refusals:
            body = orjson.dumps(
                {
                    "topic": topic,
                    "reasons": [{"reason": r.reason, "detail": r.detail[:300]} for r in refusals],
                    "payload": payload[:4096].decode("utf-8", "replace"),
                }
            )
            try:
                self._dead_letter(body)
            except Exception:
                log.exception("dead-letter publish failed")
