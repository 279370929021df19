"""Reading the lanes out: stream status snapshots and records.

The engine gathers the numbers of many rows at once under its lock (``fill_snapshot``:
a few fancy-indexing gathers per lane) and builds the records after releasing it
(``statuses``), so listing 100k streams does not stall the tick.

Snapshot keys (arrays aligned with the requested ids): ``known``, ``warm``, ``firing``
(bool: the anomaly alert), ``alerting`` (bool: any check's alert, what a stream's status
"firing" means, as the streams gauge counts); ``last_ts_ns`` (int64, -1 when nothing fed); ``warm_have``, ``warm_need``,
``feature`` (int64: the output feature the numbers refer to); ``value``, ``expected``,
``lower``, ``upper``, ``score``, ``evidence`` (``-log10(1 - score)``, unsaturated) (float64,
NaN when unknown or unscored); a predicted
breach's ``breach_eta_s``, ``breach_probability``, ``breach_limit`` (float64, NaN: none),
``breach_side`` (int64: 0 upper, 1 lower, -1 none) and ``breach_feature`` (int64, -1:
none); ``checks`` (the checks firing) and ``held_by`` (the data-quality check holding ML
alerts back): object arrays, None for the many streams with nothing to say.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Reversible, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service.anomaly.breach import SIDES
from service.arrays import IntArr
from service.records import Alert, StreamKey
from service.runtime.registry import LoadedModel, ModelRegistry
from service.streams.breach_stage import CHECK, BreachStage
from service.streams.emit import forecast_of
from service.streams.lane import Lane, Stream
from service.streams.status import ForecastLookup, ModelInfo, StreamStatus

Snapshot = dict[str, npt.NDArray[Any]]
StreamMeta = tuple[str, str, str, LoadedModel]  # id, device, quantity, model
ML_CHECKS = frozenset({"anomaly", "predicted_breach"})  # the others are data-quality checks


class QualityRows(Protocol):
    """What the read-out needs of a lane's data-quality stage (``lane.quality``)."""

    def holding(self, rows: IntArr) -> npt.NDArray[np.bool_]: ...

    def firing_checks(self, rows: IntArr) -> list[tuple[int, str]]: ...


def empty_snapshot(n: int) -> Snapshot:
    out: Snapshot = {
        "known": np.zeros(n, bool), "warm": np.zeros(n, bool), "firing": np.zeros(n, bool), "alerting": np.zeros(n, bool),
        "last_ts_ns": np.full(n, -1, np.int64), "warm_have": np.zeros(n, np.int64),
        "warm_need": np.zeros(n, np.int64), "feature": np.zeros(n, np.int64), "kept_out": np.zeros(n, np.int64),
    }
    for k in ("value", "expected", "lower", "upper", "score", "evidence", "breach_eta_s", "breach_probability",
              "breach_limit"):
        out[k] = np.full(n, np.nan)
    out["breach_side"] = np.full(n, -1, np.int64)
    out["breach_feature"] = np.full(n, -1, np.int64)
    out["checks"] = np.full(n, None, object)
    out["held_by"] = np.full(n, None, object)
    return out


def fill_snapshot(out: Snapshot, lane: Lane, idx: IntArr, rows: IntArr) -> None:
    """Write the numbers of lane rows ``rows`` into snapshot positions ``idx``."""
    t, a = lane.table, lane.anomaly
    j = a.worst(rows)  # the output feature the numbers refer to
    out["kept_out"][idx] = a.held[rows]
    have = t.warm_have[rows]
    expected = a.expected[rows, j]
    half = a.band_z * a.spread[rows, j]
    i_in = a.out_in[j]
    value = np.where(i_in >= 0, t.last_x[rows, np.maximum(i_in, 0)], np.nan)
    scored = ~np.isnan(a.score[rows])
    out["known"][idx] = True
    out["warm_have"][idx] = have
    out["warm_need"][idx] = t.warm_need
    out["feature"][idx] = j
    out["warm"][idx] = have >= t.warm_need
    out["firing"][idx] = a.decider.firing[rows]
    out["last_ts_ns"][idx] = np.where(have > 0, t.last_bucket[rows] * lane.cadence_ns, -1)
    out["value"][idx] = np.where(have > 0, value, np.nan)
    out["expected"][idx] = np.where(have > 0, expected, np.nan)
    out["score"][idx] = a.score[rows]
    out["evidence"][idx] = a.log_evidence[rows]
    out["lower"][idx] = np.where(scored, expected - half, np.nan)
    out["upper"][idx] = np.where(scored, expected + half, np.nan)
    fill_checks(out, lane, idx, rows)


