"""The engine's inbox: readings buffered between ticks, bounded by ``streams.max_buffered``.

``put`` is what the ingester's sink calls (cheap, thread-safe, O(len)); the tick takes
everything at once. Beyond the bound, readings are dropped for inference only (they are
stored already): counted as ``sensorcast_late_dropped_total{reason="overload"}`` and
logged at most every 10 s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from service.metrics import Metrics
from service.records import Reading

log = logging.getLogger(__name__)


class Inbox:
    def __init__(self, max_buffered: int, metrics: Metrics) -> None:
        self.max_buffered = max_buffered
        self._lock = threading.Lock()
        self._readings: list[Reading] = []
        self._overload = metrics.late_dropped.labels("overload")
        self._logged = 0.0

    def put(self, readings: Sequence[Reading]) -> None:
        with self._lock:
            room = self.max_buffered - len(self._readings)
            if len(readings) <= room:
                self._readings.extend(readings)
                return
            self._readings.extend(readings[: max(room, 0)])
            lost = len(readings) - max(room, 0)
        self._overload.inc(lost)
        now = time.monotonic()
        if now - self._logged > 10:  # one line per 10 s, not one per batch
            self._logged = now
            log.warning("engine is behind: %d buffered readings, dropped %d for inference", self.max_buffered, lost)

    def take(self) -> list[Reading]:
        with self._lock:
            readings, self._readings = self._readings, []
        return readings

    def __len__(self) -> int:
        with self._lock:
            return len(self._readings)
