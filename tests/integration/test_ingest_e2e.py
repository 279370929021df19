"""End to end over real servers: 20,000 QoS 1 readings over 200 streams arrive exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from service.localservers import Influxd, Mosquitto
from service.metrics import Metrics
from service.records import Reading
from service.store import open_store
from tests.integration.ingest_helpers import Publisher, make_settings, readings, wait_stored

pytestmark = pytest.mark.integration
_n = itertools.count()


@pytest.mark.parametrize("kind", ["influxdb", "sqlite"])
def test_20000_readings_over_200_streams_stored_exactly(
    kind: str, mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    from service.ingest.ingester import Ingester

    n = next(_n)
    url = f"influxdb://127.0.0.1:{influxd.port}/e2e{n}" if kind == "influxdb" else f"sqlite:///{tmp_path}/e2e.db"
    settings = make_settings(mosquitto.port, url, tmp_path / "spool", client_id=f"e2e-{kind}-{n}",
                             topic=f"e2e{n}/{{device}}/{{quantity}}")
    store = open_store(settings.store)
    sunk: list[Reading] = []
    ing = Ingester(settings, store, Metrics(), sinks=[sunk.extend])
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
