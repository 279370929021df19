"""The anomaly stage: score each stepped row, decide, and say which rows fired or resolved.

After ``ModelTable.step`` the stage scores the values just fed against the forecast made
for them (``scorers.py``: ``anomaly.scorer`` spread or surprise), folds the scores into
the per-row decision (``service.anomaly.decision.Decider``: M of N, hysteresis, cooldown)
and returns the rows whose decision changed. It owns the per-row anomaly arrays: the
last score and the band it was measured in (``expected`` +- ``band_z`` x ``spread``), the
worst output feature, and where the current run of hot steps began (``onset_*``), which
a firing alert names (with M > 1 the alert fires on a later step, and for a spike that
later step is often the return to normal).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.anomaly.decision import Decider
from service.arrays import I64, Arrays, Col, IntArr, RowArrays
from service.config import AnomalySettings
from service.records import NS_PER_S
from service.runtime.registry import LoadedModel
from service.streams.scorers import default_threshold, make_scorer
from service.streams.table import Stepped

log = logging.getLogger(__name__)

_NAN = float("nan")


@dataclass(frozen=True, slots=True)
class Verdicts:
    fired: IntArr  # rows that started firing
    resolved: IntArr  # rows that resolved


class AnomalyStage(RowArrays):
    score = Col(np.float64, fill=_NAN)  # of the last fed step; NaN: not scored
    expected = Col(np.float64, ("n_out",), _NAN)  # (N, Fo) the forecast it was scored against
    spread = Col(np.float64, ("n_out",), _NAN)  # (N, Fo) the spread it was measured in
    top_feature = Col(np.int64, fill=0, reset=False)  # the worst output feature
    onset_ts = Col(np.int64, fill=0, reset=False)  # first hot step of the current run
    onset_value = Col(np.float64, fill=_NAN, reset=False)
    onset_expected = Col(np.float64, fill=_NAN, reset=False)
    onset_score = Col(np.float64, fill=_NAN, reset=False)

    def __init__(self, model: LoadedModel, anomaly: AnomalySettings) -> None:
        m = model.manifest
        self.n_out = len(m.output_features)
        # Output feature j is scored against input feature out_in[j] (-1: not an input).
        self.out_in = np.array([m.features.index(f) if f in m.features else -1 for f in m.output_features])
        threshold = default_threshold(anomaly, m.default_threshold)
        self.decider = Decider(
            threshold, anomaly.clear_threshold, anomaly.min_count, anomaly.window, round(anomaly.cooldown_s * NS_PER_S)
        )
        self.scorer = make_scorer(anomaly, self.n_out, threshold)  # anomaly.scorer: spread or surprise
        self.band_z = self.scorer.band_z
        super().__init__({"n_out": self.n_out})

    # -- rows: the scorer and the decider keep rows of their own -------------------------
    def grow(self, capacity: int) -> None:
        super().grow(capacity)
        self.scorer.grow(capacity)
        self.decider.grow(capacity)

    def reset(self, rows: IntArr) -> None:
        """Forget scores and decisions (a firing row resolves first: the engine emits it)."""
        super().reset(rows)
        self.scorer.reset(rows)
        self.decider.reset(rows)

    def clear(self, rows: IntArr) -> None:
        super().clear(rows)
        self.scorer.reset(rows)
        self.decider.clear(rows)  # a per-stream threshold leaves with its stream

    def export(self, rows: IntArr, prefix: str | None = None) -> Arrays:
        return {**super().export(rows, prefix), **self.scorer.export_rows(rows), **self.decider.export(rows)}

    def load(self, rows: IntArr, arrays: Mapping[str, npt.NDArray[np.generic]], prefix: str | None = None) -> None:
        super().load(rows, arrays, prefix)
        self.decider.load(rows, arrays)
        try:
            self.scorer.import_rows(rows, arrays)
        except KeyError as e:  # saved under the other anomaly.scorer: keep the streams, re-learn scores
            log.warning("saved rows have no state for this scorer (%s): scores of %d streams start over", e, len(rows))
            self.scorer.reset(rows)

    # -- the stage ----------------------------------------------------------------------
    def assess(self, s: Stepped) -> Verdicts:
        """Score ``s``'s rows against their earlier forecast (only when it was made warm),
        decide, and note onsets. Rows restarted by the step start their scores over."""
        if s.restarted.size:
            self.reset(s.restarted)
        rows, ts = s.rows, s.ts
        actual = np.full((len(rows), self.n_out), np.nan)
        has_in = self.out_in >= 0
        actual[:, has_in] = s.x[:, self.out_in[has_in]]
        fire_t, _ = self.decider.thresholds(rows)
        # The scorer learns from this step itself, keeping anomalies out of its baseline.
        score, spread, top = self.scorer.step(rows, actual, s.expected, s.scale, s.was_warm, fire_t)
        actual[~s.was_warm] = np.nan  # a cold model's forecast is not scored
        if self.n_out > 1:
            self.top_feature[rows] = top
        self.score[rows] = score
        self.expected[rows] = s.expected
        self.spread[rows] = spread
        quiet_before = self.decider.hot[rows] == 0
        fired, resolved = self.decider.update(rows, score, ts)
        onset = quiet_before & (score >= fire_t)
        if onset.any():
            i = np.flatnonzero(onset)
            o = rows[i]
            j = self.top_feature[o] if self.n_out > 1 else np.zeros(len(o), np.int64)  # the worst feature
            self.onset_ts[o] = ts[i]
            self.onset_value[o] = actual[i, j]
            self.onset_expected[o] = s.expected[i, j]
            self.onset_score[o] = score[i]
        return Verdicts(rows[fired], rows[resolved])

    def worst(self, rows: IntArr) -> I64:
        """The output feature each row's numbers refer to (its worst one)."""
        out: I64 = self.top_feature[rows] if self.n_out > 1 else np.zeros(len(rows), np.int64)
        return out
