"""Engine warm-up from a real store (influxd 1.6.7 and SQLite): bulk read, then live steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import StoreSettings
from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.store import open_store
from service.streams.engine import Engine
from tests.modelkit import KitSpec, settings_for, write_model
from tools.localservers import Influxd

pytestmark = pytest.mark.integration

C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
N_STREAMS = 300
SPEC = KitSpec(name="m", hidden=8, layers=2, warmup_steps=8, mean=(20.0,), std=(3.0,))


@pytest.mark.parametrize("kind", ["influxdb", "sqlite"])
def test_new_streams_warm_from_store_in_bulk(kind: str, influxd: Influxd, tmp_path: Path) -> None:
    url = f"influxdb://127.0.0.1:{influxd.port}/enginewarm" if kind == "influxdb" else f"sqlite:///{tmp_path}/w.db"
    store = open_store(StoreSettings(url=url, spool_dir=tmp_path / "spool"))  # type: ignore[call-arg]
    rng = np.random.default_rng(0)
    vals = 20 + 3 * np.sin(np.arange(30)[None, :] / 4 + rng.uniform(0, 6, (N_STREAMS, 1)))  # (N, 30)
    keys = [StreamKey(f"pump{i:03d}", "temp", (("site", "a b"),)) for i in range(N_STREAMS)]
    store.write([Reading(k, T0 + t * C, float(vals[i, t])) for i, k in enumerate(keys) for t in range(29)])
    write_model(tmp_path / "models", SPEC)
    settings = settings_for(tmp_path, tmp_path / "models", models={"bindings": [{"model": "m", "device": "pump*"}]},
                            streams={"warmup_wait_s": 60.0})  # the tick waits for the read (off the lock)
    eng = Engine(settings, ModelRegistry(tmp_path / "models"), store, Metrics())
    try:
        eng.accept([Reading(k, T0 + 29 * C, float(vals[i, 29])) for i, k in enumerate(keys)])
        steps = eng.tick(T0 + 29 * C)
        need = SPEC.warmup_steps + 2 + 1  # history read (warm-up + 2 buckets) plus the live reading
        assert steps == N_STREAMS * need
        statuses = eng.streams()
        assert len(statuses) == N_STREAMS and {s.status for s in statuses} == {"ok"}
        k = keys[7]
        live = eng.forecast(k.id)
        hist = [[float(v)] for v in vals[7, 30 - need :]]
        offline = eng.predict("m", None, hist, [T0 + t * C for t in range(30 - need, 30)])
        assert live is not None and np.abs(np.array(live.mean) - np.array(offline.mean)).max() <= 1e-4
    finally:
        store.close()
