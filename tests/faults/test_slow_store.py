"""A slow database (responses delayed by a TCP proxy in front of the real influxd).

Memory stays bounded: the writer's queue never grows past ``ingest.queue_max``, the
ingester stops reading from the broker (which holds the rest) instead of buffering, and
once the database is fast again every reading is stored exactly once. Responses slower
than the store timeout make writes fail: those batches spool and replay, still once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from service.metrics import Metrics
from service.store import open_store
from service.wiring import build_ingester
from tests.faults.tcpproxy import DelayProxy
from tests.integration.ingest_helpers import (
    Publisher,
    make_settings,
    readings,
    run_in_thread,
    wait_stored,
)
from tools.localservers import Influxd, Mosquitto

pytestmark = pytest.mark.integration

QUEUE_MAX = 400  # messages; tiny so the bound is visible within seconds
N = 12_000


def by_key(rs: list) -> list:  # type: ignore[type-arg]
    return sorted(rs, key=lambda r: (r.stream, r.ts_ns))


def test_slow_database_backpressure_not_unbounded_queues(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    proxy = DelayProxy(influxd.port)
    url = f"influxdb://127.0.0.1:{proxy.port}/fslow"
    settings = make_settings(mosquitto.port, url, tmp_path / "spool", client_id="f-slow",
                             topic="fslow/{device}/{quantity}", batch_size=500, queue_max=QUEUE_MAX)
    settings.store.timeout_s = 2.0
    store = open_store(settings.store)  # creates the database while the proxy is still fast
    metrics = Metrics()
    ing = build_ingester(settings, store, metrics)
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    proxy.delay_s = 1.0  # slow, but within the store timeout
    samples: list[tuple[int, int]] = []  # (writer queue length, messages acknowledged)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            assert ing.source is not None
            samples.append((ing.writer.queue.qsize(), ing.source.acked))
            time.sleep(0.05)

    sampler = run_in_thread(sample)
    pub = Publisher(mosquitto.port, client_id="f-slow-pub")
    expected = readings(N, 60)
    try:
        pub.publish(expected, topic="fslow/{d}/{q}")
        pub.wait_acked()  # the broker took everything at full speed
        time.sleep(3)
        acked_while_slow = ing.source.acked
        queue_while_slow = ing.writer.queue.qsize()
        proxy.delay_s = 3.0  # slower than the 2 s timeout: writes fail, batches spool
        time.sleep(5)
        errors_while_slower = metrics.store_errors._value.get()
        proxy.delay_s = 0.0
        got = wait_stored(store, expected, timeout=90)
        deadline = time.monotonic() + 30
        while ing.status().spool_readings and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        sampler.join(2)
        pub.close()
        ing.stop()
        proxy.close()
    assert max(q for q, _ in samples) <= QUEUE_MAX
    assert queue_while_slow >= QUEUE_MAX // 2, "a slow store should fill the bounded queue"
    # Backpressure: while slow, the broker (not our memory) held most of what was published.
    assert acked_while_slow < N // 2, acked_while_slow
    assert errors_while_slower > 0, "responses slower than the timeout should count as store errors"
    assert got == by_key(expected)  # each reading once, values exact
    assert ing.status().spool_readings == 0
    store.close()
