"""Training reads its history from a real store: influxd (1.x HTTP API) and SQLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import StoreSettings
from service.records import NS_PER_S, Reading, StreamKey
from service.store import open_store
from tools.localservers import Influxd
from training.config import DataConfig
from training.data import load_store

T0 = 1_700_000_000 * NS_PER_S


def _history() -> list[Reading]:
    out = []
    for dev in ("d1", "d2"):
        for q, base in (("temp", 20.0), ("hum", 50.0)):
            key = StreamKey(dev, q)
            for i in range(300):
                if q == "temp" and 100 <= i < 110:
                    continue  # a gap in delivery: must come back as missing rows
                # irregular arrival: jitter inside the 60 s cadence bin
                ts = T0 + i * 60 * NS_PER_S + (i % 7) * NS_PER_S
                out.append(Reading(key, ts, float(base + np.sin(i / 20))))
    return out


def _check(url: str) -> None:
    store = open_store(StoreSettings(url=url))
    try:
        store.write(_history())
    finally:
        store.close()
    ds = load_store(DataConfig(source=url, streams=("d1/temp", "d1/hum"), cadence_s=60.0))
    assert ds.features == ("hum", "temp") and [s.name for s in ds.series] == ["d1"]
    v = ds.series[0].values
    assert v.shape == (300, 2)
    assert np.isnan(v[100:110, 1]).all() and not np.isnan(v[:100]).any()  # gap kept as missing
    assert v[5, 1] == pytest.approx(20 + np.sin(5 / 20), abs=1e-4)
    uni = load_store(DataConfig(source=url, layout="univariate", cadence_s=60.0,
                                start="2023-11-14T22:13:20+00:00", end="2023-11-14T23:13:20+00:00"))
    assert [s.name for s in uni.series] == ["d1/hum", "d1/temp", "d2/hum", "d2/temp"]
    assert all(len(s.values) == 60 for s in uni.series)  # one hour at 60 s


@pytest.mark.integration
def test_load_history_from_influxd(influxd: Influxd) -> None:
    influxd.create_db("train_hist")
    _check(f"influxdb://127.0.0.1:{influxd.port}/train_hist")


def test_load_history_from_sqlite(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'h.db'}")
