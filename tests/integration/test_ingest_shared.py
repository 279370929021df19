"""Two ingesters in one MQTT shared-subscription group split the work; each reading lands once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.metrics import Metrics
from service.store import open_store
from service.wiring import build_ingester
from tests.integration.ingest_helpers import Publisher, make_settings, readings, wait_stored
from tools.localservers import Influxd, Mosquitto

pytestmark = pytest.mark.integration


def test_shared_subscription_splits_and_stores_once(mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path) -> None:
    url = f"influxdb://127.0.0.1:{influxd.port}/shared"
    ings = []
    for i in range(2):
        s = make_settings(mosquitto.port, url, tmp_path / f"spool{i}", client_id=f"shared-{i}",
                          topic="shared/{device}/{quantity}", share_group="ingest")
        ing = build_ingester(s, open_store(s.store), Metrics())
        assert ing.source is not None and ing.source.subscription == "$share/ingest/shared/+/+"
        ing.start()
        assert ing.source.subscribed.wait(10)
        ings.append(ing)
    pub = Publisher(mosquitto.port, client_id="shared-pub")
    expected = readings(10_000, 100)
    store = open_store(make_settings(mosquitto.port, url, tmp_path / "unused").store)
    try:
        pub.publish(expected, topic="shared/{d}/{q}")
        pub.wait_acked()
        got = wait_stored(store, expected)
    finally:
        pub.close()
        for ing in ings:
            ing.stop()
            ing.store.close()
        store.close()
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))
    shares = [ing.status().stored for ing in ings]
    assert sum(shares) == len(expected)  # each message went to exactly one member
    assert min(shares) > 0  # and both did part of the work


def test_shared_subscription_member_gets_what_was_published_while_away(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from service.store.memory import MemoryStore

    s = make_settings(mosquitto.port, "memory://", tmp_path / "spool", client_id="shared-away",
                      topic="sharedaway/{device}/{quantity}", share_group="away")
    store = MemoryStore()
    ing = build_ingester(s, store, Metrics())
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    ing.stop()  # the persistent session (and its shared subscription) stays with the broker
    pub = Publisher(mosquitto.port, client_id="shared-away-pub")
    try:
        pub.publish(readings(1_000, 10), topic="sharedaway/{d}/{q}")
        pub.wait_acked()
        ing = build_ingester(s, store, Metrics())
        ing.start()
        deadline = time.monotonic() + 20
        while store.count() < 1_000 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        pub.close()
        ing.stop()
    assert store.count() == 1_000
