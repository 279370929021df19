"""The GC policy: frozen objects skip collections; a refreeze reclaims cycles among them."""

from __future__ import annotations

import gc
import weakref

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
        assert metrics.gc_frozen._value.get() == gc.get_freeze_count()
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
