"""The anomaly stage's scorer: one step of (actual, expected) per row -> score, spread.

``anomaly.scorer`` picks which one drives the decision and the API/alert ``score``:

- ``spread`` (``SpreadScorer``): the two-sided normal tail of the residual in units of
  the model's predicted scale, else of the stream's EWMA of |residual|. Rows that score at
  or above the firing threshold do not learn (anomalies stay out of the baseline).
- ``surprise`` (``SurpriseScorer``): the composite the NAB benchmark measured (docs/nab.md):
  the same residual in learnt-spread units, against its own past peak, plus range novelty
  and a rising-edge filter. It keeps surprising residuals (tail >= ``learn_below``) out of
  its spread itself. It ignores a model's predicted scale: on NAB the learnt spread scored
  higher (docs/nab.md, ``model_scale``). A model with several output features gets one
  surprise state per (row, feature) ("virtual rows" ``row * Fo + j``); the stream's score
  is the largest.

Both are vectorised over rows and carry their per-row state through checkpoints
(``export_rows``/``import_rows``, keys prefixed ``scorer.`` / ``surprise.``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.anomaly.scoring import SpreadScorer, z_for_score
from service.anomaly.surprise import SurpriseConfig, SurpriseScorer
from service.arrays import F64, I64, IntArr, RowArrays
from service.config import AnomalySettings

Arrays = dict[str, npt.NDArray[np.generic]]
Saved = Mapping[str, npt.NDArray[np.generic]]

SPREAD_ALPHA = 0.05  # spread scorer: the spread follows about the last 20 normal steps
# Surprise scorer threshold when none is set: 0.5 is "the recent surprise equals the
# stream's past peak"; NAB's best corpus threshold (standard profile) was 0.46.
SURPRISE_THRESHOLD = 0.5


class RowScorer(Protocol):
    band_z: float  # the band reported with a score is expected +- band_z * spread

    def grow(self, capacity: int) -> None: ...

    def reset(self, rows: IntArr) -> None: ...

    def step(
        self, rows: IntArr, actual: F64, expected: F64, scale: F64 | None, warm: npt.NDArray[np.bool_], fire_t: F64
    ) -> tuple[F64, F64, I64]:
        """rows (B,), actual/expected (B, Fo), scale (B, Fo) or None, warm (B,): the forecast
        was made by a warm model, fire_t (B,) -> score (B,) (NaN: no opinion), spread (B, Fo)
        the score was measured in, worst feature (B,). Learns from the step."""
        ...

    def export_rows(self, rows: IntArr) -> Arrays: ...

    def import_rows(self, rows: IntArr, arrays: Saved) -> None: ...


def default_threshold(anomaly: AnomalySettings, model_default: float) -> float:
    if anomaly.threshold is not None:
        return anomaly.threshold
    return SURPRISE_THRESHOLD if anomaly.scorer == "surprise" else model_default


def make_scorer(anomaly: AnomalySettings, n_out: int, threshold: float) -> RowScorer:
    if anomaly.scorer == "surprise":
        cfg = SurpriseConfig()
        if anomaly.spread_alpha is not None:
            cfg = SurpriseConfig(spread_alpha=anomaly.spread_alpha)
        return SurpriseRows(n_out, cfg)
    return SpreadRows(n_out, anomaly.spread_alpha or SPREAD_ALPHA, threshold)


def _worst(actual: F64, expected: F64, spread: F64) -> I64:
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(actual - expected) / spread  # (B, Fo)
    out: I64 = np.argmax(np.where(np.isnan(z), -1.0, z), axis=1).astype(np.int64)
    return out


class SpreadRows:
    def __init__(self, n_out: int, alpha: float, threshold: float) -> None:
        self.n_out = n_out
        self.scorer = SpreadScorer(n_out, alpha=alpha)
        self.band_z = z_for_score(threshold)

    def grow(self, capacity: int) -> None:
        self.scorer.grow(capacity)

    def reset(self, rows: IntArr) -> None:
        self.scorer.reset(rows)

    def step(
        self, rows: IntArr, actual: F64, expected: F64, scale: F64 | None, warm: npt.NDArray[np.bool_], fire_t: F64
    ) -> tuple[F64, F64, I64]:
        actual = actual.copy()
        actual[~warm] = np.nan  # a cold model's forecast is not scored
        score, spread = self.scorer.score(rows, actual, expected, scale)
        top = _worst(actual, expected, spread) if self.n_out > 1 else np.zeros(len(rows), np.int64)
        # Anomalies stay out of the baseline; unscored rows (no baseline yet) may learn.
        learn = warm & ~(score >= fire_t)
        self.scorer.learn(rows[learn], actual[learn], expected[learn])
        return score, spread, top

    def export_rows(self, rows: IntArr) -> Arrays:
        return self.scorer.export(rows, prefix="scorer.")

    def import_rows(self, rows: IntArr, arrays: Saved) -> None:
        self.scorer.load(rows, arrays, prefix="scorer.")


class SurpriseRows:
    def __init__(self, n_out: int, config: SurpriseConfig) -> None:
        self.n_out = n_out
        self.scorer = SurpriseScorer(config)
        # Outside this band a residual is surprising enough to stay out of the spread.
        self.band_z = z_for_score(config.learn_below)
        s = self.scorer
        # The parts' rows are virtual (rows * Fo + j); saved per stream row as (B, Fo, ...).
        self._parts: dict[str, RowArrays] = {"spread": s.spread, "peak": s.peak, "novelty": s.novelty, "edge": s.edge}

    def _virtual(self, rows: IntArr) -> IntArr:
        v: IntArr = (rows[:, None] * self.n_out + np.arange(self.n_out)).ravel()  # (B * Fo,)
        return v

    def grow(self, capacity: int) -> None:
        self.scorer.grow(capacity * self.n_out)

    def reset(self, rows: IntArr) -> None:
        self.scorer.reset(self._virtual(rows))

    def step(
        self, rows: IntArr, actual: F64, expected: F64, scale: F64 | None, warm: npt.NDArray[np.bool_], fire_t: F64
    ) -> tuple[F64, F64, I64]:
        b, fo = actual.shape
        v = self._virtual(rows)
        expected = expected.copy()
        expected[~warm] = np.nan  # no residual from a cold forecast; the range still learns the value
        spread = self.scorer.spread.spread(v, None)[:, 0].reshape(b, fo)  # (B, Fo) before this step's learning
        per = self.scorer.update(v, actual.ravel(), expected.ravel()).reshape(b, fo)  # (B, Fo)
        score: F64 = per.max(axis=1) if fo > 1 else per[:, 0]
        top = np.argmax(per, axis=1).astype(np.int64) if fo > 1 else np.zeros(b, np.int64)
        score = np.where(warm, score, np.nan)  # state advanced, but a cold row has no opinion
        return score, spread, top

    def export_rows(self, rows: IntArr) -> Arrays:
        v, b = self._virtual(rows), len(rows)
        out: Arrays = {}
        for name, part in self._parts.items():
            out.update({k: a.reshape(b, self.n_out, *a.shape[1:]) for k, a in part.export(v, f"surprise.{name}.").items()})
        return out

    def import_rows(self, rows: IntArr, arrays: Saved) -> None:
        v = self._virtual(rows)
        flat: Arrays = {}
        for k, a in arrays.items():
            if k.startswith("surprise."):
                if a.shape[1:2] != (self.n_out,):
                    raise ValueError(f"saved array {k} has {a.shape[1:2]} features, table has {self.n_out}")
                flat[k] = a.reshape(len(v), *a.shape[2:])
        for name, part in self._parts.items():  # each part checks every shape before it writes
            part.load(v, flat, f"surprise.{name}.")
