"""Anomaly evidence of one reading: one step and several steps, one feature and jointly.

The score of a reading is the largest of four pieces of evidence, each a tail probability
under normal operation, in log units (``L = -log10 p``: 4 is a 1-in-10,000 reading):

- ``instant``: the standardised one-step residual vector ``z = (actual - expected) / spread``
  as a squared distance ``d2 = z' P z`` (``P``: the precision of the residuals' correlation
  on the trainer's validation data, shipped in the manifest; the identity without one), a
  chi-square with one degree of freedom per observed feature. A spike lives here.
- ``lag``: the same distance against the forecasts made 2..``LAGS`` steps earlier (a short
  ring per row), so a slow drift that the one-step forecast keeps up with still shows.
- ``mean``: an EWMA ``m`` of the clipped ``z`` (MEWMA; clipping keeps one spike from
  lasting), ``T2 = dof * m' P m / typical``, where ``typical`` is the row's own learnt
  ``m' P m`` on ordinary readings (``lam / (2 - lam)`` per feature for independent
  residuals). Level shifts and drifts accumulate here.
- ``variance``: an EWMA ``v`` of ``d2 / dof`` against its normal mean 1 (upper tail only),
  a chi-square whose degrees of freedom come from the row's own typical ``(v - 1)^2``
  (heavy-tailed residuals spread ``v`` wider than independent normal ones).

Each ``L`` is multiplied by a calibration factor fitted on validation data (real residuals
are heavier-tailed and autocorrelated; 1 without calibration). The score is ``1 - 10^-E``
with ``E`` the largest; thresholds are compared in log units, so the score's saturation at
1.0 in float64 never hides an order of magnitude.

Spread: the root of an EWMA of squared residuals per feature (so ``E[z^2] = 1`` whatever
the residuals' shape: analyser channels that hold their value between updates give a few
large residuals among many zeros, and a mean-|residual| spread then made every update look
like a 10-sigma event), in units of the model's predicted scale
when it has one (so a model whose scale is off for this stream is corrected per stream),
learnt only from readings below the firing threshold (anomalies stay out). Until a row
has ``min_residuals`` of them it has no opinion: no alert, nothing kept out of the state.

>>> import numpy as np
>>> e = EvidenceRows(n_out=1, probabilistic=False, spread_alpha=0.05, min_residuals=0)
>>> e.grow(1)
>>> r = np.array([0])
>>> e.sq_ewma[0] = 1.5625; e.count[0] = 100  # spread 1.25 (RMS residual)
>>> out = e.step(r, np.array([[9.0]]), np.array([[0.0]]), None, np.array([True]), np.array([4.0]))
>>> round(float(out.log_tail[0]), 1), int(out.part[0])
(12.2, 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.anomaly.scoring import erf
from service.arrays import F64, I64, Col, IntArr, RowArrays

LEARN_Z = 6.0  # a residual beyond this many spreads never teaches its feature's spread
SLOW_AFTER = 300  # residuals learnt before the lag, mean and variance parts have an opinion
PRIOR = 10.0  # residuals' worth of trust in a probabilistic model's own scale
LAGS = 4  # forecasts made 1..LAGS steps earlier are kept per row
CLIP = 4.0  # |z| clip inside the EWMA statistics: one spike moves them by at most lam * CLIP
MEAN_LAMBDA = 0.1  # MEWMA weight: about the last 10-20 steps
MEAN_ALPHA = 0.005  # the typical MEWMA size follows about the last 200 ordinary steps
MEAN_LEARN_BELOW = 2.0  # after that, only steps whose mean part is below this (p > 0.01) teach it
MEAN_PRIOR = 30.0  # steps' worth of trust in the independent-residuals value before any are learnt
VAR_LAMBDA = 0.1
PARTS = ("instant", "lag", "mean", "variance")
INSTANT, LAG, MEAN, VARIANCE = range(4)
_LN10 = float(np.log(10.0))
_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))


def log10_norm_sf(z: F64) -> F64:
    """-log10 of the upper normal tail P(Z > z), accurate far out (no saturation)."""
    z = np.asarray(z, np.float64)
    out = np.zeros_like(z)
    near = z < 3.0
    zn = z[near]
    out[near] = -np.log10(np.maximum(0.5 * (1.0 - erf(zn / np.sqrt(2.0))), 1e-300))
    zf = z[~near]
    # Mills ratio series: P(Z > z) = phi(z) / z * (1 - 1/z^2 + 3/z^4 - ...)
    inv2 = 1.0 / (zf * zf)
    ln_p = -0.5 * zf * zf - np.log(zf) - _HALF_LOG_2PI + np.log1p(-inv2 + 3 * inv2 * inv2 - 15 * inv2**3)
    out[~near] = -ln_p / _LN10
    return out


def log10_chi2_sf(x: F64, dof: F64) -> F64:
    """-log10 P(chi2_dof > x): exact for dof 1, Wilson-Hilferty's normal otherwise."""
    x = np.maximum(np.asarray(x, np.float64), 0.0)
    dof = np.maximum(np.asarray(dof, np.float64), 1.0)
    one = dof == 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        c = 2.0 / (9.0 * dof)
        z_wh = ((x / dof) ** (1.0 / 3.0) - (1.0 - c)) / np.sqrt(c)
        z = np.where(one, np.sqrt(x), z_wh)
    tail = log10_norm_sf(z)
    # dof 1 is two-sided: P(|Z| > z) = 2 P(Z > z)
    out: F64 = np.where(one, np.maximum(tail - np.log10(2.0), 0.0), tail)
    return out


