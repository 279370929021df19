"""store.write_outputs: on by default with InfluxDB only, and a clear error where it cannot work.

The writing itself runs against a real influxd: tests/integration/test_store_outputs.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, StoreSettings
from service.errors import ConfigError
from service.metrics import Metrics
from service.store import open_store
from service.store.outputs import StoreOutputs, enabled, line_writer


def settings(url: str, **kw: object) -> Settings:
    return Settings(store=StoreSettings(url=url, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "setting", "on"), [
    ("influxdb://127.0.0.1:8086/db", None, True),
    ("influxdb2://127.0.0.1:8086/b?org=o", None, True),
    ("sqlite:///x.db", None, False),
    ("memory://", None, False),
    ("influxdb://127.0.0.1:8086/db", False, False),
    ("sqlite:///x.db", True, True),
])
def test_default_follows_the_store(url: str, setting: bool | None, on: bool) -> None:
    assert enabled(settings(url, write_outputs=setting)) is on


def test_sqlite_and_memory_stores_are_refused_in_one_line(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/s.db", "memory://"):
        store = open_store(StoreSettings(url=url))
        with pytest.raises(ConfigError, match="needs an InfluxDB store"):
            line_writer(store)
        store.close()


def test_measurement_names_that_cannot_be_written_are_refused() -> None:
    s = settings("influxdb://127.0.0.1:8086/db", alerts_measurement="bad\nname")
    with pytest.raises(ConfigError, match="store output measurement"):
        StoreOutputs(open_store(s.store), s, Metrics())  # type: ignore[arg-type]
