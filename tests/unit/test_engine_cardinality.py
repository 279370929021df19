"""Bounded cardinality: stream limits, idle eviction and return, bounded negative routes,
warm-up reads off the engine's lock, and the paged stream listing (real engine, kit models)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.metrics import Metrics
from service.records import Alert, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.store.memory import MemoryStore
from service.streams import slots as slots_mod
from service.streams import warmup as warmup_mod
from service.streams.engine import Engine
from tests.modelkit import KitSpec, settings_for, write_model

C = 60 * 10**9  # kit cadence: 60 s
T0 = 1_700_000_000 // 60 * C
STEP = KitSpec(name="m", layers=1, hidden=8, warmup_steps=4, mean=(20.0,), std=(3.0,))


def make(tmp: Path, store: Any = None, **groups: dict[str, Any]) -> tuple[Engine, Metrics, list[Alert]]:
    models = tmp / "models"
    write_model(models, STEP)
    groups["streams"] = {"warmup_wait_s": 30.0, **groups.get("streams", {})}
    metrics = Metrics()
    alerts: list[Alert] = []
    eng = Engine(settings_for(tmp, models, **groups), ModelRegistry(models), store, metrics, on_alert=alerts.append)
    return eng, metrics, alerts


def value(i: int, k: int = 0) -> float:
    return float(20 + 3 * np.sin(i / 4.0 + k))


def step(eng: Engine, i: int, keys: Sequence[StreamKey], store: MemoryStore | None = None) -> int:
    rs = [Reading(k, T0 + i * C, value(i, n)) for n, k in enumerate(keys)]
    if store is not None:
        store.write(rs)  # the ingester stores every reading before the engine sees it
    eng.accept(rs)
    return eng.tick(T0 + i * C)


def refused(m: Metrics, reason: str) -> float:
    return float(m.streams_refused.labels(reason)._value.get())


# ------------------------------------------------------------------ limits


def test_max_streams_refuses_new_streams_counted_once_and_logged_rarely(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eng, m, _ = make(tmp_path, streams={"max_streams": 3})
    known = [StreamKey(f"d{i}", "t") for i in range(3)]
    made_at = []
    with caplog.at_level(logging.WARNING, logger="service.streams.slots"):
        for i in range(10):
            flood = [StreamKey(f"x{i}-{j}", "t") for j in range(50)]
            step(eng, i, known + flood + flood)  # each new key twice in the tick
            fc = eng.forecast("d0/t")
            made_at.append(None if fc is None else fc.ts_ns)
    assert [s.id for s in eng.streams()] == [k.id for k in known]
    assert made_at[-3:] == [T0 + i * C for i in (7, 8, 9)]  # known streams keep forecasting
    assert refused(m, "max_streams") == 10 * 50  # once per key, not per reading
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "max_streams" in lines[0].getMessage()  # rate-limited: one per 10 s


def test_max_streams_per_device(tmp_path: Path) -> None:
    eng, m, _ = make(tmp_path, streams={"max_streams_per_device": 2})
    keys = [StreamKey("a", "q1"), StreamKey("a", "q2"), StreamKey("a", "q3"), StreamKey("a", "q1", (("s", "1"),)),
            StreamKey("b", "q1")]
    step(eng, 0, keys)
    assert [s.id for s in eng.streams()] == ["a/q1", "a/q2", "b/q1"]
    assert refused(m, "max_streams_per_device") == 2 and refused(m, "max_streams") == 0


def test_refused_streams_are_still_stored(tmp_path: Path) -> None:
    from service.wiring import build_ingester

    store = MemoryStore()
    eng, m, _ = make(tmp_path, streams={"max_streams": 2})
    settings = eng.settings
    ing = build_ingester(settings, store, Metrics(), live=[eng.accept], mqtt=False)
    ing.start()
    try:
        keys = [StreamKey(f"d{i}", "t") for i in range(5)]
        ing.submit([Reading(k, T0 + t * C, value(t)) for t in range(3) for k in keys])
        eng.tick(T0 + 3 * C)
    finally:
        ing.stop()
    assert len(eng.streams()) == 2 and refused(m, "max_streams") == 3
    assert all(len(store.read_last(k, 10)) == 3 for k in keys)  # every reading of every stream


def test_unrouted_and_refused_keys_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slots_mod, "NEGATIVE_CAP", 100)
    eng, _, _ = make(tmp_path, models={"bindings": [{"model": "m", "device": "pump*"}]}, streams={"max_streams": 2})
    known = [StreamKey("pump-1", "t"), StreamKey("pump-2", "t")]
    rng = np.random.default_rng(0)
    for i in range(20):
        junk = [StreamKey(f"r{rng.integers(1 << 62)}", "t") for _ in range(200)]  # unrouted
        over = [StreamKey(f"pump-x{rng.integers(1 << 62)}", "t") for _ in range(200)]  # routed, refused
        step(eng, i, known + junk + over)
        assert len(eng._slots.routes) <= 100 + len(known)
    assert eng.forecast("pump-1/t") is not None and eng.forecast("pump-1/t").ts_ns == T0 + 19 * C  # type: ignore[union-attr]


# ------------------------------------------------------------------ eviction


@pytest.mark.parametrize("with_store", [False, True], ids=["no-store", "store"])
def test_evicted_stream_returns_with_the_forecast_it_would_have_had(tmp_path: Path, with_store: bool) -> None:
    """A evicted after 5 idle minutes, its row reused by C, returns after 9 buckets
    (<= max_gap_steps 12): its forecast equals a never-evicted engine's."""
    a, b, c = StreamKey("a", "t"), StreamKey("b", "t"), StreamKey("c", "t")
    store = MemoryStore() if with_store else None
    eng, m, _ = make(tmp_path / "e", store, streams={"idle_evict_s": 300})
    ref, _, _ = make(tmp_path / "r", streams={"idle_evict_s": 0})
    for i in range(45):
        keys = [b] if 30 <= i < 39 else [a, b]  # a is silent for 9 buckets
        if i == 37:
            keys.append(c)
        step(eng, i, keys, store)
        step(ref, i, keys)
        if i == 29:
            old_row = eng._streams["a/t"].row
        if i == 36:
            assert "a/t" not in {s.id for s in eng.streams()}  # evicted
            assert m.streams_evicted.labels("saved")._value.get() == 1
        if i == 37:
            assert eng._streams["c/t"].row == old_row  # the freed row was reused
    got, want = eng.forecast("a/t"), ref.forecast("a/t")
    assert got is not None and want is not None and got.ts_ns == want.ts_ns == T0 + 44 * C
    assert np.abs(np.array(got.mean) - np.array(want.mean)).max() <= 1e-5
    s = eng.stream("a/t")
    assert s is not None and s.status == "ok" and s.last_ts_ns == T0 + 44 * C
    assert "a/t" not in eng._slots.evicted and "c/t" in eng._slots.evicted  # c: fed once, idle since


