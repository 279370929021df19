"""The HTTP path of the ingester (``submit``) and store URL parsing, without servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, StoreSettings
from service.errors import ConfigError, StoreError
from service.ingest.ingester import Ingester
from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.store import open_store
from service.store.memory import MemoryStore
from service.wiring import build_ingester

S = StreamKey("d", "q")


def make(tmp_path: Path, **store_kw: object) -> tuple[Ingester, MemoryStore, list[list[Reading]]]:
    s = Settings()  # type: ignore[call-arg]
    s.store.spool_dir = tmp_path / "spool"
    for k, v in store_kw.items():
        setattr(s.store, k, v)
    store = MemoryStore()
    sunk: list[list[Reading]] = []
    ing = build_ingester(s, store, Metrics(), sinks=[sunk.append], mqtt=False)
    ing.start()
    return ing, store, sunk


def test_submit_returns_once_durable_and_feeds_sinks(tmp_path: Path) -> None:
    ing, store, sunk = make(tmp_path)
    try:
        ing.submit([Reading(S, 1, 1.0), Reading(S, 2, 2.0)])
        assert store.count() == 2 and sum(map(len, sunk)) == 2
        st = ing.status()
        assert st.store_ok and not st.broker_connected and st.stored == 2
    finally:
        ing.stop()


def test_submit_spools_when_store_down(tmp_path: Path) -> None:
    ing, store, _ = make(tmp_path)
    store.fail = True
    try:
        ing.submit([Reading(S, 1, 1.0)])  # durable in the spool
        assert ing.status().spool_readings == 1 and not ing.status().store_ok
    finally:
        ing.stop()


def test_submit_raises_when_nothing_can_take_it(tmp_path: Path) -> None:
    ing, store, _ = make(tmp_path, spool_max_bytes=10)
    store.fail = True
    try:
        with pytest.raises(StoreError, match="spool full"):
            ing.submit([Reading(S, 1, 1.0)], timeout_s=1.0)
    finally:
        ing.stop()


@pytest.mark.parametrize(
    "reading",
    [Reading(StreamKey("bad\n", "q"), 1, 1.0), Reading(S, 1, float("nan")), Reading(S, 1, float("inf"))],
)
def test_submit_refuses_unstorable(tmp_path: Path, reading: Reading) -> None:
    ing, store, _ = make(tmp_path)
    try:
        with pytest.raises(ValueError):
            ing.submit([reading])
        assert store.count() == 0
    finally:
        ing.stop()


def test_store_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="org"):
        open_store(StoreSettings(url="influxdb2://127.0.0.1:1/bucket"))  # type: ignore[call-arg]
    with pytest.raises(ConfigError):
        open_store(StoreSettings(url="influxdb://127.0.0.1:1/"))  # type: ignore[call-arg]
    s = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/x/y.db"))  # type: ignore[call-arg]
    assert (tmp_path / "x" / "y.db").exists()
    s.close()
    tok = tmp_path / "token"
    tok.write_text("secret\n")
    s2 = open_store(StoreSettings(url="influxdb2://127.0.0.1:1/bucket?org=o", token_file=tok))  # type: ignore[call-arg]
    assert not s2.ping()  # nothing listens there; a clear False, no exception
    s2.close()
