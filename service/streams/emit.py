"""The emit stage's builders: pure functions from a lane's rows to ``Alert`` and ``Forecast``.

They read the arrays of the stages (the model table's forecasts and inputs, the anomaly
stage's scores, bands and onsets) and build records; nothing here writes state or sends
anything (the engine hands the records to its sinks).
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from service.arrays import IntArr
from service.records import NS_PER_S, Alert, AlertState, Forecast
from service.streams.anomaly_stage import KINDS, AnomalyStage, Verdicts
from service.streams.breach_stage import Breach
from service.streams.lane import Lane, Stream
from service.streams.quality_stage import CHECKS as QUALITY_CHECKS
from service.streams.quality_stage import Flag, QualityVerdicts
from service.streams.table import Stepped


def alert(st: Stream, state: AlertState, warm: bool, extra: dict[str, str] | None = None) -> Alert:
    """``st``'s anomaly alert as of its last step: the value, the band its score was
    measured in, the kind and the onset of the episode, the contributing features."""
    lane, row = st.lane, st.row
    t, a = lane.table, lane.anomaly
    j = int(a.top_feature[row]) if a.n_out > 1 else 0
    e = float(a.expected[row, j])
    half = a.band_z * float(a.spread[row, j])
    i_in = int(a.out_in[j])
    onset = int(a.onset_ts[row])
    outputs = lane.model.manifest.output_features
    return Alert(
        key=st.key,
        quantity=lane.model.manifest.output_features[j] if st.multivariate else st.key.quantity,
        state=state,
        ts_ns=int(t.last_bucket[row]) * lane.cadence_ns,
        value=float(t.last_x[row, i_in]) if i_in >= 0 else math.nan,
        expected=e,
        lower=e - half,
        upper=e + half,
        score=float(a.score[row]),
        model=lane.model.name,
        model_version=lane.model.version,
        warm=warm,
        extra=extra or {},
        multivariate=st.multivariate,
        check="anomaly",
        kind=KINDS[int(a.kind[row])] if a.evidence is not None else "",
        onset_ns=onset if onset > 0 else None,
        onset_value=float(a.onset_value[row]),
        onset_expected=float(a.onset_expected[row]),
        contributors=a.contributors(row, outputs),
    )


def onset_extra(a: AnomalyStage, row: int) -> dict[str, str]:
    """Alert.extra for a firing: where the run of hot steps began (ISO time, value, expected, score)."""
    ts = int(a.onset_ts[row])
    return {
        "onset_time": datetime.fromtimestamp(ts / NS_PER_S, tz=UTC).isoformat(),
        "onset_value": f"{float(a.onset_value[row]):.6g}",
        "onset_expected": f"{float(a.onset_expected[row]):.6g}",
        "onset_score": f"{float(a.onset_score[row]):.6g}",
    }


def alerts(lane: Lane, verdicts: Verdicts) -> list[Alert]:
    """The alerts of one step's verdicts: firings (naming their onset), then resolutions."""
    owners = lane.owners
    out = []
    for row in verdicts.fired.tolist():
        st = owners[row]
        if st is not None:
            out.append(alert(st, "firing", warm=True, extra=onset_extra(lane.anomaly, row)))
    accepted = set(verdicts.accepted.tolist())
    for row in verdicts.resolved.tolist():
        st = owners[row]
        if st is not None:
            # Resolved by accepting a new level: say so, with the level now followed.
            extra = None
            if row in accepted:  # the level now followed, of the feature the alert is about
                i_in = int(lane.anomaly.out_in[int(lane.anomaly.worst(np.array([row], np.intp))[0])])
                extra = {"reason": "new_level", "new_level": f"{float(lane.table.last_x[row, max(i_in, 0)]):.6g}"}
            out.append(alert(st, "resolved", warm=True, extra=extra))
    return out


def resolutions(lane: Lane, rows: IntArr, reason: str, more: dict[str, str] | None = None) -> list[Alert]:
    """``resolved`` alerts (``extra.reason`` and ``more``) for the anomaly alerts firing
    among ``rows``, and their predicted_breach alerts unless ``reason`` is held: those rows
    are about to start over, and a firing state dropped silently would stay firing on the
    broker."""
    owners = lane.owners
    firing = rows[lane.anomaly.decider.firing[rows]]
    out = [alert(st, "resolved", warm=False, extra={"reason": reason, **(more or {})})
           for st in (owners[row] for row in firing.tolist()) if st is not None]
    if reason == "held":
        return out
    breaching = rows[lane.breach.firing[rows]]
    if breaching.size:
        ended = [replace(b, detail={**b.detail, "reason": reason}) for b in lane.breach.breaches(breaching)]
        out += breach_alerts(lane, [], ended)
    return out


def breach_alerts(lane: Lane, fired: list[Breach], resolved: list[Breach]) -> list[Alert]:
    """predicted_breach alerts: the ETA, probability, limit and side in ``extra``; the
    forecast at the crossing as ``expected``, the limit as the band's edge."""
    owners = lane.owners
    outputs = lane.model.manifest.output_features
    out = []
    for state, items in (("firing", fired), ("resolved", resolved)):
        for b in items:
            st = owners[b.row]
            if st is None:
                continue
            i_in = int(lane.anomaly.out_in[b.feature])
            value = float(lane.table.last_x[b.row, i_in]) if i_in >= 0 else math.nan
            out.append(Alert(
                key=st.key, quantity=outputs[b.feature] if st.multivariate else st.key.quantity,
                state=state, ts_ns=b.ts_ns, value=value, expected=b.expected,  # type: ignore[arg-type]
                lower=b.limit if b.side == "lower" else math.nan, upper=b.limit if b.side == "upper" else math.nan,
                score=b.probability, model=lane.model.name, model_version=lane.model.version, warm=True,
                extra=dict(b.detail), multivariate=st.multivariate, check="predicted_breach", kind="predicted_breach",
                onset_ns=b.ts_ns if state == "firing" else None,
            ))
    return out