def fill_checks(out: Snapshot, lane: Lane, idx: IntArr, rows: IntArr) -> None:
    """The predicted breach, the checks firing and what holds ML alerts back, of lane rows
    ``rows`` into positions ``idx`` (whole-array reads; Python only for firing rows)."""
    # The stages that are there: a lane may have no breach or quality stage.
    breach: BreachStage | None = getattr(lane, "breach", None)
    quality: QualityRows | None = getattr(lane, "quality", None)
    firing: dict[int, list[str]] = {}  # snapshot-local position -> checks
    for i in np.flatnonzero(lane.anomaly.decider.firing[rows]).tolist():
        firing[i] = ["anomaly"]
    if quality is not None:
        found = quality.firing_checks(rows)
        if found:
            at = {r: i for i, r in enumerate(rows.tolist())}  # rows are distinct within a lane
            for row, check in found:
                firing.setdefault(at[row], []).append(check)
        for i in np.flatnonzero(quality.holding(rows)).tolist():
            held = [c for c in firing.get(i, []) if c not in ML_CHECKS]
            out["held_by"][idx[i]] = held[0] if held else "data_quality"
    if breach is not None:
        eta, probability, feature = breach.eta(rows)
        out["breach_eta_s"][idx] = eta
        out["breach_probability"][idx] = probability
        out["breach_feature"][idx] = feature
        out["breach_limit"][idx] = breach.limit[rows]
        out["breach_side"][idx] = breach.side[rows]
        for i in np.flatnonzero(breach.firing[rows]).tolist():
            firing.setdefault(i, []).append(CHECK)
    for i, checks in firing.items():
        out["checks"][idx[i]] = checks
        out["alerting"][idx[i]] = True


def status_mask(snap: Snapshot, status: str) -> npt.NDArray[np.bool_]:
    """Which snapshot positions are in ``status`` ("warming", "ok" or "firing"), as ``statuses`` says."""
    firing, warm = snap["alerting"], snap["warm"]
    if status == "no_model":  # served streams have a model
        return np.zeros_like(warm)
    if status == "firing":
        return firing
    return (warm if status == "ok" else ~warm) & ~firing & snap["known"]


def _num(v: float) -> float | None:
    return v if math.isfinite(v) else None


def statuses(meta: Sequence[StreamMeta], snap: Snapshot) -> list[StreamStatus]:
    """StreamStatus records for ``meta`` from a filled snapshot (no lock needed)."""
    cols = {k: v.tolist() for k, v in snap.items()}
    out = []
    for i, (sid, device, quantity, model) in enumerate(meta):
        have, need = cols["warm_have"][i], cols["warm_need"][i]
        feats = model.manifest.output_features
        bf, side = cols["breach_feature"][i], cols["breach_side"][i]
        out.append(StreamStatus(
            id=sid, device=device, quantity=quantity, model=model.name, model_version=model.version,
            status="firing" if cols["alerting"][i] else ("ok" if have >= need else "warming"),
            warm_have=min(have, need), warm_need=need,
            last_ts_ns=None if cols["last_ts_ns"][i] < 0 else cols["last_ts_ns"][i],
            last_value=_num(cols["value"][i]), score=_num(cols["score"][i]),
            expected=_num(cols["expected"][i]), lower=_num(cols["lower"][i]), upper=_num(cols["upper"][i]),
            feature=feats[cols["feature"][i]] if len(feats) > 1 else None,
            breach_eta_s=_num(cols["breach_eta_s"][i]), breach_probability=_num(cols["breach_probability"][i]),
            breach_limit=_num(cols["breach_limit"][i]), breach_side=SIDES[side] if side >= 0 else None,
            breach_feature=None if bf < 0 else (feats[bf] if len(feats) > 1 else quantity),
            held_by=cols["held_by"][i], checks_firing=list(cols["checks"][i] or ()),
            kept_out=int(cols["kept_out"][i]),
        ))
    return out


def gather(streams: Mapping[str, Stream], stream_ids: Sequence[str], out: Snapshot) -> None:
    """Under the engine's lock: the numbers of ``stream_ids`` into ``out`` (one gather per lane)."""
    groups: dict[int, tuple[Lane, list[int], list[int]]] = {}
    for i, sid in enumerate(stream_ids):
        st = streams.get(sid)
        if st is not None:
            g = groups.setdefault(st.lane.uid, (st.lane, [], []))
            g[1].append(i)
            g[2].append(st.row)
    for lane, idx_list, row_list in groups.values():
        fill_snapshot(out, lane, np.array(idx_list, np.intp), np.array(row_list, np.intp))


def meta(items: Sequence[Stream]) -> list[StreamMeta]:
    return [(st.id, st.device, st.quantity, st.lane.model) for st in items]


def every_status(streams: Mapping[str, Stream], lock: AbstractContextManager[object]) -> list[StreamStatus]:
    """Every stream's status, by id: numbers gathered under ``lock``, records built after."""
    with lock:
        info = meta(sorted(streams.values(), key=lambda s: s.id))
        snap = empty_snapshot(len(info))
        gather(streams, [m[0] for m in info], snap)
    return statuses(info, snap)


