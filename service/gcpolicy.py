"""Garbage-collector policy for the long-running service: no 50 ms pauses under load.

Measured with ``sensorcast bench latency`` at 10k readings/s: with CPython's default
settings a full (generation 2) collection ran every ~2.5 s and took 50-70 ms, because it
walks every container object the process holds (modules, FastAPI and pydantic schemas,
ONNX sessions, stream state), nearly all of which live as long as the process. Those
pauses set the p99 of publish -> alert and of GET forecast. With the startup objects
frozen (``gc.freeze``), full collections walk only newer objects and took 2-5 ms.

The policy: once the pipeline has started, one full collection, then ``gc.freeze()``.
Every ``gc.refreeze_s`` the objects made since (streams that appeared, mostly) are
collected and the survivors frozen too: a pause the size of the young objects only.
A frozen object is still freed by reference counting when dropped; only a reference
cycle among frozen objects (a dropped stream or model table) would never be reclaimed.
So every ``gc.full_collect_s`` the frozen set is unfrozen, fully collected and frozen
again: one pause of the old size per hour instead of one every few seconds. The first
refreeze comes sooner (``_FIRST_REFREEZE_S``), because most streams appear in the first
minute.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from service.config import GcSettings
from service.metrics import Metrics

log = logging.getLogger("sensorcast.gc")
_FIRST_REFREEZE_S = 60.0


class GcPolicy:
    def __init__(
        self, refreeze_s: float, metrics: Metrics | None = None, enabled: bool = True, full_collect_s: float = 3600.0
    ) -> None:
        self.refreeze_s = refreeze_s
        self.full_collect_s = full_collect_s
        self.enabled = enabled
        self.metrics = metrics
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: GcSettings, metrics: Metrics | None = None) -> GcPolicy:
        return cls(settings.refreeze_s, metrics, enabled=settings.freeze, full_collect_s=settings.full_collect_s)

    def start(self) -> None:
        """Call once the pipeline has started (its long-lived objects exist)."""
        if self.metrics is not None:
            gc.callbacks.append(self._on_gc)
        if not self.enabled:
            return
        self.refreeze()
        self._thread = threading.Thread(target=self._loop, name="sensorcast-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self.enabled:
            gc.unfreeze()  # back to normal collection (matters for tests sharing the process)

    def refreeze(self, full: bool = True) -> float:
        """Collect, then freeze the survivors; returns the pause (s).

        ``full``: unfreeze first, so cycles among frozen objects are reclaimed too (a pause
        the size of the whole heap); otherwise only objects made since the last freeze
        are walked.
        """
        t = time.perf_counter()
        if full:
            gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        took = time.perf_counter() - t
        frozen = gc.get_freeze_count()
        if self.metrics is not None:
            self.metrics.gc_frozen.set(frozen)
        log.info("gc: %d objects frozen after a %s collection (%d unreachable freed) in %.1f ms",
                 frozen, "full" if full else "young", collected, took * 1e3)
        return took

    def _loop(self) -> None:
        wait = min(_FIRST_REFREEZE_S, self.refreeze_s)
        next_full = time.monotonic() + self.full_collect_s
        while not self._stop.wait(wait):
            full = time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + self.full_collect_s
            self.refreeze(full=full)
            wait = self.refreeze_s

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector with further collections blocked, so it cannot nest.
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self.metrics is not None:
            self.metrics.gc_pause.labels(str(info["generation"])).observe(time.perf_counter() - self._t0)
