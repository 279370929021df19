"""The breach stage: announce an operating limit the forecast is about to cross.

After each step a row's new forecast ``fc[h]`` (h = 1..H steps ahead) and its spread (the
model's predicted scale, else the one-step spread times sqrt(h)) give the probability
``P_h`` that the value is beyond an operating limit (``lower``/``upper`` of the stream's
rules, per input feature; output features that are not inputs have none) at that step:
``service.anomaly.breach``. A second forecast is the readings' own trend (a weighted
straight line through them, with its spread): a model's forecast reverts to the levels it
was trained on, or stays at the baseline while the anomaly stage keeps readings out, and
would announce a slow degradation only when the readings are already at the limit.
``P_h`` is the larger of the two.

- **fires** ``predicted_breach`` when some ``P_h >= p`` (the rules' breach_probability),
  naming the limit and side, the ETA (first such h times the cadence), ``P_h`` there and
  the forecast there. The earliest crossing wins when several limits are predicted.
- **stays firing** on that limit while the crossing is predicted; the ETA, probability
  and expected value follow each new forecast (``eta()`` reads them out).
- **resolves** when the probability over the horizon stays below ``hysteresis * p`` for
  ``resolve_steps`` consecutive steps (reason ``not_predicted``), when the value itself
  is beyond the limit (``crossed``: out_of_range and the operator take over from here,
  and no new prediction fires on that limit while the value stays beyond it), or when
  the limit was removed (``rules_changed``).

Rows without limits and rows not warm are not computed. Everything is vectorised over
the batch; Python loops only build the records of the rows that fire or resolve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.anomaly.breach import (
    SIDES,
    TREND_SUMS,
    first_at_least,
    horizon_spread,
    limit_z,
    normal_cdf,
    reaches,
    trend_forecast,
    trend_slope,
    trend_update,
    z_of,
)
from service.arrays import F32, F64, I64, Col, IntArr, RowArrays
from service.records import NS_PER_S
from service.streams.rules import ResolvedRules

CHECK = "predicted_breach"
SLOPE_MEMORY = 4  # the slope's variation is measured over this many trend memories
CHUNK = 4096  # rows per pass of the hot arithmetic: its (rows, H, Fo, 2) temporaries stay in cache
_NAN = float("nan")
_LONG = 2**62  # "a long time ago"


@dataclass(frozen=True, slots=True)
class Breach:
    """One predicted_breach event (a firing, or a resolution with ``detail["reason"]``)."""

    row: int
    feature: int  # output feature index
    ts_ns: int  # the step whose forecast predicted it (resolutions: the step that ended it)
    eta_s: float  # seconds from ts_ns to the first step with P >= p (resolutions: NaN)
    probability: float  # P of being beyond the limit at that step (resolutions: the last one)
    limit: float
    side: str  # "upper" | "lower"
    expected: float  # the forecast at that step
    # Alert.extra material: eta_s, probability, limit, side; resolutions also reason
    # (not_predicted | crossed | rules_changed) and, when crossed, the value.
    detail: dict[str, str] = field(default_factory=dict)


class BreachStage(RowArrays):
    prefix = "breach."  # checkpoint keys (the anomaly stage has an "expected" too)
    # Configuration (``configure``): kept on reset, not saved (rules are re-applied).
    lower = Col(np.float64, ("n_out",), _NAN, reset=False, saved=False)  # (N, Fo) NaN: none
    upper = Col(np.float64, ("n_out",), _NAN, reset=False, saved=False)
    z_fire = Col(np.float64, fill=_NAN, reset=False, saved=False)  # Phi^-1(p)
    z_hold = Col(np.float64, fill=_NAN, reset=False, saved=False)  # Phi^-1(hysteresis * p)
    active = Col(np.bool_, fill=False, reset=False, saved=False)  # some limit is set
    # State of the firing episode (optional: checkpoints written before this stage).
    firing = Col(np.bool_, fill=False, optional=True)
    feature = Col(np.int64, fill=-1, optional=True)  # output feature of the firing limit
    side = Col(np.int8, fill=-1, optional=True)  # 0 upper, 1 lower (SIDES)
    limit = Col(np.float64, fill=_NAN, optional=True)
    eta_s = Col(np.float64, fill=_NAN, optional=True)
    probability = Col(np.float64, fill=_NAN, optional=True)
    expected = Col(np.float64, fill=_NAN, optional=True)
    onset_ts = Col(np.int64, fill=0, optional=True)  # step that fired
    quiet = Col(np.int64, fill=0, optional=True)  # consecutive steps below the hysteresis level
    inside = Col(np.int64, fill=_LONG, optional=True)  # steps since a reading was beyond a limit
    # The readings' trend (service.anomaly.breach): weighted sums, last reading and difference.
    trend = Col(np.float64, ("n_out", TREND_SUMS), 0.0, optional=True)
    trend_last = Col(np.float64, ("n_out", 2), _NAN, optional=True)
    slope_prev = Col(np.float64, ("n_out",), _NAN, optional=True)  # the line's slope at the last step
    curvature = Col(np.float64, ("n_out",), 0.0, optional=True)  # EW mean of its squared change per step

    def __init__(
        self, n_out: int, out_in: I64, horizon: int, cadence_ns: int, *, hysteresis: float = 0.5,
        resolve_steps: int = 3, trend_steps: int | None = None,
    ) -> None:
        self.n_out = n_out
        # Output feature j has the limits of input feature out_in[j] (-1: not an input, none).
        self.out_in = np.asarray(out_in, np.int64)
        if self.out_in.shape != (n_out,):
            raise ValueError(f"out_in has shape {self.out_in.shape}, expected ({n_out},)")
        if not 0.0 < hysteresis <= 1.0 or resolve_steps < 1:
            raise ValueError(f"hysteresis must be in (0, 1] and resolve_steps >= 1, found {hysteresis}, {resolve_steps}")
        self.horizon = horizon
        self.cadence_s = cadence_ns / NS_PER_S
        self.hysteresis = hysteresis
        self.resolve_steps = resolve_steps
        # The trend's memory in steps (0: no trend): a horizon, at least 30 (the slope of
        # noise stays small). It counts once it has 1.5 memories of effective points.
        self.trend_steps = max(30, horizon) if trend_steps is None else trend_steps
        if self.trend_steps < 0:
            raise ValueError(f"trend_steps must be >= 0, found {trend_steps}")
        self.trend_lam = 1.0 - 1.0 / self.trend_steps if self.trend_steps > 0 else 0.0
        self.trend_min = max(10.0, 1.5 * self.trend_steps)
        self.computed = 0  # row-steps assessed (rows with limits): nothing is computed for the others
        super().__init__({"n_out": n_out})

    # -- configuration ------------------------------------------------------------------
    def configure(self, rows: IntArr, rules: Sequence[ResolvedRules]) -> None:
        """Each row's operating limits and breach probability from its resolved rules
        (per input feature, mapped to the output features). A firing row whose limit is
        removed resolves at its next step (``rules_changed``)."""
        if len(rules) != len(rows):
            raise ValueError(f"{len(rules)} rules for {len(rows)} rows")
        if not len(rows):
            return
        need = int(self.out_in.max()) + 1
        for r in rules:
            if r.lower.shape != r.upper.shape or r.lower.shape[0] < need:
                raise ValueError(f"rules have limits for {r.lower.shape[0]} input features, the model has {need}")
        has_in = self.out_in >= 0
        src = self.out_in[has_in]
        lo = np.full((len(rows), self.n_out), np.nan)
        up = np.full((len(rows), self.n_out), np.nan)
        lo[:, has_in] = np.stack([r.lower[src] for r in rules])
        up[:, has_in] = np.stack([r.upper[src] for r in rules])
        zs: dict[float, tuple[float, float]] = {}  # a few distinct probabilities among many rows
        for p in {r.breach_probability for r in rules}:
            zs[p] = (z_of(p), z_of(self.hysteresis * p))
        z = np.array([zs[r.breach_probability] for r in rules])
        self.lower[rows] = lo
        self.upper[rows] = up
        self.z_fire[rows] = z[:, 0]
        self.z_hold[rows] = z[:, 1]
        self.active[rows] = (np.isfinite(lo) | np.isfinite(up)).any(axis=1)

    # -- the stage ----------------------------------------------------------------------
    def assess(
        self, rows: IntArr, ts: I64, fc: F64 | F32, scale: F64 | F32 | None, spread1: F64, warm: npt.NDArray[np.bool_],
        x: F64 | F32 | None = None,
    ) -> tuple[list[Breach], list[Breach]]:
        """(fired, resolved) after the step of distinct ``rows`` at ``ts`` (B,): the new
        forecast ``fc`` (B, H, Fo), its ``scale`` (B, H, Fo) or None, the one-step
        ``spread1`` (B, Fo) used without a scale, ``warm`` (B,) the forecast counts.
        ``x`` (B, F): the readings of this step, raw, in input order; a value beyond its
        limit resolves the prediction (``crossed``), and they feed the readings' trend.
        Without them neither happens."""
        if fc.shape[1:] != (self.horizon, self.n_out):
            raise ValueError(f"forecast has shape {fc.shape[1:]}, expected ({self.horizon}, {self.n_out})")
        sel = warm & (self.active[rows] | self.firing[rows])
        if not sel.any():
            return [], []
        i = np.flatnonzero(sel)
        r, t = rows[i], ts[i]
        self.computed += len(r)
        lo, up, z_fire = self.lower[r], self.upper[r], self.z_fire[r]
        beyond = np.zeros((len(r), self.n_out, 2), bool)  # the reading is beyond the limit already
        cur = np.full((len(r), self.n_out), np.nan)
        if x is not None:
            has_in = self.out_in >= 0
            cur[:, has_in] = np.asarray(x[i][:, self.out_in[has_in]], np.float64)
            beyond[..., 0] = cur > up  # NaN (missing, no limit) compares False
            beyond[..., 1] = cur < lo
            self.inside[r] = np.where(beyond.any(axis=(1, 2)), 0, np.minimum(self.inside[r] + 1, _LONG))
        sums = svar = None
        if x is not None and self.trend_steps > 0:
            sums, last = trend_update(self.trend[r], self.trend_last[r], cur, self.trend_lam)
            self.trend[r] = sums
            self.trend_last[r] = last
            # How fast the slope turns (a seasonal signal's does, a degradation's holds), over a
            # longer memory than the line's: a line is off by about turn * h^2 / 2 after h steps.
            slope = trend_slope(sums, self.trend_min)
            turn = slope - self.slope_prev[r]
            g = 1.0 / (SLOPE_MEMORY * self.trend_steps)
            curv = np.where(np.isnan(turn), self.curvature[r], (1 - g) * self.curvature[r] + g * turn * turn)
            self.curvature[r] = curv
            self.slope_prev[r] = slope
            svar = curv
        hit = np.empty((len(r), self.n_out, 2), bool)
        first = np.empty((len(r), self.n_out, 2), np.intp)
        for c0 in range(0, len(r), CHUNK):
            c = slice(c0, c0 + CHUNK)
            reach = reaches(np.asarray(fc[i[c]], np.float64), self._spread(scale, spread1, i[c]), lo[c], up[c], z_fire[c])
            if sums is not None:
                assert svar is not None
                reach |= reaches(*trend_forecast(sums[c], self.horizon, self.trend_min, svar[c]), lo[c], up[c], z_fire[c])
            reach &= ~beyond[c, None]  # crossed already: not a prediction
            hit[c], first[c] = first_at_least(reach)
        was = self.firing[r]
        k_was = np.flatnonzero(was)
        # A stream back from beyond a limit is announced again once it stayed inside a horizon:
        # readings hovering at the limit would otherwise fire and resolve at every crossing.
        k_new = np.flatnonzero(~was & hit.any(axis=(1, 2)) & (self.inside[r] >= self.horizon))
        # z values and probabilities only for the rows that fire or are firing.
        k = np.concatenate([k_was, k_new])
        fck = np.asarray(fc[i[k]], np.float64)
        z = limit_z(fck, self._spread(scale, spread1, i[k]), lo[k], up[k])  # (n, H, Fo, 2)
        expected = np.repeat(fck[..., None], 2, axis=-1)  # (n, H, Fo, 2) the forecast that says so
        if sums is not None:  # the likelier of the two forecasts, per step and side
            assert svar is not None
            mean_t, sd_t = trend_forecast(sums[k], self.horizon, self.trend_min, svar[k])
            z_t = limit_z(mean_t, sd_t, lo[k], up[k])
            by_trend = (z_t > z) | (np.isnan(z) & ~np.isnan(z_t))
            z = np.where(by_trend, z_t, z)
            expected = np.where(by_trend, mean_t[..., None], expected)
        z[np.broadcast_to(beyond[k][:, None], z.shape)] = -np.inf
        n = len(k_was)
        resolved = self._follow(r[k_was], t[k_was], z[:n], expected[:n], hit[k_was], first[k_was], beyond[k_was], cur[k_was])
        fired = self._fire(r[k_new], t[k_new], z[n:], expected[n:], hit[k_new], first[k_new])
        return fired, resolved

    def _spread(self, scale: F64 | F32 | None, spread1: F64, i: IntArr) -> F64:
        return horizon_spread(None if scale is None else np.asarray(scale[i], np.float64), spread1[i], self.horizon)

    def _fire(
        self, rows: IntArr, t: I64, z: F64, fc: F64, hit: npt.NDArray[np.bool_], first: npt.NDArray[np.intp]
    ) -> list[Breach]:
        """``rows`` (not firing, some limit reached) start firing on their earliest predicted
        crossing. ``z``, ``fc`` (n, H, Fo, 2), ``hit``, ``first`` (n, Fo, 2): theirs."""
        if not rows.size:
            return []
        p_first = normal_cdf(np.take_along_axis(z, first[:, None], axis=1)[:, 0])
        # Earliest crossing first; among equals the likelier one (0.5 * P < 1 keeps h's order).
        key = np.where(hit, first - 0.5 * p_first, np.inf).reshape(len(rows), -1)
        j, s = np.divmod(np.argmin(key, axis=1), 2)
        n = np.arange(len(rows))
        h = first[n, j, s]
        self.firing[rows] = True
        self.feature[rows] = j
        self.side[rows] = s
        self.limit[rows] = np.where(s == 0, self.upper[rows, j], self.lower[rows, j])
        self.eta_s[rows] = (h + 1) * self.cadence_s
        self.probability[rows] = p_first[n, j, s]
        self.expected[rows] = fc[n, h, j, s]
        self.onset_ts[rows] = t
        self.quiet[rows] = 0
        return self._records(rows, t, None)

    def _follow(
        self, rows: IntArr, t: I64, z: F64, fc: F64, hit: npt.NDArray[np.bool_], first: npt.NDArray[np.intp],
        beyond: npt.NDArray[np.bool_], cur: F64,
    ) -> list[Breach]:
        """Firing ``rows``: follow their limit's new forecast, or resolve. ``z``, ``fc``,
        ``hit``, ``first``, ``beyond``, ``cur``: theirs."""
        if not rows.size:
            return []
        j = self.feature[rows]
        s = self.side[rows].astype(np.intp)
        lim = np.where(s == 0, self.upper[rows, j], self.lower[rows, j])
        n = np.arange(len(rows))
        zk = z[n, :, j, s]  # (n, H) the firing limit's z per step ahead
        zk_max = np.where(np.isnan(zk), -np.inf, zk)
        h = np.where(hit[n, j, s], first[n, j, s], np.argmax(zk_max, axis=1))  # first >= p, else the likeliest
        z_at = zk[n, h]
        quiet = np.where(zk_max.max(axis=1) < self.z_hold[rows], self.quiet[rows] + 1, 0)
        gone = np.isnan(lim)
        crossed = beyond[n, j, s] & ~gone
        quieted = (quiet >= self.resolve_steps) & ~gone & ~crossed
        end = gone | crossed | quieted
        stay = ~end
        if stay.any():
            sr = rows[stay]
            self.quiet[sr] = quiet[stay]
            self.limit[sr] = lim[stay]
            self.eta_s[sr] = (h[stay] + 1) * self.cadence_s
            self.probability[sr] = np.nan_to_num(normal_cdf(z_at[stay]), nan=0.0)
            self.expected[sr] = fc[n[stay], h[stay], j[stay], s[stay]]
        if not end.any():
            return []
        reasons = np.where(gone, "rules_changed", np.where(crossed, "crossed", "not_predicted"))[end].tolist()
        values = cur[n[end], j[end]].tolist()
        done = rows[end]
        self.probability[done[quieted[end]]] = normal_cdf(zk_max[quieted].max(axis=1))  # the last, low one
        out = self._records(done, t[end], [
            {"reason": why} | ({"value": f"{v:.6g}"} if why == "crossed" else {}) for why, v in zip(reasons, values, strict=True)
        ])
        self.reset(done)
        return out

    def _records(self, rows: IntArr, ts: I64, details: list[dict[str, str]] | None) -> list[Breach]:
        """Breach records of ``rows`` from the episode's columns (``details``: resolutions)."""
        cols = [a[rows].tolist() for a in (self.feature, self.eta_s, self.probability, self.limit, self.side, self.expected)]
        out = []
        for n, (row, t) in enumerate(zip(rows.tolist(), ts.tolist(), strict=True)):
            j, eta, p, lim, s, e = (c[n] for c in cols)
            side = SIDES[s]
            detail = {"probability": f"{p:.4g}", "limit": f"{lim:.6g}", "side": side}
            if details is None:
                detail["eta_s"] = f"{eta:.6g}"
            else:
                detail |= details[n]
                eta = math.nan
            out.append(Breach(int(row), int(j), int(t), float(eta), float(p), float(lim), side, float(e), detail))
        return out

    # -- read-outs and lifecycle ------------------------------------------------------------
    def eta(self, rows: IntArr) -> tuple[F64, F64, I64]:
        """(eta_s, probability, output feature) of ``rows``' predicted breaches: NaN, NaN, -1
        where none is predicted."""
        return self.eta_s[rows].copy(), self.probability[rows].copy(), self.feature[rows].copy()

    def breaches(self, rows: IntArr) -> list[Breach]:
        """The firing breaches among ``rows`` as of their last step (for resolutions the
        engine emits when streams start over or leave)."""
        on = rows[self.firing[rows]]
        return self._records(on, self.onset_ts[on], None)

    def firing_checks(self, rows: IntArr) -> list[tuple[int, str]]:
        return [(row, CHECK) for row in rows[self.firing[rows]].tolist()]

    def forget_trend(self, rows: IntArr) -> None:
        """Start the readings' trend of ``rows`` over (e.g. a new level was accepted: the
        line through the step would point past it)."""
        self.trend[rows] = 0.0
        self.trend_last[rows] = np.nan
        self.slope_prev[rows] = np.nan
        self.curvature[rows] = 0.0

    def drop(self, rows: IntArr) -> None:
        """Forget firing episodes without emitting (the limits stay)."""
        self.reset(rows)
