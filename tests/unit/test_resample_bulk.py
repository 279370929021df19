"""History in bulk (``Resampler.add_many`` + ``take_ready``, the warm-up and catch-up path)
feeds exactly what adding the readings one by one feeds: the same steps (buckets, values,
resets), drops and position; and through the engine, the same steps into the model and the
same forecasts and scores, for histories with duplicates, out-of-order rows, short and long
gaps, NaN and multi-feature streams."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.store.memory import MemoryStore
from service.streams import resample_batch
from service.streams.engine import Engine
from service.streams.resample import Resampler, Step, take_ready_many
from tests.modelkit import KitSpec, settings_for, write_model

C = 10  # cadence in ns (resampler level)

reading_st = st.tuples(
    st.integers(0, 60),  # bucket
    st.sampled_from([0, 0, -1, -3, -9]),  # offset inside the bucket (0: on its end)
    st.integers(0, 2),  # feature (mod the stream's count)
    st.integers(-50, 50),  # value
)


def _flat(block: Any, steps: list[Step]) -> list[Step]:
    out = [] if block is None else [
        Step(int(b), tuple(float(v) for v in x), bool(r)) for b, x, r in zip(block.buckets, block.x, block.reset, strict=True)
    ]
    return out + steps


def _same(a: list[Step], b: list[Step]) -> bool:
    """Equal steps, NaN equal to NaN, values bit for bit."""
    return len(a) == len(b) and all(
        s.bucket == t.bucket and s.reset == t.reset
        and all((u == v and math.copysign(1, u) == math.copysign(1, v)) or (u != u and v != v)
                for u, v in zip(s.values, t.values, strict=True))
        for s, t in zip(a, b, strict=True))


@given(
    history=st.lists(reading_st, max_size=80),
    before=st.lists(reading_st, max_size=4),  # live readings pending when the history comes
    after=st.lists(reading_st, max_size=6),  # live readings after it, before the tick's steps
    n_feat=st.sampled_from([1, 1, 2, 3]),
    tol=st.integers(0, 3),
    max_gap=st.integers(0, 5),
    grace=st.sampled_from([0, 4]),
    # The position: nothing fed yet, fed up to a bucket, or started over (-1: its newest fed reading stays).
    start=st.sampled_from([None, None, 0, 12, -1]),
    now=st.integers(0, 120),  # often before the newest bucket ends: the stream clock, the tolerance decide
    shuffle=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(  # a gap right before the newest bucket, within the tolerance: it waits for stragglers
    history=[(10, 0, 0, 1), (12, 0, 0, 2), (13, -3, 0, 3)], before=[], after=[], n_feat=1, tol=2, max_gap=5,
    grace=0, start=None, now=12, shuffle=False, seed=0)
@settings(max_examples=400, deadline=None)
def test_bulk_history_feeds_what_reading_by_reading_feeds(
    history: list[tuple[int, int, int, int]], before: list[tuple[int, int, int, int]],
    after: list[tuple[int, int, int, int]], n_feat: int, tol: int, max_gap: int, grace: int,
    start: int | None, now: int, shuffle: bool, seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    hist = [(b * C + o, f % n_feat, float(v) / 4) for b, o, f, v in history]
    if hist:  # duplicates: some readings twice, with the same or another value
        for i in rng.integers(0, len(hist), 3).tolist():
            ts, f, v = hist[i]
            hist.append((ts, f, v if rng.random() < 0.5 else v + 1.0))
        if not shuffle:
            hist.sort()
    live_before = [(b * C + o + 300, f % n_feat, float(v)) for b, o, f, v in before]
    live_after = [(b * C + o + 200, f % n_feat, float(v)) for b, o, f, v in after]

    ref, bulk = (Resampler(C, n_feat, tol, max_gap, grace) for _ in range(2))
    for r in (ref, bulk):
        r.restore(None if start in (None, -1) else start, {None: -(2**62), -1: 95 * C}.get(start, (start or 0) * C))
        for ts, f, v in live_before:
            r.add(ts, f, v)
    want_added = sum(ref.add(ts, f, v) is None for ts, f, v in hist)
    arr = np.array([h[0] for h in hist], np.int64), np.array([h[1] for h in hist], np.int64)
    got_added = bulk.add_many(arr[0], arr[1], np.array([h[2] for h in hist], np.float64))
    assert got_added == want_added
    assert bulk.first_pending_ts() == ref.first_pending_ts()
    assert bulk.pending == ref.pending
    assert bulk.stream_clock(now * C) == ref.stream_clock(now * C)
    assert [bulk.add(ts, f, v) for ts, f, v in live_after] == [ref.add(ts, f, v) for ts, f, v in live_after]
    assert bulk.due_after(now * C) == ref.due_after(now * C)

    want = ref.ready(now * C)
    if seed % 2:  # on its own
        block, steps = bulk.take_ready(now * C)
    else:  # settled at once with a neighbour (another history, its own reference), as the engine does
        other, other_ref = (Resampler(C, n_feat, tol, max_gap, grace) for _ in range(2))
        hist2 = [(ts + 70, (f + 1) % n_feat, v * 3) for ts, f, v in reversed(hist)]
        other.add(700, 0, 1.0)
        other_ref.add(700, 0, 1.0)
        other.add_many(np.array([h[0] for h in hist2], np.int64), np.array([h[1] for h in hist2], np.int64),
                       np.array([h[2] for h in hist2], np.float64))
        for ts, f, v in hist2:
            other_ref.add(ts, f, v)
        (block, steps), (block2, steps2) = take_ready_many([bulk, other], now * C)
        assert _same(_flat(block2, steps2), other_ref.ready(now * C))
    assert _same(_flat(block, steps), want)
    assert (bulk.next_bucket, bulk.last_fed_ts, bulk.pending) == (ref.next_bucket, ref.last_fed_ts, ref.pending)
    assert bulk.first_pending_ts() == ref.first_pending_ts()
    later = (now + 500) * C  # the rest, once the clock has passed every bucket
    assert _same(bulk.ready(later), ref.ready(later))


def test_history_older_than_the_live_reading_is_stepped_in_bulk() -> None:
    """The bulk path is taken: a 150-step history comes back as one block, its newest
    buckets (within the late tolerance of the live reading) one by one."""
    res = Resampler(C, 1, tolerance=2, max_gap=3)
    res.add(160 * C, 0, 1.0)  # the live reading that made the stream warm up
    ts = np.arange(10, 160, dtype=np.int64) * C
    ts = ts[(ts // C) % 17 != 0]  # some missing buckets: bridged with NaN
    ts = np.concatenate([ts[:40], ts[60:61] + 0, ts[40:]])  # a duplicate
    assert res.add_many(ts, np.zeros(len(ts), np.int64), ts.astype(np.float64) / C) == len(ts) - 1
    block, steps = res.take_ready(160 * C)
    assert block is not None and block.buckets.tolist() == list(range(10, 159))
    assert np.isnan(block.x[block.buckets % 17 == 0]).all() and not block.reset.any()
    assert [s.bucket for s in steps] == [159, 160]
    assert res.pending == 0 and res.next_bucket == 161


# -- through the engine ---------------------------------------------------------------

CAD = 60 * 10**9
T0 = 1_700_000_000 // 60 * CAD
N_HIST = 60


def _histories(store: MemoryStore, rng: np.random.Generator) -> list[Reading]:
    """Univariate streams u0..u5 and devices d0..d2 (features a, b, c): readings on and off
    the cadence, several per bucket, missing buckets, a short and a long gap, NaN values,
    features missing in some buckets; and the live readings that start them."""
    live: list[Reading] = []
    keys = [StreamKey(f"u{i}", "value") for i in range(6)] + [
        StreamKey(f"d{i}", q) for i in range(3) for q in ("a", "b", "c")]
    for n, key in enumerate(keys):
        pts: dict[int, float] = {}
        g = n if n < 6 else 6 + (n - 6) // 3  # a device's quantities share their gaps
        for b in range(N_HIST):
            if (g % 3 == 0 and 20 <= b < 23) or (g % 3 == 1 and 30 <= b < 45) or rng.random() < 0.08:
                continue  # a short gap, a long one (past max_gap_steps), missing buckets
            for _ in range(int(rng.integers(1, 4))):  # 1-3 readings in the bucket, on or off its end
                off = 0 if rng.random() < 0.5 else int(rng.integers(1, CAD))
                pts[T0 + b * CAD - off] = float(20 + 3 * np.sin(b / 5) + rng.normal(0, 0.3))
        for t in rng.choice(sorted(pts), 3, replace=False).tolist():
            pts[t] = math.nan  # stored NaN: never fed
        store.points[key] = pts
        now = T0 + N_HIST * CAD
        live.append(Reading(key, now, 21.0))
        if n % 2:  # a live reading in the history's newest bucket, out of order
            live.append(Reading(key, now - CAD - 5, 22.0))
    return live


def _again(store: MemoryStore) -> list[Reading]:
    """Stored readings sent again (a redelivery): dropped as duplicate or late."""
    return [Reading(k, t, v) for k, pts in store.points.items() for t, v in sorted(pts.items())[-2:] if v == v]


def _run(tmp: Path, bulk: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[Any, ...]]]:
    """Every step fed to the model per stream: (bucket, inputs, restart, forecast, score, evidence)."""
    if not bulk:  # the reference: the history added one reading at a time
        def one_by_one(self: Resampler, ts: Any, f: Any, v: Any) -> int:
            return sum(self.add(t, g, w) is None for t, g, w in zip(ts.tolist(), f.tolist(), v.tolist(), strict=True))

        def no_block(self: Resampler, now: int) -> tuple[None, list[Step]]:
            return None, self.ready(now)

        monkeypatch.setattr(Resampler, "add_many", one_by_one)
        monkeypatch.setattr(Resampler, "take_ready", no_block)
    blocks = [0]
    if bulk:  # count the streams whose history came out as a block (the bulk path is taken)
        many = resample_batch.take_ready_many

        def counting(rs: list[Resampler], now: int) -> Any:
            got = many(rs, now)
            blocks[0] += sum(b is not None for b, _ in got)
            return got

        monkeypatch.setattr(resample_batch, "take_ready_many", counting)
    root = tmp / ("bulk" if bulk else "ref")
    models = root / "models"
    for name, feats in (("uni", ("value",)), ("dev", ("a", "b", "c"))):
        write_model(models, KitSpec(name=name, layers=2, hidden=8, features=feats, warmup_steps=50, horizon=4,
                                    mean=(20.0,) * len(feats), std=(3.0,) * len(feats)))
    s = settings_for(root, models, streams={"warmup_wait_s": 30.0, "max_gap_steps": 5, "late_tolerance_steps": 2})
    store = MemoryStore()
    live = _histories(store, np.random.default_rng(7))
    eng = Engine(s, ModelRegistry(models), store, Metrics())
    fed: dict[str, list[tuple[Any, ...]]] = {}
    take = eng._resampler.take

    def recording(now: int, lanes: Any) -> Any:
        for batch in take(now, lanes):
            restarts = {st.row for st in batch.restarts}
            yield batch
            lane = batch.lane
            ids = {row: sid for sid, stv in eng._streams.items() if stv.lane is lane for row in [stv.row]}
            for i, row in enumerate(batch.rows.tolist()):
                fed.setdefault(ids[row], []).append((
                    int(batch.buckets[i]), batch.x[i].tolist(), row in restarts, lane.table.fc[row].tolist(),
                    np.asarray(lane.anomaly.score[row]).tolist(), np.asarray(lane.anomaly.log_evidence[row]).tolist()))

    eng._resampler.take = recording  # type: ignore[method-assign]
    eng.accept(live)
    eng.tick(T0 + N_HIST * CAD + 1)
    for k in range(1, 8):  # live steps after warm-up: the forecasts and scores go on alike
        eng.accept([Reading(r.stream, T0 + (N_HIST + k) * CAD, 20.0 + k) for r in live if r.ts_ns == T0 + N_HIST * CAD])
        if k == 1:
            eng.accept(_again(store))
        eng.tick(T0 + (N_HIST + k) * CAD + 1)
    dropped = {r: eng.metrics.late_dropped.labels(r)._value.get() for r in ("late", "duplicate")}
    fed["_drops"] = [tuple(sorted(dropped.items()))]
    fed["_blocks"] = [(blocks[0],)]
    monkeypatch.undo()
    return fed


def _close(a: Any, b: Any) -> bool:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return x.shape == y.shape and bool(np.all((np.abs(x - y) <= 1e-6) | (np.isnan(x) & np.isnan(y))))


def test_engine_warm_up_in_bulk_feeds_and_outputs_what_one_by_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = _run(tmp_path, True, monkeypatch)
    want = _run(tmp_path, False, monkeypatch)
    assert sorted(got) == sorted(want)
    assert got["_blocks"] == [(9,)]  # every stream's history (6 streams, 3 devices) in bulk
    assert got["_drops"] == want["_drops"] and sum(dict(want["_drops"][0]).values()) > 0
    assert sum(any(step[2] for step in steps) for sid, steps in want.items() if sid[0] != "_") >= 3  # long gaps
    for sid in want:
        if sid[0] == "_":
            continue
        assert len(got[sid]) == len(want[sid]) > 30, sid
        for g, w in zip(got[sid], want[sid], strict=True):
            assert g[0] == w[0] and g[2] == w[2], (sid, g[0], w[0])
            assert _close(g[1], w[1]) and _close(g[3], w[3]) and _close(g[4], w[4]) and _close(g[5], w[5]), (sid, g[0])
    devices = [sid for sid in want if sid.startswith("d")]
    assert len(devices) == 3 and any(np.isnan(w[1]).any() and not np.isnan(w[1]).all()
                                     for sid in devices for w in want[sid])  # a feature missing in a bucket