@pytest.mark.parametrize(
    ("spec", "anomaly"),
    [
        # multivariate: one device stream (a toy model: a threshold it never reaches, so it is evicted)
        (KitSpec(name="m", features=("t", "h"), hidden=8, warmup_steps=3), {"threshold": 1 - 1e-12}),
        (KitSpec(name="m", kind="window", window=6, features=("t",), hidden=8), {}),  # a ring of inputs per row
        (STEP, {"scorer": "surprise"}),  # the other scorer's per-row state
    ],
    ids=["multivariate", "window", "surprise"],
)
def test_eviction_round_trip_keeps_every_row_array(tmp_path: Path, spec: KitSpec, anomaly: dict[str, Any]) -> None:
    feats = spec.features
    engines = []
    for name, idle in (("e", 300), ("r", 0)):
        write_model(tmp_path / name / "models", spec)
        s = settings_for(tmp_path / name, tmp_path / name / "models", anomaly=anomaly,
                         streams={"idle_evict_s": idle, "warmup_wait_s": 30.0})
        engines.append(Engine(s, ModelRegistry(tmp_path / name / "models"), None, Metrics()))
    eng, ref = engines
    sid = "a" if len(feats) > 1 else f"a/{feats[0]}"
    for i in range(45):
        for e in engines:
            rs = [Reading(StreamKey("b", feats[0]), T0 + i * C, value(i))]
            if not 30 <= i < 39:
                rs += [Reading(StreamKey("a", f), T0 + i * C, value(i, k)) for k, f in enumerate(feats)]
            e.accept(rs)
            e.tick(T0 + i * C)
        if i == 36:
            assert eng.stream(sid) is None and sid in eng._slots.evicted
    got, want = eng.forecast(sid), ref.forecast(sid)
    assert got is not None and want is not None and got.ts_ns == want.ts_ns == T0 + 44 * C
    assert np.abs(np.array(got.mean) - np.array(want.mean)).max() <= 1e-5
    g, w = eng.stream(sid), ref.stream(sid)
    assert g is not None and w is not None and g.score == pytest.approx(w.score, abs=1e-6)


