"""End to end over real servers: 20,000 QoS 1 readings over 200 streams arrive exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from service.metrics import Metrics
from service.records import Reading
from service.store import open_store
from tests.integration.ingest_helpers import Publisher, make_settings, readings, wait_stored
from tests.waiting import wait_until
from tools.localservers import Influxd, Mosquitto

pytestmark = pytest.mark.integration
_n = itertools.count()


@pytest.mark.parametrize("kind", ["influxdb", "sqlite"])
def test_20000_readings_over_200_streams_stored_exactly(
    kind: str, mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    from service.wiring import build_ingester

    n = next(_n)
    url = f"influxdb://127.0.0.1:{influxd.port}/e2e{n}" if kind == "influxdb" else f"sqlite:///{tmp_path}/e2e.db"
    settings = make_settings(mosquitto.port, url, tmp_path / "spool", client_id=f"e2e-{kind}-{n}",
                             topic=f"e2e{n}/{{device}}/{{quantity}}")
    store = open_store(settings.store)
    sunk: list[Reading] = []
    ing = build_ingester(settings, store, Metrics(), sinks=[sunk.extend])
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    pub = Publisher(mosquitto.port, client_id=f"e2e-pub-{n}")
    try:
        expected = readings(20_000, 200)
        pub.publish(expected, topic=f"e2e{n}/{{d}}/{{q}}")
        pub.wait_acked()
        got = wait_stored(store, expected)
    finally:
        pub.close()
        ing.stop()
    assert len(got) == 20_000
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))  # values and timestamps exact
    assert len(store.streams()) == 200
    assert sorted(sunk, key=lambda r: (r.stream, r.ts_ns)) == got  # sinks saw each durable reading
    status = ing.status()
    assert status.spool_readings == 0 and status.stored == 20_000
    store.close()


def test_live_sinks_see_readings_before_the_store_write_and_sinks_after(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The engine is fed as soon as a message is decoded; a slow database never delays it."""
    import threading

    from service.store.memory import MemoryStore
    from service.wiring import build_ingester

    class HeldStore(MemoryStore):
        """Writes wait until released: a database that has stopped answering for a while."""

        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def write(self, readings: list[Reading]) -> None:  # type: ignore[override]
            self.release.wait(30)
            super().write(readings)

    n = next(_n)
    settings = make_settings(mosquitto.port, "memory://", tmp_path / "spool", client_id=f"live-{n}",
                             topic=f"live{n}/{{device}}/{{quantity}}")
    store = HeldStore()
    live: list[Reading] = []
    durable: list[Reading] = []
    ing = build_ingester(settings, store, Metrics(), sinks=[durable.extend], live=[live.extend])
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    pub = Publisher(mosquitto.port, client_id=f"live-pub-{n}")
    try:
        expected = readings(50, 5)
        pub.publish(expected, topic=f"live{n}/{{d}}/{{q}}")
        pub.wait_acked()  # the broker has them; our store has none yet
        wait_until(lambda: len(live) == 50, what="live readings")
        assert durable == [] and store.streams() == []
        assert ing.source.acked == 0  # nothing acknowledged before it is durable
        store.release.set()
        got = wait_stored(store, expected)
        wait_until(lambda: ing.source is not None and ing.source.acked == 50, what="acks after the write")
    finally:
        store.release.set()
        pub.close()
        ing.stop()
    def key(r: Reading) -> tuple[object, int]:
        return (r.stream, r.ts_ns)

    assert sorted(live, key=key) == sorted(durable, key=key) == got == sorted(expected, key=key)