@dataclass(frozen=True, slots=True)
class Calibration:
    """What the trainer measured on validation data (manifest ``anomaly``), or defaults."""

    precision: F64 | None = None  # (Fo, Fo) of the standardised residuals; None: identity
    scales: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # per part, on L


@dataclass(frozen=True, slots=True)
class Evidence:
    """One step's evidence for a batch of rows."""

    log_tail: F64  # (B,) E: the largest calibrated part, -log10 p; NaN: no opinion
    part: I64  # (B,) which part (INSTANT, LAG, MEAN, VARIANCE)
    instant: F64  # (B,) the calibrated instant part alone
    z: F64  # (B, Fo) standardised one-step residuals (NaN: missing)
    spread: F64  # (B, Fo) the spread they were measured in
    share: F64  # (B, Fo) each feature's share of the instant distance (sums to 1)


class EvidenceRows(RowArrays):
    sq_ewma = Col(np.float64, ("n",), 0.0)  # learnt one-step spread: mean squared residual
    count = Col(np.int64, fill=0)  # residuals learnt
    lag_sq = Col(np.float64, ("lags", "n"), 0.0)  # learnt mean squared residual of lags 2..LAGS
    # pend[:, a, l]: the value expected a+1 steps ahead by the forecast made l steps before
    # the latest one; pend[:, 0, l] are this step's forecasts made l+1 steps earlier.
    pend = Col(np.float64, ("ring", "ring", "n"), np.nan)
    pend_sc = Col(np.float64, ("ring", "ring", "n"), np.nan)
    mean = Col(np.float64, ("n",), 0.0)  # EWMA of clipped z
    var = Col(np.float64, fill=1.0)  # EWMA of d2 / dof
    mean_sq = Col(np.float64, fill=0.0)  # typical m' P m on ordinary readings (learnt)
    var_sq = Col(np.float64, fill=0.0, optional=True)  # typical (v - 1)^2 on ordinary readings (learnt)

    def __init__(
        self, n_out: int, probabilistic: bool, spread_alpha: float = 0.01, min_residuals: int = 30,
        calibration: Calibration | None = None,
    ) -> None:
        self.n_out = n_out
        self.probabilistic = probabilistic
        self.alpha = spread_alpha
        self.min_residuals = min_residuals
        cal = calibration or Calibration()
        self.precision = cal.precision
        self.scales = np.asarray(cal.scales, np.float64)
        super().__init__({"n": n_out, "lags": LAGS - 1, "ring": LAGS})

    # -- spreads -------------------------------------------------------------------------
    def _spread(self, rows: IntArr, scale: F64 | None) -> F64:
        if scale is None:
            learnt = np.sqrt(self.sq_ewma[rows])
            learnt[self.count[rows] < self.min_residuals] = np.nan
            return learnt
        # The model's scale times the stream's learnt correction, which starts at 1 (a
        # prior worth PRIOR residuals): the model's own scale speaks from the first step.
        n = self.count[rows][:, None]
        ratio = np.sqrt((self.sq_ewma[rows] * n + PRIOR) / (n + PRIOR))
        ratio = np.where(n >= 1 / self.alpha, np.sqrt(self.sq_ewma[rows]), ratio)
        out: F64 = ratio * scale
        return out

    def _distance(self, z: F64) -> tuple[F64, F64, F64]:
        """d2 (B,), dof (B,), per-feature contributions (B, Fo) of z (NaN: missing)."""
        obs = np.isfinite(z)
        z0 = np.where(obs, z, 0.0)
        if self.precision is None or self.n_out == 1:
            contrib = z0 * z0
        else:
            contrib = z0 * (z0 @ self.precision)
        d2 = contrib.sum(axis=1)
        dof = obs.sum(axis=1).astype(np.float64)
        return d2, dof, contrib

    # -- one step --------------------------------------------------------------------------
    def step(
        self, rows: IntArr, actual: F64, expected: F64, scale: F64 | None, warm: npt.NDArray[np.bool_],
        fire_log: F64,
    ) -> Evidence:
        """Evidence of ``actual`` (B, Fo) against this step's forecasts; learns the spread
        from rows whose evidence stays below ``fire_log`` (B,), and updates the EWMAs."""
        b = actual.shape[0]
        spread = self._spread(rows, scale)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (actual - expected) / spread
        z[~np.isfinite(z)] = np.nan
        z[~warm] = np.nan
        d2, dof, contrib = self._distance(z)
        have = dof > 0
        parts = np.full((b, 4), np.nan)
        parts[:, INSTANT] = np.where(have, log10_chi2_sf(d2, dof), np.nan)
        parts[:, LAG], lag_resid = self._lag_part(rows, actual, warm)
        # MEWMA of the clipped residuals, and the variance EWMA (missing features hold).
        zc = np.clip(z, -CLIP, CLIP)
        m = self.mean[rows]
        m = np.where(np.isfinite(zc), (1 - MEAN_LAMBDA) * m + MEAN_LAMBDA * np.nan_to_num(zc), m)
        self.mean[rows] = m
        q, _, _ = self._distance(m)
        # Normalised by the row's own typical q on ordinary readings rather than the
        # independent-residuals value lam / (2 - lam): real residuals are autocorrelated and
        # a model may sit a little off a stream, both of which inflate q in normal operation.
        n_q = self.count[rows]
        typical = (self.mean_sq[rows] * n_q + MEAN_PRIOR * dof * MEAN_LAMBDA / (2 - MEAN_LAMBDA)) / (n_q + MEAN_PRIOR)
        with np.errstate(invalid="ignore", divide="ignore"):
            t2 = q * dof / typical
        parts[:, MEAN] = np.where(have, log10_chi2_sf(t2, dof), np.nan)
        v = self.var[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(have, (1 - VAR_LAMBDA) * v + VAR_LAMBDA * np.minimum(d2 / dof, CLIP * CLIP), v)
        self.var[rows] = v
        # v ~ chi2_nu / nu for independent normal residuals; heavier tails spread v wider, so
        # nu comes from the row's own typical (v - 1)^2 (Var = 2 / nu), learnt like mean_sq.
        nu0 = dof * (2 - VAR_LAMBDA) / VAR_LAMBDA
        with np.errstate(invalid="ignore", divide="ignore"):
            typical_v = (self.var_sq[rows] * n_q + MEAN_PRIOR * 2.0 / nu0) / (n_q + MEAN_PRIOR)
            nu = np.clip(2.0 / typical_v, 1.0, nu0)
        parts[:, VARIANCE] = np.where(have & (v > 1.0), log10_chi2_sf(v * nu, nu), np.where(have, 0.0, np.nan))
        # The slow parts speak once their own baselines are learnt (the typical MEWMA
        # size, the lag spreads): young, they raised false drifts on clean streams.
        young = self.count[rows] < SLOW_AFTER
        parts[young, LAG:] = np.where(np.isnan(parts[young, LAG:]), np.nan, 0.0)
        parts *= self.scales
        self.last_parts = parts  # (B, 4) for diagnostics and calibration
        filled = np.where(np.isnan(parts), -1.0, parts)
        part = np.argmax(filled, axis=1).astype(np.int64)
        e = filled[np.arange(b), part]
        e[~have] = np.nan
        pos = np.maximum(contrib, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = pos / pos.sum(axis=1, keepdims=True)
        # Readings teach the spread unless the row's evidence is beyond the firing threshold;
        # and a feature's residual beyond LEARN_Z of its spread never teaches it (a
        # calibration that scales the parts down, or a very high threshold, must not let a
        # fault teach its own spread). Per feature, not per row: channels that hold their
        # value between updates have a few large residuals among many zeros, and excluding
        # whole rows on them starved those spreads until every update looked extreme.
        learn = warm & ~(e >= fire_log)
        with np.errstate(invalid="ignore"):
            z_ok = ~(np.abs(z) >= LEARN_Z) | ~np.isfinite(spread)  # no spread yet: learn
        # The typical MEWMA q: a plain mean over the first 1/MEAN_ALPHA steps, then only
        # from steps whose own mean evidence is ordinary, so a shift or drift never
        # teaches it (it would learn away the very deviation it is there to see).
        learn_q = learn & ((self.count[rows] < 1 / MEAN_ALPHA) | ~(parts[:, MEAN] >= MEAN_LEARN_BELOW))
        if learn_q.any():
            lr = rows[learn_q]
            rate_q = np.maximum(MEAN_ALPHA, 1.0 / (self.count[lr] + 1.0))
            self.mean_sq[lr] += rate_q * (q[learn_q] - self.mean_sq[lr])
        learn_v = learn & ((self.count[rows] < 1 / MEAN_ALPHA) | ~(parts[:, VARIANCE] >= MEAN_LEARN_BELOW))
        if learn_v.any():
            lv = rows[learn_v]
            rate_v = np.maximum(MEAN_ALPHA, 1.0 / (self.count[lv] + 1.0))
            self.var_sq[lv] += rate_v * ((v[learn_v] - 1.0) ** 2 - self.var_sq[lv])
        resid = actual - expected
        if scale is not None:  # learn in units of the model's own scale
            with np.errstate(invalid="ignore", divide="ignore"):
                resid = resid / scale
        resid = np.where(z_ok, resid, np.nan)
        self._learn(rows[learn], resid[learn], lag_resid[learn])
        return Evidence(e, part, parts[:, INSTANT], z, spread, np.nan_to_num(share))

    def _lag_part(self, rows: IntArr, actual: F64, warm: npt.NDArray[np.bool_]) -> tuple[F64, F64]:
        """Largest lag-l distance (l = 2..LAGS), Bonferroni-corrected, and the residuals (B, LAGS-1, Fo)."""
        resid = actual[:, None, :] - self.pend[rows, 0, 1:, :]  # forecasts made 2..LAGS steps ago
        if self.probabilistic:  # residuals in units of the scale each forecast came with
            with np.errstate(invalid="ignore", divide="ignore"):
                resid = resid / self.pend_sc[rows, 0, 1:, :]
        spread = np.sqrt(self.lag_sq[rows])
        spread[self.count[rows] < self.min_residuals] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            z = resid / spread
        z[~np.isfinite(z)] = np.nan
        z[~warm] = np.nan
        best = np.full(len(rows), np.nan)
        for lag in range(LAGS - 1):
            d2, dof, _ = self._distance(z[:, lag, :])
            best = np.fmax(best, np.where(dof > 0, log10_chi2_sf(d2, dof), np.nan))
        out: F64 = np.maximum(best - np.log10(LAGS - 1), 0.0)
        return out, resid

    def _learn(self, rows: IntArr, resid: F64, lag_resid: F64) -> None:
        """Fold ordinary readings' |residuals| into the spreads (a plain mean over the first
        1/alpha residuals, then the EWMA: no slow start from 0)."""
        if rows.size == 0:
            return
        rate = np.maximum(self.alpha, 1.0 / (self.count[rows] + 1.0))
        ok = np.isfinite(resid)
        cur = self.sq_ewma[rows]
        self.sq_ewma[rows] = np.where(ok, cur + rate[:, None] * (np.nan_to_num(resid) ** 2 - cur), cur)
        ok3 = np.isfinite(lag_resid)
        cur3 = self.lag_sq[rows]
        self.lag_sq[rows] = np.where(ok3, cur3 + rate[:, None, None] * (np.nan_to_num(lag_resid) ** 2 - cur3), cur3)
        self.count[rows] += ok.any(axis=1)

    def remember(self, rows: IntArr, forecast: F64, scale: F64 | None) -> None:
        """After the model step: ``forecast`` (B, H, Fo) for the next H steps joins the ring."""
        k = min(LAGS, forecast.shape[1])
        pend = self.pend[rows]
        pend[:, :-1, 1:, :] = pend[:, 1:, :-1, :]  # one step older: a+1 -> a, l -> l+1
        pend[:, -1, 1:, :] = np.nan
        pend[:, :, 0, :] = np.nan
        pend[:, :k, 0, :] = forecast[:, :k, :]
        self.pend[rows] = pend
        if scale is not None:
            ps = self.pend_sc[rows]
            ps[:, :-1, 1:, :] = ps[:, 1:, :-1, :]
            ps[:, -1, 1:, :] = np.nan
            ps[:, :, 0, :] = np.nan
            ps[:, :k, 0, :] = scale[:, :k, :]
            self.pend_sc[rows] = ps

    def rebaseline(self, rows: IntArr) -> None:
        """A new level was accepted: the accumulated evidence and old forecasts go; the
        learnt spreads stay."""
        self.mean[rows] = 0.0
        self.var[rows] = 1.0
        self.pend[rows] = np.nan
        self.pend_sc[rows] = np.nan
