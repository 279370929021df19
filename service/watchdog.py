"""The watchdog: a dead pipeline thread ends the process, so its supervisor restarts it.

The pipeline's work runs on a few long-lived threads: paho's network loop (MQTT intake),
the store writer, and the engine's tick threads. Each catches what one message, batch or
tick can throw, but a thread can still end (a bug outside those guards, a
``BaseException``). A dead thread leaves a process that answers HTTP and looks healthy
while it ingests or infers nothing. So:

* ``/readyz`` asks the same liveness checks on every call and fails (503, naming the
  thread) as soon as one is dead;
* ``Watchdog`` runs them every ``watchdog.interval_s``; on the first dead thread it logs
  CRITICAL and calls ``on_dead`` once;
* ``FatalExit`` is the ``on_dead`` of the entry points (``serve``, ``ingest``): it asks
  for the orderly stop (flush what can be flushed, checkpoint) and makes sure the process
  then exits with ``EXIT_THREAD_DIED`` (70, EX_SOFTWARE), ending it outright if the stop
  takes longer than ``watchdog.exit_grace_s``.

Restarting the thread in place is deliberately not attempted: its state (a half-written
batch, paho's in-flight packets) is unknown, and a fresh process starts from durable state
(the spool, the broker's session, the checkpoints).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_THREAD_DIED = 70  # EX_SOFTWARE (sysexits.h): an internal software error

Liveness = Callable[[], dict[str, bool]]


def dead_threads(liveness: Liveness) -> list[str]:
    """Names of the threads ``liveness`` reports dead (a failing check counts as dead)."""
    try:
        return sorted(name for name, alive in liveness().items() if not alive)
    except Exception:
        log.exception("thread liveness check failed")
        return ["liveness check"]


class Watchdog:
    def __init__(self, liveness: Liveness, interval_s: float, on_dead: Callable[[list[str]], object]) -> None:
        self._liveness = liveness
        self._interval_s = interval_s
        self._on_dead = on_dead
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: list[str] = []

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sensorcast-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            dead = dead_threads(self._liveness)
            if dead and not self._stop.is_set():
                self.fired = dead
                log.critical(
                    "pipeline thread(s) dead: %s; this process no longer does its work and must be restarted",
                    ", ".join(dead),
                )
                try:
                    self._on_dead(dead)
                except Exception:
                    log.exception("watchdog: the reaction to a dead thread failed")
                return  # once: the process is on its way out


class FatalExit:
    """``on_dead`` for an entry point: request an orderly stop, exit 70 whatever happens.

    ``request_stop`` is how the entry point stops (uvicorn's ``should_exit``, a stop
    event); it must return at once. The entry point returns ``code`` when it ends.
    """

    def __init__(self, grace_s: float, request_stop: Callable[[], object] | None = None) -> None:
        self.grace_s = grace_s
        self.request_stop = request_stop
        self.code = 0

    def __call__(self, dead: list[str]) -> None:
        self.code = EXIT_THREAD_DIED
        log.critical(
            "exiting with code %d (dead: %s) so the supervisor restarts the process; orderly stop first (at most %.0f s)",
            EXIT_THREAD_DIED, ", ".join(dead), self.grace_s,
        )
        timer = threading.Timer(self.grace_s, self._hard_exit)
        timer.daemon = True
        timer.start()
        if self.request_stop is not None:
            self.request_stop()

    def _hard_exit(self) -> None:
        log.critical("orderly stop took over %.0f s: ending the process now (code %d)", self.grace_s, EXIT_THREAD_DIED)
        logging.shutdown()
        os._exit(EXIT_THREAD_DIED)
