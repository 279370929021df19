"""Shared fixtures: real mosquitto and influxd on free loopback ports, data paths; and
the markers every test gets from where it lives and what it uses.

Servers are started by the fixtures themselves, never found already running. Session
fixtures are shared and must be left running; tests that kill or restart a server use
the ``fresh_*`` factories, which give them their own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tools.localservers import (
    Influxd,
    Mosquitto,
    NatsCluster,
    start_influxd,
    start_mosquitto,
    start_nats,
)

REPO = Path(__file__).resolve().parent.parent
S = TypeVar("S", Mosquitto, Influxd, NatsCluster)  # a server the fresh_* factories start

SHARED_DATA = Path(os.environ.get("SENSORCAST_BENCH_DATA", REPO.parent / "shared" / "data"))

# Markers a test gets from its folder (the first part of its path under tests/), so that
# a file cannot forget them: `make test-fast` deselects `integration`, and a test there
# without the mark started a real broker (tests/integration/test_loadgen.py did).
FOLDER_MARKS: dict[str, tuple[str, ...]] = {
    "integration": ("integration",),  # real servers, or `sensorcast` processes
    "faults": ("integration",),  # the same, killed, slowed and filled up on purpose
    "security": ("integration",),  # TLS brokers and served APIs
    "artefact": ("artefact",),  # trains and exports with torch
    "stack": ("stack", "integration", "slow"),  # the compose stack under podman
}
# Markers a test gets from the fixtures it uses (directly or through other fixtures),
# wherever it lives: a unit or hostile test that asks for a server is an integration test.
FIXTURE_MARKS: dict[str, str] = {
    "mosquitto": "integration",
    "influxd": "integration",
    "fresh_mosquitto": "integration",
    "fresh_influxd": "integration",
    "nats_cluster": "integration",
    "fresh_nats": "integration",
    "shared_data": "bench_data",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        rel = item.path.resolve().relative_to(tests_dir)
        wanted = set(FOLDER_MARKS.get(rel.parts[0], ())) if len(rel.parts) > 1 else set()
        wanted.update(FIXTURE_MARKS[f] for f in getattr(item, "fixturenames", ()) if f in FIXTURE_MARKS)
        have = {m.name for m in item.iter_markers()}
        for name in sorted(wanted - have):
            item.add_marker(getattr(pytest.mark, name))


def _need(binary: str) -> None:
    if shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{binary} is not installed: `make setup` installs it")
    pytest.skip(f"{binary} not installed (make setup installs it)")


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    """Three nats-server nodes (JetStream, MQTT listeners, partition mapping: 4 partitions on
    sensors/{device}/{quantity}); shared, so tests use their own stream names."""
    _need("nats-server")
    with start_nats(3, partitions=4) as cluster:
        yield cluster


@pytest.fixture
def fresh_nats() -> Iterator[Callable[..., NatsCluster]]:
    """Factory for NATS servers this test may kill (``start_nats``'s keywords)."""
    _need("nats-server")
    yield from _stopped_after(start_nats)


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


def _stopped_after(start: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """A fixture's factory of servers (``start``'s keywords), each stopped after the test."""
    started: list[S] = []

    def make(**kw: Any) -> S:
        server = start(**kw)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def fresh_mosquitto() -> Iterator[Callable[..., Mosquitto]]:
    """Factory for a broker this test may kill or restart."""
    _need("mosquitto")
    yield from _stopped_after(start_mosquitto)


@pytest.fixture
def fresh_influxd() -> Iterator[Callable[..., Influxd]]:
    """Factory for an influxd this test may kill or restart."""
    _need("influxd")
    yield from _stopped_after(start_influxd)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (or $SENSORCAST_BENCH_DATA); skips cleanly when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
