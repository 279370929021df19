"""Reading a model table out: stream status, forecasts, alert onsets.

The engine gathers the numbers of many rows at once under its lock (``fill_snapshot``:
a few fancy-indexing gathers per table) and builds the records after releasing it
(``statuses``), so listing 100k streams does not stall the tick.

Snapshot keys (arrays aligned with the requested ids): ``known``, ``warm``, ``firing``
(bool); ``last_ts_ns`` (int64, -1 when nothing fed); ``warm_have``, ``warm_need``,
``feature`` (int64: the output feature the numbers refer to); ``value``, ``expected``,
``lower``, ``upper``, ``score`` (float64, NaN when unknown or unscored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from service.arrays import IntArr
from service.records import NS_PER_S, Forecast
from service.runtime.registry import LoadedModel
from service.streams.status import StreamStatus
from service.streams.table import ModelTable

Snapshot = dict[str, npt.NDArray[Any]]
StreamMeta = tuple[str, str, str, LoadedModel]  # id, device, quantity, model


def empty_snapshot(n: int) -> Snapshot:
    out: Snapshot = {
        "known": np.zeros(n, bool), "warm": np.zeros(n, bool), "firing": np.zeros(n, bool),
        "last_ts_ns": np.full(n, -1, np.int64), "warm_have": np.zeros(n, np.int64),
        "warm_need": np.zeros(n, np.int64), "feature": np.zeros(n, np.int64),
    }
    for k in ("value", "expected", "lower", "upper", "score"):
        out[k] = np.full(n, np.nan)
    return out


def fill_snapshot(out: Snapshot, t: ModelTable, idx: IntArr, rows: IntArr) -> None:
    """Write the numbers of table rows ``rows`` into snapshot positions ``idx``."""
    j = t.top_feature[rows] if t.n_out > 1 else np.zeros(len(rows), np.int64)  # worst output feature
    have = t.warm_have[rows]
    expected = t.expected[rows, j]
    half = t.band_z * t.spread[rows, j]
    i_in = t.out_in[j]
    value = np.where(i_in >= 0, t.last_x[rows, np.maximum(i_in, 0)], np.nan)
    scored = ~np.isnan(t.score[rows])
    out["known"][idx] = True
    out["warm_have"][idx] = have
    out["warm_need"][idx] = t.warm_need
    out["feature"][idx] = j
    out["warm"][idx] = have >= t.warm_need
    out["firing"][idx] = t.decider.firing[rows]
    out["last_ts_ns"][idx] = np.where(have > 0, t.last_bucket[rows] * t.cadence_ns, -1)
    out["value"][idx] = np.where(have > 0, value, np.nan)
    out["expected"][idx] = np.where(have > 0, expected, np.nan)
    out["score"][idx] = t.score[rows]
    out["lower"][idx] = np.where(scored, expected - half, np.nan)
    out["upper"][idx] = np.where(scored, expected + half, np.nan)


def status_mask(snap: Snapshot, status: str) -> npt.NDArray[np.bool_]:
    """Which snapshot positions are in ``status`` ("warming", "ok" or "firing"), as ``statuses`` says."""
    firing, warm = snap["firing"], snap["warm"]
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
        out.append(StreamStatus(
            id=sid, device=device, quantity=quantity, model=model.name, model_version=model.version,
            status="firing" if cols["firing"][i] else ("ok" if have >= need else "warming"),
            warm_have=min(have, need), warm_need=need,
            last_ts_ns=None if cols["last_ts_ns"][i] < 0 else cols["last_ts_ns"][i],
            last_value=_num(cols["value"][i]), score=_num(cols["score"][i]),
            expected=_num(cols["expected"][i]), lower=_num(cols["lower"][i]), upper=_num(cols["upper"][i]),
            feature=feats[cols["feature"][i]] if len(feats) > 1 else None,
        ))
    return out


def forecast_of(stream_id: str, t: ModelTable, row: int) -> Forecast | None:
    """The row's latest forecast (None while warming)."""
    if t.warm_have[row] < t.warm_need:
        return None
    m = t.model.manifest
    scale = tuple(map(tuple, t.sc[row].astype(np.float64).tolist())) if t.has_scale else None
    return Forecast(
        stream_id=stream_id, ts_ns=int(t.last_bucket[row] - t.fc_age[row]) * t.cadence_ns, cadence_s=m.cadence_s,
        features=tuple(m.output_features), mean=tuple(map(tuple, t.fc[row].astype(np.float64).tolist())),
        scale=scale, model=t.model.name, model_version=t.model.version,
    )


def onset_extra(t: ModelTable, row: int) -> dict[str, str]:
    """Alert.extra for a firing: where the run of hot steps began (ISO time, value, expected, score)."""
    ts = int(t.onset_ts[row])
    return {
        "onset_time": datetime.fromtimestamp(ts / NS_PER_S, tz=UTC).isoformat(),
        "onset_value": f"{float(t.onset_value[row]):.6g}",
        "onset_expected": f"{float(t.onset_expected[row]):.6g}",
        "onset_score": f"{float(t.onset_score[row]):.6g}",
    }
