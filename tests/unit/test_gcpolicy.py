"""The GC policy: frozen objects skip collections; a refreeze reclaims cycles among them."""

from __future__ import annotations

import gc
import weakref

import pytest

from service.gcpolicy import GcPolicy
from service.metrics import Metrics


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _histogram_count(metrics: Metrics, generation: str) -> float:
    for metric in metrics.gc_pause.collect():
        for s in metric.samples:
            if s.name.endswith("_count") and s.labels.get("generation") == generation:
                return s.value
    return 0.0


def test_frozen_cycles_survive_collections_until_a_refreeze() -> None:
    metrics = Metrics()
    policy = GcPolicy(refreeze_s=3600, metrics=metrics)
    node = Node()
    ref = weakref.ref(node)
    policy.start()  # node is alive here, so it is frozen
    try:
        assert gc.get_freeze_count() > 0
        # Not exact: frozen objects that other threads of a full test run release meanwhile
        # leave the permanent generation between the gauge's update and this read.
        assert metrics.gc_frozen._value.get() == pytest.approx(gc.get_freeze_count(), rel=0.01)
        del node
        gc.collect()
        assert ref() is not None, "a frozen cycle must be skipped by ordinary collections"
        policy.refreeze()
        assert ref() is None, "the refreeze must reclaim cycles among frozen objects"
    finally:
        policy.stop()
    assert gc.get_freeze_count() == 0


def test_unfrozen_cycles_are_collected_and_pauses_are_counted() -> None:
    metrics = Metrics()
    policy = GcPolicy(refreeze_s=3600, metrics=metrics)
    policy.start()
    try:
        before = _histogram_count(metrics, "2")
        ref = weakref.ref(Node())  # made after the freeze: ordinary collections see it
        gc.collect()
        assert ref() is None
        assert _histogram_count(metrics, "2") == before + 1
    finally:
        policy.stop()
    assert policy._on_gc not in gc.callbacks


def test_disabled_policy_freezes_nothing_but_still_measures() -> None:
    metrics = Metrics()
    policy = GcPolicy(refreeze_s=3600, metrics=metrics, enabled=False)
    policy.start()
    try:
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert _histogram_count(metrics, "2") >= 1
    finally:
        policy.stop()


def test_young_refreeze_freezes_new_objects_and_only_a_full_one_reclaims_frozen_cycles() -> None:
    policy = GcPolicy(refreeze_s=3600)
    old = Node()
    old_ref = weakref.ref(old)
    policy.start()
    try:
        frozen_at_start = gc.get_freeze_count()
        new = [Node() for _ in range(100)]  # long-lived objects made after the start (new streams)
        del old
        policy.refreeze(full=False)
        assert gc.get_freeze_count() >= frozen_at_start + 100
        assert old_ref() is not None, "a young refreeze must not walk the frozen objects"
        policy.refreeze(full=True)
        assert old_ref() is None
        assert new[0].me is new[0]
    finally:
        policy.stop()


def test_background_loop_runs_young_refreezes_and_full_collections_on_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import service.gcpolicy as gcpolicy

    monkeypatch.setattr(gcpolicy, "_FIRST_REFREEZE_S", 0.01)
    policy = GcPolicy(refreeze_s=0.01, full_collect_s=0.3)
    node = Node()
    ref = weakref.ref(node)
    policy.start()  # node is frozen here
    try:
        del node
        time.sleep(0.1)  # several young refreezes, the full collection is not due yet
        assert ref() is not None
        deadline = time.monotonic() + 5
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ref() is None, "the scheduled full collection must reclaim the frozen cycle"
    finally:
        policy.stop()