def test_long_idle_stream_is_dropped_and_warms_from_the_store_on_return(tmp_path: Path) -> None:
    a, b = StreamKey("a", "t"), StreamKey("b", "t")
    store = MemoryStore()
    eng, m, _ = make(tmp_path, store, streams={"idle_evict_s": 1200, "max_gap_steps": 12},
                     anomaly={"silent_after": 0})  # a silent alert would keep it (test below)
    for i in range(20):
        step(eng, i, [a, b], store)
    for i in range(20, 50):
        step(eng, i, [b], store)  # a silent 30 buckets: at eviction its state is too old to continue
    assert m.streams_evicted.labels("dropped")._value.get() == 1 and len(eng._slots.evicted) == 0
    store.write([Reading(a, T0 + i * C, value(i)) for i in range(46, 50)])  # e.g. sent while refused
    step(eng, 50, [a, b], store)
    live = eng.forecast("a/t")
    assert live is not None and live.ts_ns == T0 + 50 * C
    # Warm-up reads warm-up + 2 buckets before the live reading: 46..49 (0..19 are too old).
    offline = eng.predict("m", None, [[value(i)] for i in range(46, 51)], [T0 + i * C for i in range(46, 51)])
    assert np.abs(np.array(live.mean) - np.array(offline.mean)).max() <= 1e-4


def test_firing_stream_is_evicted_only_once_a_return_could_not_continue_it(tmp_path: Path) -> None:
    """Evicted earlier, a returning firing stream would lose its alert; never evicted, a
    silent one would stay firing for ever. So it goes when the gap rule would reset it."""
    a, b = StreamKey("a", "t"), StreamKey("b", "t")
    # silent_after 0: a silent alert keeps its stream (test below); this is the anomaly alert's rule.
    eng, m, alerts = make(tmp_path, anomaly={"min_count": 1, "window": 1, "cooldown_s": 0, "silent_after": 0},
                          streams={"idle_evict_s": 300, "max_gap_steps": 12})
    for i in range(30):
        rs = [Reading(a, T0 + i * C, value(i) + (80 if i == 29 else 0)), Reading(b, T0 + i * C, value(i))]
        eng.accept(rs)
        eng.tick(T0 + i * C)
    assert [x.state for x in alerts if x.stream_id == "a/t"] == ["firing"]
    for i in range(30, 43):
        step(eng, i, [b])
        s = eng.stream("a/t")
        assert s is not None and s.status == "firing", i  # idle, but a return within 12 buckets continues it
    step(eng, 43, [b])  # 13 buckets after its last step: past the gap rule
    assert eng.stream("a/t") is None and m.streams_evicted.labels("dropped")._value.get() == 1
    got = [x for x in alerts if x.stream_id == "a/t"]
    assert [x.state for x in got] == ["firing", "resolved"] and got[1].extra == {"reason": "evicted"}
    assert not got[1].warm
    step(eng, 44, [a, b])  # back: a new stream that warms up, no second "resolved"
    assert [x.state for x in alerts if x.stream_id == "a/t"] == ["firing", "resolved"]
    assert eng.stream("a/t").status == "warming"  # type: ignore[union-attr]


def test_a_stream_is_not_idle_before_it_misses_two_buckets(tmp_path: Path) -> None:
    """idle_evict_s below the cadence: a stream that reads once per bucket (jittered) stays."""
    eng, m, _ = make(tmp_path, streams={"idle_evict_s": 30})
    key = StreamKey("a", "t")
    for i in range(20):
        eng.accept([Reading(key, T0 + i * C - 20 * 10**9, value(i))])
        eng.tick(T0 + i * C + 5 * 10**9)
        eng.tick(T0 + i * C + 45 * 10**9)  # a tick between readings: 40 s since the last one
    assert m.streams_evicted.labels("saved")._value.get() == 0 and eng.stream("a/t") is not None
    for i in range(20, 23):
        eng.tick(T0 + i * C + 5 * 10**9)  # silent for two buckets and a bit: now it is idle
    assert eng.stream("a/t") is None and m.streams_evicted.labels("saved")._value.get() == 1


def test_eviction_frees_room_for_refused_streams(tmp_path: Path) -> None:
    eng, m, _ = make(tmp_path, streams={"max_streams": 2, "idle_evict_s": 300})
    a, b, c = StreamKey("a", "t"), StreamKey("b", "t"), StreamKey("c", "t")
    for i in range(10):
        step(eng, i, [a, b, c] if i >= 5 else [a, b])
    assert refused(m, "max_streams") == 1 and {s.id for s in eng.streams()} == {"a/t", "b/t"}
    for i in range(10, 20):
        step(eng, i, [b, c])  # a goes silent and is evicted: c gets its row
    assert {s.id for s in eng.streams()} == {"b/t", "c/t"}


