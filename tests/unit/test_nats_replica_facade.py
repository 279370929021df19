"""The replica's EngineLike facade over its partitions' engines (real engines, no server: the
replica is not started, its workers' places are taken by holders of real engines)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from service.config import Settings
from service.metrics import Metrics
from service.nats.provision import Names
from service.nats.replica import Replica
from service.records import Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from tools.modelkit import KitSpec, write_model

C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C


@dataclass
class Holder:
    engine: Engine
    active: bool = True


@pytest.fixture
def replica(tmp_path: Path) -> Replica:
    write_model(tmp_path / "m", KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=3))
    settings = Settings(models={"dir": tmp_path / "m", "watch": False}, nats={"url": "nats://127.0.0.1:1"},
                        streams={"checkpoint_dir": tmp_path / "state"})
    metrics = Metrics()
    registry = ModelRegistry(tmp_path / "m", 1, metrics)
    rep = Replica(settings, registry, metrics, names=Names.of(settings.nats))
    for p, devices in enumerate((["a", "c", "e"], ["b", "d"])):
        e = Engine(settings, registry, None, metrics)
        e.accept([Reading(StreamKey(d, "v"), T0 + i * C, 20.0 + i % 3 + (40.0 if (d, i) == ("d", 8) else 0.0))
                  for i in range(12) for d in devices])
        e.tick()
        rep.workers[p] = Holder(e)  # type: ignore[assignment]
    return rep


def test_streams_are_merged_in_id_order_and_paged_across_partitions(replica: Replica) -> None:
    assert [s.id for s in replica.streams()] == ["a/v", "b/v", "c/v", "d/v", "e/v"]
    page, nxt = replica.streams_page(2)
    assert [s.id for s in page] == ["a/v", "b/v"] and nxt == "b/v"
    page, nxt = replica.streams_page(2, nxt)
    assert [s.id for s in page] == ["c/v", "d/v"] and nxt == "d/v"
    page, nxt = replica.streams_page(2, nxt)
    assert [s.id for s in page] == ["e/v"] and nxt is None


def test_a_stream_is_answered_by_the_engine_that_has_it(replica: Replica) -> None:
    assert replica.stream("d/v") is not None and replica.stream("x/v") is None
    fc = replica.forecast("d/v")
    assert fc is not None and fc.stream_id == "d/v"
    found = replica.lookup_forecast("b/v")
    assert found is not None and found.known and found.forecast is not None
    missing = replica.lookup_forecast("x/v")
    assert missing is not None and not missing.known
    assert replica.rules_of("e/v") is not None and replica.rules_of("x/v") is None


def test_models_count_every_partition_and_alerts_merge_newest_first(replica: Replica) -> None:
    (info,) = replica.models()
    assert info.streams == 5
    alerts = replica.recent_alerts()
    assert alerts and {a.stream_id for a in alerts} == {"d/v"}
    assert [a.ts_ns for a in alerts] == sorted((a.ts_ns for a in alerts), reverse=True)


def test_a_stopped_partition_leaves_the_facade_and_forget_finds_the_stream(replica: Replica) -> None:
    replica.workers[1].active = False  # type: ignore[misc]
    assert [s.id for s in replica.streams()] == ["a/v", "c/v", "e/v"]
    assert replica.stream("b/v") is None
    assert replica.forget_stream("a/v") is True and replica.stream("a/v") is None
    assert replica.forget_stream("b/v") is False  # its partition is not this replica's any more