def no_model(stream_id: str, key: StreamKey) -> StreamStatus:
    """The status of a stream whose readings come but that no model serves (binding.NO_MODEL)."""
    return StreamStatus(stream_id, key.device, key.quantity, None, None, "no_model", 0, 0,
                        None, None, None, None, None, None)


def status_of(
    streams: Mapping[str, Stream], stream_id: str, lock: AbstractContextManager[object],
    unserved: Mapping[str, StreamKey] | None = None,
) -> StreamStatus | None:
    with lock:
        st = streams.get(stream_id)
        if st is None:
            key = None if unserved is None else unserved.get(stream_id)
            return None if key is None else no_model(stream_id, key)
        snap = empty_snapshot(1)
        fill_snapshot(snap, st.lane, np.zeros(1, np.intp), np.array([st.row], np.intp))
        info = meta([st])
    return statuses(info, snap)[0]


def newest(alerts: Reversible[Alert], limit: int, stream: str | None, state: str | None) -> list[Alert]:
    """Up to ``limit`` of ``alerts`` (oldest first) matching the filters, newest first."""
    out: list[Alert] = []
    for a in reversed(alerts):
        if (stream is None or a.stream_id == stream) and (state is None or a.state == state):
            out.append(a)
            if len(out) >= limit:
                break
    return out


def page(
    streams: Mapping[str, Stream], ids: list[str], i: int, limit: int, status: str | None,
    lock: AbstractContextManager[object], unserved: Mapping[str, StreamKey] | None = None,
) -> tuple[list[StreamStatus], str | None]:
    """Up to ``limit`` statuses of ``ids[i:]`` (in ``status`` if given) and the id to
    continue after; the lock is taken per chunk of ids, only to gather their numbers.
    ``unserved``: ids with no model, listed with status ``no_model``."""
    out: list[StreamStatus] = []
    while i < len(ids) and len(out) <= limit:
        chunk = ids[i : i + max(limit, 256)]
        i += len(chunk)
        with lock:
            items = [st for st in map(streams.get, chunk) if st is not None]  # evicted meanwhile: gone
            info = meta(items)
            snap = empty_snapshot(len(items))
            gather(streams, [m[0] for m in info], snap)
            none: list[StreamStatus] = []
            if unserved and status in (None, "no_model"):
                none = [no_model(sid, k) for sid, k in ((sid, unserved.get(sid)) for sid in chunk) if k is not None]
        if status is not None:
            want = status_mask(snap, status)
            info = [m for m, w in zip(info, want.tolist(), strict=True) if w]
            snap = {k: v[want] for k, v in snap.items()}
        out += heapq.merge(statuses(info, snap), none, key=lambda st: st.id) if none else statuses(info, snap)
    if len(out) > limit:  # one more than asked for: there is a next page
        return out[:limit], out[limit - 1].id
    return out, None


def lookup_forecast(streams: Mapping[str, Stream], stream_id: str) -> ForecastLookup | None:
    """The latest forecast without the engine's lock (see ``Engine.lookup_forecast``)."""
    for _ in range(3):
        st = streams.get(stream_id)  # one dict read: atomic under the GIL
        if st is None:
            return ForecastLookup(known=False)
        lane, row = st.lane, st.row
        t = lane.table
        version = t.version
        if version & 1:
            continue
        fc = forecast_of(st)
        have, need = int(t.warm_have[row]), t.warm_need
        if t.version == version and st.lane is lane and st.row == row and streams.get(stream_id) is st:
            return ForecastLookup(known=True, forecast=fc, warm_have=have, warm_need=need)
    return None


def model_infos(registry: ModelRegistry, counts: Mapping[str, int]) -> list[ModelInfo]:
    """Every loaded model, with how many streams each version serves (``counts`` by key)."""
    out = []
    for m in registry.all():
        mf = m.manifest
        out.append(ModelInfo(
            name=m.name, version=m.version, kind=mf.kind, cell=mf.cell, features=tuple(mf.features),
            output_features=tuple(mf.output_features), time_features=tuple(mf.time_features),
            cadence_s=mf.cadence_s, horizon=mf.horizon, warmup_steps=mf.warmup_steps,
            probabilistic=mf.probabilistic, default_threshold=mf.default_threshold, sha256=mf.sha256,
            created_at=mf.created_at.isoformat(), streams=counts.get(m.key, 0), metrics=mf.metrics,
            grid=(mf.grid[0], mf.grid[1]) if mf.grid else None,
        ))
    return out


def unfed(lanes: Mapping[str, Lane]) -> dict[StreamKey, int]:
    """Reading key -> its stream's oldest reading still in an open bucket (every feature's key of
    a multivariate stream; under the engine's lock)."""
    out: dict[StreamKey, int] = {}
    for lane in lanes.values():
        for row in np.flatnonzero(lane.pos.has_pending & lane.occupied).tolist():
            st = lane.owners[row]
            t = None if st is None or st.res is None else st.res.first_pending_ts()
            if st is not None and t is not None:
                for key in st.keys:
                    out[key] = t
    return out
