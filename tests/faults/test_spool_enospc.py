"""A real full disk under the spool (a tiny tmpfs mounted by the test, as root).

The ingest engineer's ``test_spool_full_stops_acknowledging_and_recovers`` covers the
``spool_max_bytes`` limit; this one fills the filesystem itself, so ``write`` fails with
ENOSPC: the spool reports full (metric and one clear log line), nothing that could not
be made durable is acknowledged, and when space returns and the store is back every
reading lands exactly once. Skips cleanly where mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.metrics import Metrics
from service.store import open_store
from service.wiring import build_ingester
from tests.integration.ingest_helpers import Publisher, make_settings, readings, wait_stored
from tools.localservers import Influxd, Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mount not permitted here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    """Fill the filesystem completely with a ballast file; returns it (delete = space back)."""
    ballast = mnt / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return ballast


def test_real_enospc_stops_acks_and_recovers(
    mosquitto: Mosquitto, fresh_influxd: Callable[..., Influxd], tiny_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    influxd = fresh_influxd()
    settings = make_settings(mosquitto.port, f"influxdb://127.0.0.1:{influxd.port}/sensorcast",
                             tiny_disk / "spool", client_id="f-enospc", topic="fenospc/{device}/{quantity}",
                             batch_size=200, queue_max=300)
    store = open_store(settings.store)
    metrics = Metrics()
    ing = build_ingester(settings, store, metrics)
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    influxd.kill(signal.SIGKILL)
    ballast = fill(tiny_disk)
    pub = Publisher(mosquitto.port, client_id="f-enospc-pub")
    expected = readings(3_000, 30)
    caplog.set_level(logging.ERROR, logger="service")
    try:
        pub.publish(expected, topic="fenospc/{d}/{q}")
        pub.wait_acked()
        deadline = time.monotonic() + 20
        while not ing.status().spool_full and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert ing.status().spool_full
        assert metrics.spool_full._value.get() == 1
        assert ing.source.acked == 0, "nothing could be made durable, so nothing may be acknowledged"
        assert any("disk full" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        ballast.unlink()  # space returns; the store is still down: the spool takes it all
        deadline = time.monotonic() + 30
        while ing.source.acked < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ing.source.acked == len(expected)
        assert not ing.status().spool_full and metrics.spool_full._value.get() == 0
        influxd.start()
        got = wait_stored(store, expected, timeout=60)
        deadline = time.monotonic() + 20
        while ing.status().spool_readings and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        pub.close()
        ing.stop()
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))
    assert ing.status().spool_readings == 0
    store.close()
