"""Shared fixtures: real mosquitto and influxd on free loopback ports, data paths.

Servers are started by the fixtures themselves, never found already running. Session
fixtures are shared and must be left running; tests that kill or restart a server use
the ``fresh_*`` factories, which give them their own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.localservers import Influxd, Mosquitto, start_influxd, start_mosquitto

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SENSORCAST_BENCH_DATA", REPO.parent / "shared" / "data"))


def _need(binary: str) -> None:
    if shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{binary} is not installed: `make setup` installs it")
    pytest.skip(f"{binary} not installed (make setup installs it)")


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    _need("mosquitto")
    with start_mosquitto() as server:
        yield server


@pytest.fixture(scope="session")
def influxd() -> Iterator[Influxd]:
    _need("influxd")
    with start_influxd() as server:
        yield server


@pytest.fixture
def fresh_mosquitto() -> Iterator[Callable[..., Mosquitto]]:
    """Factory for a broker this test may kill or restart."""
    _need("mosquitto")
    started: list[Mosquitto] = []

    def make(**kw: object) -> Mosquitto:
        server = start_mosquitto(**kw)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def fresh_influxd() -> Iterator[Callable[..., Influxd]]:
    """Factory for an influxd this test may kill or restart."""
    _need("influxd")
    started: list[Influxd] = []

    def make(**kw: object) -> Influxd:
        server = start_influxd(**kw)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (or $SENSORCAST_BENCH_DATA); skips cleanly when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
