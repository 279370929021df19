"""Calibrate the anomaly evidence of an exported model on normal history (manifest ``anomaly``).

The exported graph is run exactly as the engine runs it (``ModelTable`` over onnxruntime,
then ``EvidenceRows``; no torch) over each series, and the evidence is measured on the
calibration part (the trainer's validation rows; earlier rows only warm the state):

1. Precision: the correlation of the standardised one-step residuals ``z`` (in the units
   the evidence uses: the model's scale times the learnt ratio), shrunk toward the identity
   (Ledoit-Wolf), inverted. None for one output feature.
2. Factors: with that precision, each part's ``L = -log10 p`` (instant, lag, mean,
   variance) at a high quantile ``1 - q`` should read ``-log10 q``; factor = nominal /
   empirical, clipped to [0.2, 1.5] (real residuals are heavier-tailed and autocorrelated).
3. Thresholds: the combined ``E`` (the largest calibrated part) and, for the M-of-N rule,
   the M-th largest ``E`` of the last N steps. Exceedances of a high level are grouped into
   episodes (runs closer than N steps: one alert), the episodes' peaks get a generalised
   Pareto tail (shape >= 0 by moments: real evidence is heavier-tailed than exponential
   far out; an exponential fit on the demo model's validation data gave 74x its target on
   fresh clean streams), extrapolated to the per-step rate that gives
   ``false_alerts_per_day`` per stream.
   The single-step (extreme) rule and the M-of-N rule get half of that budget each, so
   together they stay within it.

Readings are not kept out of the state here (the thresholds are what is being measured);
on normal history the live gate rarely acts. Run by ``sensorcast train`` after export and
by ``sensorcast calibrate`` for an existing model folder (training/calibrate_command.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.anomaly.evidence import PARTS, Calibration, EvidenceRows
from service.arrays import F32, F64, I64
from service.config import AnomalySettings
from service.records import NS_PER_S
from service.runtime.manifest import AnomalyCalibration, Manifest, read_model
from service.runtime.registry import LoadedModel
from service.runtime.session import OrtRuntime
from service.streams.table import ModelTable

DEFAULT_FALSE_ALERTS_PER_DAY = 0.024  # one false alert per 1,000 stream-hours
FACTOR_MIN, FACTOR_MAX = 0.2, 1.5
LEAD_IN = 400  # evidence steps before the calibration part: the learnt spread and EWMAs settle
# Every calibration residual teaches the spread (the history is taken as normal): excluding
# hot steps, as the engine does, would let one part's early heat (a model scale that is off
# for the stream) freeze one instance's spread and not another's.
LEARN_BELOW = np.inf
TAIL_FRACTION = 0.02  # the tail fit starts at the top 2 % of steps ...
MIN_EPISODES = 30  # ... or lower, until it holds this many episodes
NOMINAL_SLOPE = 1.0 / np.log(10.0)  # mean excess of L = -log10 p over a level, under the null
MAX_SHAPE = 0.45  # the moments estimate of the Pareto shape needs shape < 0.5
MAX_LOG = 15.0  # thresholds stay below 1 - 1e-15 (a float64 score of 1.0 is not a threshold)
MIN_STEPS = 200  # fewer calibration steps: factors stay 1


@dataclass(frozen=True, slots=True)
class Segment:
    """One series: rows before ``start`` warm the state; evidence is measured on [start, end)."""

    name: str
    ts_ns: I64  # (T,)
    values: F32  # (T, F) raw, NaN = missing
    start: int
    end: int


@dataclass(slots=True)
class Recording:
    """Per step of the rollout (from each row's lead-in on): what the engine hands the evidence."""

    rows: list[I64] = field(default_factory=list)
    actual: list[F64] = field(default_factory=list)
    expected: list[F64] = field(default_factory=list)
    scale: list[F64 | None] = field(default_factory=list)
    warm: list[np.ndarray] = field(default_factory=list)
    ahead: list[F64] = field(default_factory=list)
    ahead_scale: list[F64 | None] = field(default_factory=list)
    restarted: list[I64] = field(default_factory=list)
    pos: list[I64] = field(default_factory=list)  # (B,) index into the calibration part; -1: lead-in


@dataclass(frozen=True, slots=True)
class Result:
    block: AnomalyCalibration
    factors: tuple[float, ...]
    expected_per_day: float  # the fitted false alerts per stream-day at the thresholds
    streams: int
    tails: tuple[TailFit, ...] = ()  # (M of N, extreme)


def open_model(folder: Path) -> LoadedModel:
    """The exported model as the service loads it (hash checked, onnxruntime)."""
    manifest, blob = read_model(folder)
    runtime = OrtRuntime(folder, manifest, 1, model_bytes=blob)
    return LoadedModel(manifest.name, manifest.version, folder, manifest, runtime, ())


def roll(model: LoadedModel, segments: Sequence[Segment]) -> Recording:
    """Step every segment through the exported model, one batched call per step."""
    m = model.manifest
    table = ModelTable(model)
    n = len(segments)
    table.grow(n)
    out_in = np.array([m.features.index(f) if f in m.features else -1 for f in m.output_features])
    cadence_ns = round(m.cadence_s * NS_PER_S)
    ends = np.array([s.end for s in segments])
    first = np.array([max(0, s.start - LEAD_IN) for s in segments])
    length = int(ends.max(initial=0))
    vals = np.full((n, length, len(m.features)), np.nan, np.float32)
    buckets_all = np.zeros((n, length), np.int64)
    for r, seg in enumerate(segments):
        vals[r, : seg.end] = seg.values[: seg.end]
        buckets_all[r, : seg.end] = seg.ts_ns[: seg.end] // cadence_ns
    starts_all = np.array([s.start for s in segments])
    rec = Recording()
    for i in range(length):
        rows = np.flatnonzero(ends > i)
        x = vals[rows, i]
        buckets = buckets_all[rows, i]
        pre = table.expect(rows)
        s = table.step(rows, buckets, x, pre)
        keep = first[rows] <= i
        if not keep.any():
            continue
        actual = np.full((len(rows), len(out_in)), np.nan)
        actual[:, out_in >= 0] = x[:, out_in[out_in >= 0]]
        starts = starts_all[rows]
        rec.rows.append(rows[keep].astype(np.int64))
        rec.actual.append(actual[keep])
        rec.expected.append(pre.expected[keep])
        rec.scale.append(None if pre.scale is None else pre.scale[keep])
        rec.warm.append(pre.was_warm[keep])
        rec.ahead.append(s.ahead[keep])
        rec.ahead_scale.append(None if s.ahead_scale is None else s.ahead_scale[keep])
        rec.restarted.append(s.restarted.astype(np.int64))
        rec.pos.append(np.where(i >= starts, i - starts, -1)[keep].astype(np.int64))
    return rec


def replay(
    rec: Recording, model: LoadedModel, anomaly: AnomalySettings, segments: Sequence[Segment],
    calibrations: Sequence[Calibration],
) -> tuple[list[F64], F64]:
    """Evidence over the recording, one ``EvidenceRows`` per calibration: each one's E as
    (rows, calibration steps) (NaN: no opinion), and the first one's z (n, Fo) of steps
    where every output feature was scored."""
    m = model.manifest
    n_out, n = len(m.output_features), len(segments)
    length = max((s.end - s.start for s in segments), default=0)
    evs = [EvidenceRows(n_out, m.probabilistic, anomaly.spread_alpha or 0.01, calibration=c) for c in calibrations]
    for ev in evs:
        ev.grow(n)
    es = [np.full((n, length), np.nan) for _ in evs]
    zs: list[F64] = []
    for t in range(len(rec.rows)):
        rows = rec.rows[t].astype(np.intp)
        pos = rec.pos[t]
        cal = pos >= 0
        fire = np.full(len(rows), LEARN_BELOW)
        for k, ev in enumerate(evs):
            out = ev.step(rows, rec.actual[t], rec.expected[t], rec.scale[t], rec.warm[t], fire)
            if rec.restarted[t].size:
                ev.reset(rec.restarted[t].astype(np.intp))
            ev.remember(rows, rec.ahead[t], rec.ahead_scale[t])
            es[k][rows[cal], pos[cal]] = out.log_tail[cal]
            if k == 0:
                z = out.z[cal]
                zs.append(z[np.isfinite(z).all(axis=1)])
    z_all = np.concatenate(zs) if zs else np.zeros((0, n_out))
    return es, z_all


def shrunk_precision(z: F64) -> F64 | None:
    """Inverse of the Ledoit-Wolf shrunk correlation of ``z`` (n, F); None for F = 1 or too few rows."""
    n, f = z.shape
    if f < 2 or n < f + 2:
        return None
    x = z - z.mean(axis=0)
    sd = x.std(axis=0)
    if not (sd > 0).all():
        return None
    x = x / sd
    s = x.T @ x / n  # the sample correlation
    eye = np.eye(f)
    delta = float(((s - eye) ** 2).sum()) / f  # distance to the identity target
    if delta <= 0:
        return eye
    # Ledoit-Wolf: the sampling noise of s, estimated from the rows themselves.
    # sum_i |x_i x_i' - s|^2 = sum_i |x_i|^4 - n |s|^2
    beta = (float(((x * x).sum(axis=1) ** 2).mean()) - float((s * s).sum())) / (n * f)
    shrink = min(1.0, beta / delta)
    sigma = shrink * eye + (1.0 - shrink) * s
    prec: F64 = np.linalg.inv(sigma)
    return (prec + prec.T) / 2


def part_factor(values: F64) -> float:
    """Nominal over empirical ``L`` at a high quantile, clipped."""
    v = values[np.isfinite(values)]
    if len(v) < MIN_STEPS:
        return 1.0
    q = float(np.clip(30.0 / len(v), 1e-4, 1e-2))  # as far out as 30 steps reach: the tail is what fires
    emp = float(np.quantile(v, 1.0 - q))
    return float(np.clip(-np.log10(q) / emp, FACTOR_MIN, FACTOR_MAX)) if emp > 0 else FACTOR_MAX


def mth_largest(e: F64, m: int, n: int) -> list[F64]:
    """Per row of ``e`` (rows, T): the M-th largest of the last N scored steps (the decider skips unscored ones)."""
    out = []
    for row in e:
        v = row[np.isfinite(row)]
        if len(v) < n:
            continue
        win = np.sort(np.lib.stride_tricks.sliding_window_view(v, n), axis=1)
        out.append(win[:, n - m])
    return out


def episode_peaks(seqs: Sequence[F64], level: float, gap: int) -> list[float]:
    """Peaks of the runs above ``level``; runs less than ``gap`` steps apart are one episode."""
    peaks: list[float] = []
    for v in seqs:
        idx = np.flatnonzero(v > level)
        if idx.size == 0:
            continue
        breaks = np.flatnonzero(np.diff(idx) >= gap) + 1
        peaks += [float(v[g].max()) for g in np.split(idx, breaks)]
    return peaks


@dataclass(frozen=True, slots=True)
class TailFit:
    """Episodes above ``level`` come at ``at_level`` per step; their peaks' excess over it
    is generalised Pareto with scale ``slope`` (decades) and ``shape`` (0: exponential)."""

    level: float
    at_level: float
    slope: float
    shape: float = 0.0

    def threshold(self, rate: float) -> float:
        """The level whose episodes come at ``rate`` per step (clipped to [1, MAX_LOG])."""
        if self.at_level <= rate:
            return float(np.clip(self.level, 1.0, MAX_LOG))
        ratio = self.at_level / rate
        if self.shape > 1e-6:
            t = self.level + self.slope / self.shape * (ratio**self.shape - 1.0)
        else:
            t = self.level + self.slope * np.log(ratio)
        return float(np.clip(t, 1.0, MAX_LOG))

    def rate(self, t: float) -> float:
        y = max(t - self.level, 0.0)
        if self.shape > 1e-6:
            return self.at_level * float((1.0 + self.shape * y / self.slope) ** (-1.0 / self.shape))
        return self.at_level * float(np.exp(-y / self.slope))


def tail_fit(seqs: Sequence[F64], gap: int) -> TailFit:
    """Exponential tail of the episode peaks above a high level of ``seqs`` (per series, in time order)."""
    finite = [v[np.isfinite(v)] for v in seqs]
    steps = sum(len(v) for v in finite)
    if steps == 0:
        return TailFit(MAX_LOG, 0.0, NOMINAL_SLOPE)
    pooled = np.concatenate(finite)
    frac = TAIL_FRACTION
    while True:
        level = float(np.quantile(pooled, 1.0 - frac))
        peaks = episode_peaks(finite, level, gap)
        if len(peaks) >= MIN_EPISODES or frac >= 0.5:
            break
        frac = min(0.5, frac * 2)
    if len(peaks) < 3:
        return TailFit(level, len(peaks) / steps, NOMINAL_SLOPE)
    # Pareto by moments: shape = (1 - mean^2 / var) / 2, scale = mean (1 - shape); a shape
    # below 0 (a bounded tail) is taken as 0, and the scale is never lighter than half the
    # null's: a few episodes can look light-tailed.
    y = np.asarray(peaks) - level
    mean, var = float(y.mean()), float(y.var())
    shape = float(np.clip(0.5 * (1.0 - mean * mean / var), 0.0, MAX_SHAPE)) if var > 0 else 0.0
    slope = max(mean * (1.0 - shape), 0.5 * NOMINAL_SLOPE)
    return TailFit(level, len(peaks) / steps, slope, shape)


def tail_threshold(seqs: Sequence[F64], rate: float, gap: int) -> tuple[float, float]:
    """The level whose episodes come at ``rate`` per step, and the fitted rate there."""
    fit = tail_fit(seqs, gap)
    t = fit.threshold(rate)
    return t, fit.rate(t)


def calibrate(
    model: LoadedModel, segments: Sequence[Segment], false_alerts_per_day: float = DEFAULT_FALSE_ALERTS_PER_DAY,
    anomaly: AnomalySettings | None = None,
) -> Result:
    """Measure the evidence on the segments' calibration parts; the manifest block."""
    anomaly = anomaly or AnomalySettings()
    m = model.manifest
    if not segments or all(s.end <= s.start for s in segments):
        raise ValueError("no calibration rows: every segment's calibration part is empty")
    rec = roll(model, segments)
    _, z = replay(rec, model, anomaly, segments, [Calibration()])
    precision = shrunk_precision(z) if len(m.output_features) > 1 else None
    one_hot = [(1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)]
    parts, _ = replay(rec, model, anomaly, segments, [Calibration(precision, s) for s in one_hot])
    factors = tuple(part_factor(p) for p in parts)
    e: F64 = np.fmax.reduce([f * p for f, p in zip(factors, parts, strict=True)])  # NaN only where all are
    steps = int(np.isfinite(e).sum())
    per_step = false_alerts_per_day * m.cadence_s / 86400.0
    n_of, m_of = anomaly.window, anomaly.min_count
    borderline, extreme = tail_fit(mth_largest(e, m_of, n_of), n_of), tail_fit(list(e), n_of)
    t_borderline = borderline.threshold(per_step / 2)
    t_extreme = max(extreme.threshold(per_step / 2), t_borderline)
    fitted = borderline.rate(t_borderline) + extreme.rate(t_extreme)
    block = AnomalyCalibration(
        precision=None if precision is None else precision.tolist(),
        scales=list(factors),
        threshold=1.0 - 10.0**-t_borderline,
        extreme_threshold=1.0 - 10.0**-t_extreme,
        false_alerts_per_day=false_alerts_per_day,
        steps=steps,
    )
    return Result(block, factors, fitted * 86400.0 / m.cadence_s, len(segments), (borderline, extreme))


def write_block(folder: Path, block: AnomalyCalibration) -> Manifest:
    """Rewrite ``folder/manifest.json`` with ``block`` (atomically; the ONNX file and its hash stay)."""
    manifest, _ = read_model(folder)
    updated = manifest.model_copy(update={"anomaly": block})
    text = json.dumps(Manifest.model_validate(updated.model_dump()).model_dump(mode="json"), indent=2) + "\n"
    path = folder / "manifest.json"
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return read_model(folder)[0]


def summary(r: Result, cadence_s: float) -> str:
    b = r.block
    def decades(score: float) -> float:
        return float(-np.log10(1.0 - score))
    parts = ", ".join(f"{p} {f:.2f}" for p, f in zip(PARTS, r.factors, strict=True))
    prec = "identity" if b.precision is None else f"{len(b.precision)}x{len(b.precision)} shrunk"
    return (f"anomaly calibration: {b.steps} steps over {r.streams} series ({b.steps * cadence_s / 86400:.2f} "
            f"stream-days); factors {parts}; precision {prec}; threshold {b.threshold:.10g} "
            f"(E {decades(b.threshold):.2f}, M of N), extreme {b.extreme_threshold:.10g} "
            f"(E {decades(b.extreme_threshold):.2f}); tail shapes {', '.join(f'{t.shape:.2f}' for t in r.tails)}; target {b.false_alerts_per_day:g} false alerts per stream-day, "
            f"fitted {r.expected_per_day:.3g}")
