"""The anomaly stage: evidence before the step, the decision after it.

Two calls per round of steps:

- ``gate`` (before the model step) scores each reading against the forecasts made for it
  (``anomaly.scorer``; the default ``evidence``: service/anomaly/evidence.py) and keeps
  anomalous readings out of the recurrent state: their features are fed the model's own
  forecast (missing, NaN, when it has none), so the state and the learnt spread keep the
  pre-anomaly baseline. A deviation that persists ``accept_after_steps`` readings is accepted as the
  new level: the model re-baselines from the row's recent readings (``ModelTable.replay``)
  and the alert resolves as a ``level_shift`` with reason ``new_level``.
- ``assess`` (after the step) folds the scores into the decision (``Decider``: extreme
  evidence fires on the reading itself, borderline evidence needs M of N, hysteresis,
  cooldown; rows held by a data-quality alert do not start firing), notes onsets, and
  names the kind: spike, level_shift, drift, variance or multivariate.

It owns the per-row anomaly arrays: the last score and the band it was measured in, the
worst feature, the onset of the current episode, the kind, and the run of readings kept
out of the state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.anomaly.decision import Decider
from service.anomaly.evidence import INSTANT, LAG, MEAN, VARIANCE, Calibration, EvidenceRows
from service.anomaly.scoring import z_for_score
from service.arrays import F32, F64, I64, Arrays, Col, IntArr, RowArrays
from service.config import AnomalySettings
from service.records import NS_PER_S
from service.runtime.registry import LoadedModel
from service.streams.rules import ResolvedRules, default_accept_after
from service.streams.scorers import default_threshold, make_scorer
from service.streams.table import Expected, Stepped

log = logging.getLogger(__name__)

_NAN = float("nan")
KINDS = ("spike", "level_shift", "drift", "variance", "multivariate")
SPIKE, LEVEL_SHIFT, DRIFT, VARIANCE_KIND, MULTIVARIATE = range(5)
RECENT = 8  # readings kept per row to re-baseline from when a new level is accepted
EXTREME_DECADES = 1.5  # uncalibrated: a single step fires at 30x rarer evidence than M of N needs
MULTIVARIATE_SHARE = 0.5  # below this share for the top feature, the evidence is joint


def log_tail(score: F64 | float) -> F64:
    """Score in [0, 1) -> -log10(1 - score)."""
    with np.errstate(divide="ignore"):
        out: F64 = -np.log10(np.maximum(1.0 - np.asarray(score, np.float64), 1e-300))
    return out


def extreme_for(threshold: float) -> float:
    """The single-step threshold that goes with an uncalibrated M-of-N ``threshold``."""
    return float(1.0 - 10.0 ** -(float(log_tail(threshold)) + EXTREME_DECADES))


@dataclass(frozen=True, slots=True)
class Gate:
    """What ``gate`` measured before the step, for ``assess`` after it."""

    x: F32  # (B, F) what the model is fed: kept-out readings are its forecast
    read: F32  # (B, F) the readings as read
    score: F64  # (B,)
    evidence: F64  # (B,) -log10(1 - score), unsaturated
    spread: F64  # (B, Fo)
    top: I64  # (B,) worst output feature
    part: I64 | None  # (B,) the evidence part that dominated (evidence scorer)
    instant_hot: npt.NDArray[np.bool_]  # (B,) the one-step evidence alone is above the threshold
    accepted: IntArr  # batch indices whose new level is accepted on this step


@dataclass(frozen=True, slots=True)
class Verdicts:
    fired: IntArr  # rows that started firing
    resolved: IntArr  # rows that resolved
    accepted: IntArr  # rows whose new level was accepted (resolved rows among them say new_level)


class AnomalyStage(RowArrays):
    score = Col(np.float64, fill=_NAN)  # of the last fed step; NaN: not scored
    log_evidence = Col(np.float64, fill=_NAN, optional=True)  # -log10(1 - score), never saturated
    expected = Col(np.float64, ("n_out",), _NAN)  # (N, Fo) the forecast it was scored against
    spread = Col(np.float64, ("n_out",), _NAN)  # (N, Fo) the spread it was measured in
    share = Col(np.float64, ("n_out",), 0.0, saved=False)  # (N, Fo) features' share of the evidence
    top_feature = Col(np.int64, fill=0, reset=False)  # the worst output feature
    onset_ts = Col(np.int64, fill=0, reset=False)  # first hot step of the current run
    onset_value = Col(np.float64, fill=_NAN, reset=False)
    onset_expected = Col(np.float64, fill=_NAN, reset=False)
    onset_score = Col(np.float64, fill=_NAN, reset=False)
    onset_instant = Col(np.bool_, fill=False, reset=False, optional=True)  # the run began with a one-step jump
    kind = Col(np.int64, fill=0, reset=False, optional=True)  # of the current/last episode (KINDS)
    held = Col(np.int64, fill=0, optional=True)  # consecutive readings kept out of the state
    fault_level = Col(np.float64, ("n_out",), _NAN, optional=True)  # (N, Fo) the last reading kept out; NaN: none
    recent = Col(np.float32, (RECENT, "n_in"), _NAN, optional=True)  # (N, R, F) the latest readings, newest last
    accept_after = Col(np.int64, fill=-1, reset=False, saved=False)  # per stream; -1: the default
    extreme_row = Col(np.float64, fill=_NAN, reset=False, saved=False)  # per stream; NaN: the default

    def __init__(self, model: LoadedModel, anomaly: AnomalySettings) -> None:
        m = model.manifest
        self.n_out = len(m.output_features)
        self.n_in = len(m.features)
        # Output feature j is scored against input feature out_in[j] (-1: not an input).
        self.out_in = np.array([m.features.index(f) if f in m.features else -1 for f in m.output_features])
        cal = m.anomaly
        model_threshold = cal.threshold if cal is not None and anomaly.scorer == "evidence" else m.default_threshold
        threshold = default_threshold(anomaly, model_threshold)
        self.decider = Decider(
            threshold, anomaly.clear_threshold, anomaly.min_count, anomaly.window, round(anomaly.cooldown_s * NS_PER_S)
        )
        if anomaly.extreme_threshold is not None:
            self.extreme = anomaly.extreme_threshold
        elif cal is not None and anomaly.scorer == "evidence" and anomaly.threshold is None:
            self.extreme = cal.extreme_threshold
        else:
            self.extreme = extreme_for(threshold)
        self.default_accept = (
            anomaly.accept_after_steps if anomaly.accept_after_steps is not None else default_accept_after(m.cadence_s)
        )
        self.evidence: EvidenceRows | None = None
        if anomaly.scorer == "evidence":
            precision = None
            if cal is not None and cal.precision is not None:
                precision = np.asarray(cal.precision, np.float64)
            scales = (1.0, 1.0, 1.0, 1.0) if cal is None else (cal.scales[0], cal.scales[1], cal.scales[2], cal.scales[3])
            self.evidence = EvidenceRows(
                self.n_out, m.probabilistic, anomaly.spread_alpha or 0.01, calibration=Calibration(precision, scales)
            )
            self.band_z = z_for_score(threshold)
        else:
            self.scorer = make_scorer(anomaly, self.n_out, threshold)  # spread or surprise: no gating
            self.band_z = self.scorer.band_z
        super().__init__({"n_out": self.n_out, "n_in": self.n_in})

    # -- rows: the scorer and the decider keep rows of their own -------------------------
    def grow(self, capacity: int) -> None:
        super().grow(capacity)
        self.decider.grow(capacity)
        if self.evidence is not None:
            self.evidence.grow(capacity)
        else:
            self.scorer.grow(capacity)

    def reset(self, rows: IntArr) -> None:
        """Forget scores and decisions (a firing row resolves first: the engine emits it)."""
        super().reset(rows)
        self.decider.reset(rows)
        if self.evidence is not None:
            self.evidence.reset(rows)
        else:
            self.scorer.reset(rows)

    def clear(self, rows: IntArr) -> None:
        super().clear(rows)
        self.decider.clear(rows)  # a per-stream threshold leaves with its stream
        if self.evidence is not None:
            self.evidence.clear(rows)
        else:
            self.scorer.reset(rows)

    def export(self, rows: IntArr, prefix: str | None = None) -> Arrays:
        own = {**super().export(rows, prefix), **self.decider.export(rows)}
        if self.evidence is not None:
            return {**own, **self.evidence.export(rows, prefix="evidence.")}
        return {**own, **self.scorer.export_rows(rows)}

    def load(self, rows: IntArr, arrays: Mapping[str, npt.NDArray[np.generic]], prefix: str | None = None) -> None:
        super().load(rows, arrays, prefix)
        self.decider.load(rows, arrays)
        try:
            if self.evidence is not None:
                self.evidence.load(rows, arrays, prefix="evidence.")
            else:
                self.scorer.import_rows(rows, arrays)
        except KeyError as e:  # saved under another anomaly.scorer: keep the streams, re-learn scores
            log.warning("saved rows have no state for this scorer (%s): scores of %d streams start over", e, len(rows))
            if self.evidence is not None:
                self.evidence.reset(rows)
            else:
                self.scorer.reset(rows)

    def configure(self, rows: IntArr, rules: Sequence[ResolvedRules]) -> None:
        """Per-stream threshold and acceptance (None/inherited: the defaults)."""
        for row, r in zip(rows.tolist(), rules, strict=True):
            self.decider.set_threshold(row, r.threshold)
            self.accept_after[row] = r.accept_after_steps
            self.extreme_row[row] = (
                _NAN if r.threshold is None else extreme_for(r.threshold)
            )

    # -- before the step ----------------------------------------------------------------
    def gate(self, rows: IntArr, x: F32, pre: Expected) -> Gate:
        """Score ``x`` (B, F) against the forecasts made for it; mask what must stay out of the state."""
        actual = np.full((len(rows), self.n_out), np.nan)
        has_in = self.out_in >= 0
        actual[:, has_in] = x[:, self.out_in[has_in]]
        fire_t, _ = self.decider.thresholds(rows)
        none: IntArr = np.zeros(0, np.intp)
        if self.evidence is None:  # spread / surprise: score only, every reading is fed
            score, spread, top = self.scorer.step(rows, actual, pre.expected, pre.scale, pre.was_warm, fire_t)
            return Gate(x, x, score, log_tail(score), spread, top, None, np.zeros(len(rows), np.bool_), none)
        fire_log = log_tail(fire_t)
        ev = self.evidence.step(rows, actual, pre.expected, pre.scale, pre.was_warm, fire_log)
        with np.errstate(invalid="ignore"):
            score = np.where(np.isnan(ev.log_tail), np.nan, 1.0 - 10.0 ** -np.nan_to_num(ev.log_tail))
        top = np.argmax(ev.share, axis=1).astype(np.int64) if self.n_out > 1 else np.zeros(len(rows), np.int64)
        self.share[rows] = ev.share
        # Keep out of the state: readings whose one-step evidence alone is above the
        # threshold, on the features behind it (each beyond the threshold's band).
        instant_hot = np.asarray(ev.instant >= fire_log, np.bool_)
        with np.errstate(invalid="ignore"):
            beyond = np.abs(ev.z) >= self.band_z if self.n_out > 1 else np.isfinite(ev.z)
        out_feat: npt.NDArray[np.bool_] = instant_hot[:, None] & beyond  # (B, Fo)
        # Once a fault is under way, a reading at most half as far from the expected value
        # as the last one kept out is the return to normal, not more of the fault: it is
        # fed, so the state catches up with the process it missed meanwhile. (Half, not
        # merely closer: in a variance burst the next wild reading on the other side of
        # the expected value is closer to it than the last one, and feeding it dragged
        # the demo's forecast from 18 to 9.)
        level = self.fault_level[rows]
        with np.errstate(invalid="ignore"):
            back = np.asarray(np.abs(actual - pre.expected) <= 0.5 * np.abs(level - pre.expected), np.bool_)
        out_feat &= ~back
        kept = np.asarray(out_feat.any(axis=1), np.bool_)
        self.fault_level[rows] = np.where(out_feat, actual, np.where(kept[:, None], level, np.nan))
        observed = np.isfinite(actual).any(axis=1)
        before = self.held[rows]
        held = np.where(kept, before + 1, np.where(observed, 0, before))
        returned = (before > 0) & ~kept & observed
        if returned.any():  # the episode's accumulated evidence ends with it
            self.evidence.rebaseline(rows[returned])
        limit = self.accept_after[rows]
        limit = np.where(limit < 0, self.default_accept, limit)
        accept = kept & (limit > 0) & (held >= limit)
        held[accept] = 0
        self.held[rows] = held
        fed = x
        mask = out_feat & ~accept[:, None]
        if mask.any():
            # The model is fed its own forecast in place of a kept-out reading (missing
            # when it has none): the state carries on along the pattern it expected, so
            # the forecasts after a fault are where normal operation would be. (Fed as
            # missing, many recurrent models drift to a flat forecast within a few steps,
            # and every later reading then looks anomalous too.)
            fed = x.copy()
            bi, fj = np.nonzero(mask)
            ij = self.out_in[fj]
            ok = ij >= 0
            fed[bi[ok], ij[ok]] = pre.expected[bi[ok], fj[ok]].astype(np.float32)
        # The recent readings (what a re-baseline replays): as read, not as fed.
        rec = self.recent[rows]
        rec[:, :-1] = rec[:, 1:]
        rec[:, -1] = x
        self.recent[rows] = rec
        return Gate(fed, x, score, ev.log_tail, ev.spread, top, ev.part, instant_hot, np.flatnonzero(accept))

    # -- after the step -----------------------------------------------------------------
    def assess(self, s: Stepped, g: Gate, hold: npt.NDArray[np.bool_] | None = None) -> Verdicts:
        """Decide on ``g``'s scores; note onsets and kinds. Rows restarted by the step
        start their scores over; ``hold`` (B,) rows do not start firing."""
        if s.restarted.size:
            self.reset(s.restarted)
        rows, ts = s.rows, s.ts
        actual = np.full((len(rows), self.n_out), np.nan)
        has_in = self.out_in >= 0
        actual[:, has_in] = g.read[:, self.out_in[has_in]]
        score = g.score
        if s.restarted.size:  # a stream that starts over has no opinion on this step
            score = np.where(np.isin(rows, s.restarted), np.nan, score)
        if self.n_out > 1:
            self.top_feature[rows] = g.top
        self.score[rows] = score
        self.log_evidence[rows] = np.where(np.isnan(score), np.nan, g.evidence)
        self.expected[rows] = s.expected
        self.spread[rows] = g.spread
        fire_t, _ = self.decider.thresholds(rows)
        extreme = self.extreme_row[rows]
        extreme = np.where(np.isnan(extreme), self.extreme, extreme)
        quiet_before = self.decider.hot[rows] == 0
        was_firing = self.decider.firing[rows]
        if self.evidence is not None:
            self.evidence.remember(rows, s.ahead, s.ahead_scale)
        fired, resolved = self.decider.update(rows, score, ts, extreme, hold)
        onset = quiet_before & (score >= fire_t)
        if onset.any():
            i = np.flatnonzero(onset)
            o = rows[i]
            j = self.top_feature[o] if self.n_out > 1 else np.zeros(len(o), np.int64)  # the worst feature
            self.onset_ts[o] = ts[i]
            self.onset_value[o] = actual[i, j]
            self.onset_expected[o] = s.expected[i, j]
            self.onset_score[o] = score[i]
            self.onset_instant[o] = g.instant_hot[i]
        if g.part is not None:
            self._name_kinds(rows, g, fired, was_firing)
        accepted = g.accepted
        if accepted.size:
            # A new level: resolve (the engine emits it as a level_shift), forget the
            # accumulated evidence; the table replays the recent readings.
            a_rows = rows[accepted]
            firing_now = self.decider.firing[a_rows]
            self.kind[a_rows[firing_now]] = LEVEL_SHIFT
            self.decider.reset(a_rows)  # firing -> resolved; the M-of-N history starts over
            if self.evidence is not None:
                self.evidence.rebaseline(a_rows)
            extra_resolved = accepted[firing_now]
            resolved = np.union1d(resolved[~np.isin(resolved, accepted)], extra_resolved)
            fired = fired[~np.isin(fired, accepted)]
        return Verdicts(rows[fired], rows[resolved], rows[accepted])

    def _name_kinds(self, rows: IntArr, g: Gate, fired: IntArr, was_firing: npt.NDArray[np.bool_]) -> None:
        """The kind of a new episode, from the part that fired it; a one-step jump that
        stays kept out of the state for 2+ readings is a level shift."""
        assert g.part is not None
        if fired.size:
            part = g.part[fired]
            r = rows[fired]
            k = np.full(len(r), SPIKE)
            k[part == LAG] = DRIFT
            k[part == VARIANCE] = VARIANCE_KIND
            mean = part == MEAN
            k[mean] = np.where(self.onset_instant[r[mean]], LEVEL_SHIFT, DRIFT)
            k[(part == INSTANT) & (self.held[r] >= 2)] = LEVEL_SHIFT
            if self.n_out > 1:
                top_share = self.share[r, self.top_feature[r]]
                k[top_share < MULTIVARIATE_SHARE] = MULTIVARIATE
            self.kind[r] = k
        firing = was_firing & (self.kind[rows] == SPIKE) & (self.held[rows] >= 2)
        self.kind[rows[firing]] = LEVEL_SHIFT

    def worst(self, rows: IntArr) -> I64:
        """The output feature each row's numbers refer to (its worst one)."""
        out: I64 = self.top_feature[rows] if self.n_out > 1 else np.zeros(len(rows), np.int64)
        return out

    def contributors(self, row: int, names: Sequence[str], top: int = 3) -> tuple[tuple[str, float], ...]:
        """A multivariate row's leading features and their shares of the evidence."""
        if self.n_out == 1:
            return ()
        sh = self.share[row]
        order = np.argsort(-sh)[:top]
        return tuple((names[j], round(float(sh[j]), 4)) for j in order if sh[j] >= 0.05)
