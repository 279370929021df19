"""Background thread that drives an ``Engine``: tick, checkpoint, watch the models directory.

Every ``streams.tick_s`` it ticks; every ``streams.checkpoint_interval_s`` it checkpoints;
with ``models.watch`` it stats the models directory every ``watch_interval_s`` and hot
reloads when files changed. An exception in one tick is logged and the loop goes on.
``stop()`` runs a last tick and writes a final checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time

from service.streams.engine import Engine

log = logging.getLogger(__name__)


class EngineRunner:
    def __init__(self, engine: Engine, restore: bool = True, watch_interval_s: float = 2.0) -> None:
        self.engine = engine
        self.restore = restore
        self.watch_interval_s = watch_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.restore:
            self.engine.restore()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sensorcast-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        s = self.engine.settings
        next_ckpt = time.monotonic() + s.streams.checkpoint_interval_s
        next_watch = time.monotonic() + self.watch_interval_s
        pause = s.streams.tick_s
        while not self._stop.wait(pause):
            started = time.monotonic()
            try:
                self.engine.tick()
                now = time.monotonic()
                if s.models.watch and now >= next_watch:
                    next_watch = now + self.watch_interval_s
                    if self.engine.registry.changed():
                        report = self.engine.reload_models()
                        log.info("models directory changed: %s", report)
                if now >= next_ckpt:
                    next_ckpt = now + s.streams.checkpoint_interval_s
                    self.engine.checkpoint()
            except Exception as e:  # keep inferring; the error is visible in status
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("engine loop error")
            # A tick that took long is followed at once by the next one: under load the
            # loop runs flat out instead of idling tick_s between long ticks.
            pause = max(0.0, s.streams.tick_s - (time.monotonic() - started))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self._thread = None
        try:
            self.engine.tick()
        finally:
            self.engine.checkpoint()