def _flag_alert(lane: Lane, st: Stream, f: Flag, state: AlertState) -> Alert:
    """A data-quality alert: the reading it is about (NaN for silent) and, for limits, the limits."""
    q = lane.quality
    j = f.feature
    features = lane.model.manifest.features
    lo = float(q.lo[f.row, j]) if j >= 0 else math.nan
    hi = float(q.hi[f.row, j]) if j >= 0 else math.nan
    return Alert(
        key=st.key,
        quantity=features[j] if st.multivariate and j >= 0 else st.key.quantity,
        state=state, ts_ns=f.ts_ns, value=f.value, expected=math.nan, lower=lo, upper=hi, score=math.nan,
        model=lane.model.name, model_version=lane.model.version, warm=True, extra=dict(f.detail),
        multivariate=st.multivariate, check=f.check, kind=f.check, onset_ns=f.onset_ns or None,
        onset_value=f.value if state == "firing" else math.nan,
    )


def quality_alerts(lane: Lane, verdicts: QualityVerdicts) -> list[Alert]:
    """The data-quality stage's firings and resolutions as alerts."""
    owners = lane.owners
    out = []
    for state, flags in (("firing", verdicts.fired), ("resolved", verdicts.resolved)):
        for f in flags:
            st = owners[f.row]
            if st is not None:
                out.append(_flag_alert(lane, st, f, state))  # type: ignore[arg-type]
    return out


def quality_resolutions(lane: Lane, rows: IntArr, reason: str) -> list[Alert]:
    """``resolved`` alerts for the data-quality checks firing on ``rows``, which leave."""
    out = []
    for row, check in lane.quality.firing_checks(rows):
        st = lane.owners[row]
        if st is None:
            continue
        j = int(lane.quality.fire_feature[row, QUALITY_CHECKS.index(check)])
        flag = Flag(row, check, j, math.nan, int(lane.table.last_bucket[row]) * lane.cadence_ns, 0, {"reason": reason})
        out.append(_flag_alert(lane, st, flag, "resolved"))
    return out


def forecasts(lane: Lane, rows: IntArr) -> list[Forecast]:
    """One Forecast per warm stepped row with a fresh forecast, built from whole-batch
    arrays (per-row numpy calls would cost more than the record)."""
    t = lane.table
    fresh = (t.warm_have[rows] >= t.warm_need) & (t.fc_age[rows] == 0)  # window models: new ones only
    rows = rows[fresh]
    if rows.size == 0:
        return []
    m = lane.model
    means = t.fc[rows].astype(np.float64).tolist()  # (B, H, Fo) nested lists
    scales = t.sc[rows].astype(np.float64).tolist() if t.has_scale else None
    stamps = (t.last_bucket[rows] * lane.cadence_ns).tolist()
    cadence_s, feats = m.manifest.cadence_s, tuple(m.manifest.output_features)
    owners = lane.owners
    out = []
    for i, row in enumerate(rows.tolist()):
        st = owners[row]
        if st is None:
            continue
        out.append(Forecast(
            key=st.key, ts_ns=stamps[i], cadence_s=cadence_s, features=feats,
            mean=tuple(map(tuple, means[i])), scale=None if scales is None else tuple(map(tuple, scales[i])),
            model=m.name, model_version=m.version, multivariate=st.multivariate,
        ))
    return out


def forecast_of(st: Stream) -> Forecast | None:
    """The stream's latest forecast (None while warming)."""
    lane, row = st.lane, st.row
    t = lane.table
    if t.warm_have[row] < t.warm_need:
        return None
    m = lane.model
    scale = tuple(map(tuple, t.sc[row].astype(np.float64).tolist())) if t.has_scale else None
    return Forecast(
        key=st.key, ts_ns=int(t.last_bucket[row] - t.fc_age[row]) * lane.cadence_ns,
        cadence_s=m.manifest.cadence_s, features=tuple(m.manifest.output_features),
        mean=tuple(map(tuple, t.fc[row].astype(np.float64).tolist())), scale=scale,
        model=m.name, model_version=m.version, multivariate=st.multivariate,
    )


def breach_step(lane: Lane, s: Stepped, spread1: npt.NDArray[np.float64], x: npt.NDArray[np.float32]) -> list[Alert]:
    """Predicted crossings of operating limits, from the forecasts just made (only rows
    with limits, or a breach firing, cost anything)."""
    b = lane.breach
    need = b.active[s.rows] | b.firing[s.rows]
    if not need.any():
        return []
    i = np.flatnonzero(need)
    rows, t = s.rows[i], lane.table
    warm = t.warm_have[rows] >= t.warm_need
    scale = t.sc[rows] if t.has_scale else None
    fired, resolved = b.assess(rows, s.ts[i], t.fc[rows], scale, spread1[i], warm, x[i])
    return breach_alerts(lane, fired, resolved) if fired or resolved else []
