"""Hostile payloads interleaved with good ones: the good all land, every bad one is counted
under its reason, the process lives, and no extra point, field or measurement appears."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.store import open_store
from service.store.influx1 import Influx1Store
from service.wiring import build_ingester
from tests.integration.ingest_helpers import BASE_NS, Publisher, make_settings, stored
from tools.localservers import Influxd, Mosquitto

pytestmark = pytest.mark.integration
CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile" / "cases.jsonl"


def load_corpus() -> list[dict[str, Any]]:
    cases = [orjson.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    for c in cases:
        if "payload_b64" in c:
            c["bytes"] = base64.b64decode(c["payload_b64"])
        elif "generate" in c:
            g = c["generate"]
            c["bytes"] = (
                g.get("prefix", "") + g["unit"] * g["times"] + g.get("suffix_unit", "") * g["times"] + g.get("suffix", "")
            ).encode()
        else:
            c["bytes"] = c["payload"].encode()
    return cases


def refused_counts(metrics: Metrics) -> Counter[str]:
    out: Counter[str] = Counter()
    for fam in metrics.registry.collect():
        if fam.name == "sensorcast_readings_refused":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    out[s.labels["reason"]] += int(s.value)
    return out


def test_hostile_corpus_interleaved_with_good_readings(mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path) -> None:
    cases = load_corpus()
    url = f"influxdb://127.0.0.1:{influxd.port}/hostile"
    settings = make_settings(mosquitto.port, url, tmp_path / "spool", client_id="hostile", topic="hostile/{device}/{quantity}")
    store = open_store(settings.store)
    assert isinstance(store, Influx1Store)
    metrics = Metrics()
    ing = build_ingester(settings, store, metrics)
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    pub = Publisher(mosquitto.port, client_id="hostile-pub")
    good: list[Reading] = []
    try:
        for i, case in enumerate(cases):
            r = Reading(StreamKey(f"good{i % 7}", "q"), BASE_NS + i * 1000, float(i))
            good.append(r)
            pub.publish([r], topic="hostile/{d}/{q}")
            info = pub.client.publish(case["topic"], case["bytes"], qos=1)
            pub.infos.append((r, info))
        pub.wait_acked()
        expected_refused: Counter[str] = Counter()
        for c in cases:
            expected_refused.update(c["refused"])
        deadline = time.monotonic() + 30
        while refused_counts(metrics) != expected_refused and time.monotonic() < deadline:
            time.sleep(0.2)
        want_good = sum(c["good"] for c in cases) + len(good)
        while metrics.readings_stored._value.get() < want_good and time.monotonic() < deadline:
            time.sleep(0.2)
        status = ing.status()
    finally:
        pub.close()
        ing.stop()
    assert refused_counts(metrics) == expected_refused
    assert status.broker_connected and status.store_ok  # the process lived through it all
    # Every interleaved good reading landed exactly.
    assert stored(store, {r.stream for r in good}) == sorted(good, key=lambda r: (r.stream, r.ts_ns))
    # Nothing else appeared: one measurement, one field, exactly the expected series.
    body = store.query("SHOW MEASUREMENTS; SHOW FIELD KEYS")
    assert body["results"][0]["series"][0]["values"] == [["readings"]]
    assert body["results"][1]["series"][0]["values"] == [["value", "float"]]
    expected_streams = {r.stream for r in good}
    for c in cases:
        for device, quantity, tags in c.get("streams", []):
            expected_streams.add(StreamKey(device, quantity, tuple((k, v) for k, v in tags)))
    assert set(store.streams()) == expected_streams
    dup = store.read_range(StreamKey("dup", "q"), 0, 2**62)
    assert [(r.ts_ns, r.value) for r in dup] == [(1763000001 * 10**9, 1.0), (1763000002 * 10**9, 2.0)]
    batch = store.read_range(StreamKey("batch", "q"), 0, 2**62)
    assert len(batch) == 500
    store.close()