# ------------------------------------------------------------------ warm-up off the lock


class GatedStore(MemoryStore):
    """A memory store whose bulk reads wait for ``gate`` (a slow database), counted."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []
        self.entered = threading.Event()

    def read_last_many(self, streams: Sequence[StreamKey], n: int) -> dict[StreamKey, list[Reading]]:
        self.calls.append(len(streams))
        self.entered.set()
        assert self.gate.wait(30)
        return super().read_last_many(streams, n)


def _history(store: MemoryStore, keys: Sequence[StreamKey], upto: int) -> None:
    store.write([Reading(k, T0 + i * C, value(i, n)) for n, k in enumerate(keys) for i in range(upto)])


def test_tick_waits_for_warm_up_reads_without_the_lock(tmp_path: Path) -> None:
    store = GatedStore()
    eng, _, _ = make(tmp_path, store, streams={"warmup_wait_s": 30.0})
    known = StreamKey("known", "t")
    for i in range(10):
        step(eng, i, [known])
    new = [StreamKey(f"n{j}", "t") for j in range(50)]
    _history(store, new, 10)
    store.gate.clear()
    store.calls.clear()
    store.entered.clear()
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(step(eng, 10, [known, *new])))
    t.start()
    assert store.entered.wait(10)
    # The tick is waiting for the store: the lock is free and the known stream has stepped.
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(eng.stream("known/t")))
    reader.start()
    reader.join(5)
    assert got and got[0].last_ts_ns == T0 + 10 * C
    assert eng.stream("n0/t").status == "warming"  # type: ignore[union-attr]
    store.gate.set()
    t.join(10)
    assert store.calls == [50]  # one bulk read for the 50 new streams
    need = STEP.warmup_steps + 2 + 1
    assert done == [1 + 50 * need]  # the known step, then each new stream's history + live reading
    assert {s.status for s in eng.streams()} == {"ok"}


def test_late_warm_up_answer_is_applied_by_a_later_tick(tmp_path: Path) -> None:
    """The store answers after the tick stopped waiting: the new stream's readings wait
    (not stepped without history), and the forecast is the same as with a fast store."""
    store = GatedStore()
    eng, _, _ = make(tmp_path / "slow", store, streams={"warmup_wait_s": 0.01})
    fast_store = MemoryStore()
    ref, _, _ = make(tmp_path / "fast", fast_store)
    key = StreamKey("n", "t")
    _history(store, [key], 20)
    _history(fast_store, [key], 20)
    store.gate.clear()
    for i in (20, 21):
        assert step(eng, i, [key]) == 0  # waiting for its history: nothing stepped
        step(ref, i, [key])
    assert eng.stream("n/t").warm_have == 0  # type: ignore[union-attr]
    store.gate.set()
    for _ in range(100):
        if eng.tick(T0 + 21 * C):
            break
        threading.Event().wait(0.02)
    got, want = eng.forecast("n/t"), ref.forecast("n/t")
    assert got is not None and want is not None and got.ts_ns == want.ts_ns == T0 + 21 * C
    assert np.abs(np.array(got.mean) - np.array(want.mean)).max() <= 1e-5


def test_reads_queued_while_the_store_is_busy_share_one_query(tmp_path: Path) -> None:
    store = GatedStore()
    eng, _, _ = make(tmp_path, store, streams={"warmup_wait_s": 0.0})
    groups = [[StreamKey(f"g{g}-{j}", "t") for j in range(10 + g)] for g in range(3)]
    _history(store, [k for g in groups for k in g], 20)
    store.gate.clear()
    step(eng, 20, groups[0])
    assert store.entered.wait(10)  # the first read is at the store
    step(eng, 21, groups[1])
    step(eng, 22, groups[2])  # queued behind it with the second
    store.gate.set()
    for _ in range(500):
        eng.tick(T0 + 22 * C)
        if all(s.status == "ok" for s in eng.streams()):
            break
        threading.Event().wait(0.01)
    assert store.calls == [10, 11 + 12]
    assert len(eng.streams()) == 33 and all(s.status == "ok" for s in eng.streams())


def test_checkpoint_taken_while_warm_up_was_in_flight_warms_from_the_store_after_restore(tmp_path: Path) -> None:
    store = GatedStore()
    eng, _, _ = make(tmp_path, store, streams={"warmup_wait_s": 0.0})
    key = StreamKey("n", "t")
    _history(store, [key], 20)
    store.gate.clear()
    try:
        step(eng, 20, [key])  # its history read is stuck at the store
        assert eng.checkpoint() == 1
    finally:
        store.gate.set()
    again = Engine(eng.settings.model_copy(update={"streams": eng.settings.streams.model_copy(
        update={"warmup_wait_s": 30.0})}), ModelRegistry(eng.settings.models.dir), store, Metrics())
    assert again.restore() == 1
    store.calls.clear()
    step(again, 21, [key])
    assert store.calls == [1]  # warmed from the store, not live from nothing
    s = again.stream("n/t")
    assert s is not None and s.status == "ok"


def test_unanswered_warm_up_is_given_up_and_the_stream_goes_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup_mod, "GIVE_UP_S", 0.0)
    store = GatedStore()
    eng, _, _ = make(tmp_path, store, streams={"warmup_wait_s": 0.0})
    key = StreamKey("n", "t")
    _history(store, [key], 20)
    store.gate.clear()
    try:
        step(eng, 20, [key])
        step(eng, 21, [key])  # gives up on the read: both live readings step, no history
        s = eng.stream("n/t")
        assert s is not None and s.warm_have == 2
    finally:
        store.gate.set()
    reader = eng._warm.reader
    assert reader is not None
    for _ in range(500):
        if reader._done:
            break
        threading.Event().wait(0.01)
    assert reader._done
    eng.tick(T0 + 21 * C + 1)  # the late answer is ignored
    assert eng.stream("n/t").warm_have == 2  # type: ignore[union-attr]


# ------------------------------------------------------------------ listing


def test_streams_page_walks_every_stream_once_in_id_order(tmp_path: Path) -> None:
    eng, _, _ = make(tmp_path, anomaly={"min_count": 1, "window": 1, "cooldown_s": 0})
    keys = [StreamKey(f"d{j:04d}", "t") for j in range(700)]
    for i in range(6):
        eng.accept([Reading(k, T0 + i * C, value(i) + (90 if i == 5 and j % 100 == 0 else 0))
                    for j, k in enumerate(keys)])
        eng.tick(T0 + i * C)
    seen: list[str] = []
    after = None
    while True:
        page, after = eng.streams_page(256, after)
        seen += [s.id for s in page]
        assert len(page) <= 256
        if after is None:
            break
    assert seen == sorted(k.id for k in keys)
    assert [s.id for s in eng.streams_page(1000)[0]] == [s.id for s in eng.streams()]
    firing, nxt = eng.streams_page(3, None, "firing")
    assert [s.id for s in firing] == ["d0000/t", "d0100/t", "d0200/t"] and nxt == "d0200/t"
    rest, nxt = eng.streams_page(100, nxt, "firing")
    assert [s.id for s in rest] == [f"d{j:04d}/t" for j in range(300, 700, 100)] and nxt is None
    assert eng.streams_page(10, "zzz") == ([], None)


def test_a_silent_stream_is_kept_while_its_silent_alert_fires(tmp_path: Path) -> None:
    """A dead sensor stays alerted: idle eviction passes over a stream whose silent alert
    fires (it would otherwise resolve 'evicted' after idle_evict_s, and nothing alert again)."""
    a, b = StreamKey("a", "t"), StreamKey("b", "t")
    # Silent after 10 buckets (the default: 10 cadences), idle eviction after 15.
    eng, m, alerts = make(tmp_path, streams={"idle_evict_s": 900, "max_gap_steps": 12})
    for i in range(20):
        step(eng, i, [a, b])
    for i in range(20, 60):  # a is silent for 40 buckets: far past idle_evict_s and the gap rule
        step(eng, i, [b])
    s = eng.stream("a/t")
    assert s is not None and "silent" in s.checks_firing
    assert [(x.check, x.state) for x in alerts if x.stream_id == "a/t"] == [("silent", "firing")]
    assert m.streams_evicted.labels("dropped")._value.get() == 0
    step(eng, 60, [a, b])  # back: the silent alert resolves, saying how long
    back = [x for x in alerts if x.stream_id == "a/t" and x.state == "resolved"]
    assert [x.check for x in back] == ["silent"] and float(back[0].extra["silent_s"]) > 0


def test_a_stream_seen_once_never_goes_silent(tmp_path: Path) -> None:
    """Only established (warm) streams can go silent: one-off topics must not each leave an alert."""
    eng, _, alerts = make(tmp_path, streams={"idle_evict_s": 0})
    step(eng, 0, [StreamKey("once", "t"), StreamKey("b", "t")])
    for i in range(1, 40):
        step(eng, i, [StreamKey("b", "t")])
    assert [x for x in alerts if x.check == "silent"] == []
