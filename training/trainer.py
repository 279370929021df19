"""From a config and a dataset to a trained network and its accuracy report.

``train`` is what ``sensorcast train`` and the ETT benchmark both call; ``assess`` scores
a network on validation and test next to repeat-last and seasonal-naive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training import rollout
from training.config import STEP_CELLS, Config
from training.data import F32, DataError, Dataset, split_rows, targets, tf_for, train_stats
from training.fit import History, Prepared, fit_step, fit_window, seed_all
from training.metrics import Score, repeat_last, score, season_steps, seasonal_naive
from training.nets import SegRNN, StepNet


@dataclass(slots=True)
class Trained:
    cfg: Config
    net: StepNet | SegRNN
    history: History
    data: list[Prepared]
    mean: F32  # (F,) pooled train stats, baked into the graph
    std: F32
    dataset: Dataset


def time_names(cfg: Config) -> tuple[str, ...]:
    # Window models (SegRNN) read only values: their level comes from the window itself.
    return tuple(cfg.data.time_features) if cfg.model.cell in STEP_CELLS else ()


def prepare(ds: Dataset, cfg: Config) -> tuple[list[Prepared], F32, F32]:
    splits = [split_rows(len(s.values), cfg.data) for s in ds.series]
    mean, std = train_stats([s.values for s in ds.series], splits)
    names = time_names(cfg)
    out = []
    for s, sp in zip(ds.series, splits, strict=True):
        m, sd = train_stats([s.values], [sp])
        out.append(Prepared(s.values, tf_for(s, names), sp, m, sd))
    return out, mean, std


def check_trainable(ds: Dataset, cfg: Config) -> None:
    """Refuse, with one line that says what was found, data this config cannot train on.

    Rows: the longest series must leave the network one training run (a window, or a
    burn-in chunk and a loss chunk, plus the horizon) and at least one forecast position
    in validation and in test. Channels: a constant one has nothing to forecast and its
    std of zero would turn every error into infinity.
    """
    m, tr = cfg.model, cfg.train
    H = m.horizon
    n = max(len(s.values) for s in ds.series)
    sp = split_rows(n, cfg.data)
    window = m.cell not in STEP_CELLS
    need_train = (m.window if window else 2 * tr.chunk) + H
    first = m.window - 1 if window else max(m.lags, tr.chunk) - 1  # assess's first position
    found = {"train": sp.train_end, "validation": sp.val_end - sp.train_end, "test": sp.test_end - sp.val_end}
    short = []
    if sp.train_end < need_train:
        short.append(f"train needs >= {need_train}")
    for name, lo, hi in (("validation", sp.train_end, sp.val_end), ("test", sp.val_end, sp.test_end)):
        if name == "test" and not sp.has_test:
            continue  # --split-rows without a test part: validation only
        if hi - H <= max(lo - 1, first):
            short.append(f"{name} needs >= {max(lo - 1, first) - lo + H + 1}")
    if short:
        what = "window " + str(m.window) if window else f"chunk {tr.chunk}"
        raise DataError(f"found {n} rows (train/validation/test {'/'.join(str(v) for v in found.values())}); "
                        f"too few for {what} and horizon {H}: {', '.join(short)} rows "
                        "(more history, a smaller --horizon/--chunk/--window, or --split-rows)")
    splits = [split_rows(len(s.values), cfg.data) for s in ds.series]
    stacked = np.concatenate([s.values[: p.train_end] for s, p in zip(ds.series, splits, strict=True)], axis=0)
    for f, name in enumerate(ds.features):
        col = stacked[:, f]
        seen = col[~np.isnan(col)]
        if len(seen) and float(seen.max() - seen.min()) == 0.0:
            raise DataError(f"channel {name!r} is constant ({float(seen[0]):g} in all {len(seen)} train readings); "
                            "expected a varying signal (leave it out with --streams)")


def build(cfg: Config, n_features: int, mean: F32, std: F32) -> StepNet | SegRNN:
    if cfg.model.cell in STEP_CELLS:
        return StepNet(cfg.model, n_features, len(time_names(cfg)), mean.tolist(), std.tolist())
    return SegRNN(cfg.model, n_features, mean.tolist(), std.tolist())


def train(cfg: Config, ds: Dataset) -> Trained:
    data, mean, std = prepare(ds, cfg)
    seed_all(cfg.train.seed, cfg.train.threads)  # before build: initial weights are part of the run
    net = build(cfg, len(ds.features), mean, std)
    if isinstance(net, StepNet):
        hist = fit_step(net, data, cfg.train)
    else:
        hist = fit_window(net, data, cfg.train)
    setattr(net, "trained", True)  # noqa: B010  export refuses a network without this mark
    t = Trained(cfg, net, hist, data, mean, std, ds)
    calibrate_scale(t)
    return t


def calibrate_scale(t: Trained) -> None:
    """Rescale the predicted spread per horizon step so validation residuals have unit z.

    A robust fit (median |z| / 0.6745) so a few anomalies in validation do not widen
    every band, widened where the tail is heavy so that 99.9% of normal residuals stay
    within 4 sigma: the anomaly score erf(z / sqrt 2) saturates in float64 near z = 8,
    so a heavy tail would otherwise leave no usable threshold. The multiplier is a
    buffer inside the graph: export carries it.
    """
    H = t.cfg.model.horizon
    zs: list[F32] = []
    for d in t.data:
        pos = rollout.split_positions(d.split.train_end, d.split.val_end, H, first_valid=t.cfg.model.window)
        if len(pos) == 0:
            continue
        if isinstance(t.net, StepNet):
            fc, sc = rollout.stream_with_scale(t.net, d.values, d.tf, pos)
        else:
            fc, sc = rollout.windowed(t.net, d.values, pos)
        y = targets(d.values, H, d.split.val_end)[pos]
        zs.append((np.abs(y - fc) / sc).transpose(1, 0, 2).reshape(H, -1))  # (H, P*F)
    if not zs:
        return
    z = np.concatenate(zs, axis=1)
    with np.errstate(all="ignore"):
        mult = np.maximum(np.nanmedian(z, axis=1) / 0.6745, np.nanquantile(z, 0.999, axis=1) / 4.0)  # (H,)
    mult = np.where(np.isfinite(mult) & (mult > 0), mult, 1.0).astype(np.float32)
    buf = t.net.scale_mult  # (H, 1)
    buf.mul_(torch.from_numpy(mult)[:, None])


@dataclass(frozen=True, slots=True)
class Assessment:
    model: Score
    repeat_last: Score
    seasonal_naive: Score | None
    fresh: Score | None  # step models: zero state fed only `window` rows (the carried-state gap)


def forecasts(net: nn.Module, d: Prepared, pos: np.ndarray) -> F32:
    if isinstance(net, StepNet):
        return rollout.stream(net, d.values, d.tf, pos)
    assert isinstance(net, SegRNN)
    return rollout.windowed(net, d.values, pos)[0]


def assess(t: Trained, which: str, fresh_length: int | None = None) -> Assessment:
    """Score on 'val' or 'test', pooled over every series.

    ``fresh_length`` (step models): rows a fresh state is fed before a forecast; by
    default the lag buffer or the training burn-in, whichever is longer.
    """
    H = t.cfg.model.horizon
    fresh_length = fresh_length or max(t.cfg.model.lags, t.cfg.train.chunk)
    first = t.cfg.model.window - 1 if isinstance(t.net, SegRNN) else 0
    first = max(first, fresh_length - 1) if isinstance(t.net, StepNet) else first
    season = t.cfg.data.season_steps or season_steps(t.dataset.cadence_s, H)
    parts: dict[str, list[tuple[F32, F32, F32, F32]]] = {"model": [], "last": [], "season": [], "fresh": []}
    for d in t.data:
        lo, hi = (d.split.train_end, d.split.val_end) if which == "val" else (d.split.val_end, d.split.test_end)
        pos = rollout.split_positions(lo, hi, H, first_valid=first)
        if len(pos) == 0:
            continue
        y = targets(d.values, H, hi)[pos]
        parts["model"].append((forecasts(t.net, d, pos), y, d.mean, d.std))
        parts["last"].append((repeat_last(d.values, pos, H), y, d.mean, d.std))
        sn = seasonal_naive(d.values, pos, H, season)
        if not np.isnan(sn).all():
            parts["season"].append((sn, y, d.mean, d.std))
        if isinstance(t.net, StepNet):
            parts["fresh"].append((rollout.fresh(t.net, d.values, d.tf, pos, fresh_length), y, d.mean, d.std))
    if not parts["model"]:
        raise ValueError(f"no {which} positions: series too short for horizon {H}")

    def pooled(items: list[tuple[F32, F32, F32, F32]]) -> Score | None:
        if not items:
            return None
        # Bring every series to its own train-std units, then score together.
        fc = np.concatenate([(f - m) / s for f, _, m, s in items])
        ys = np.concatenate([(y - m) / s for _, y, m, s in items])
        F = fc.shape[-1]
        return score(fc, ys, np.zeros(F, np.float32), np.ones(F, np.float32))

    m = pooled(parts["model"])
    r = pooled(parts["last"])
    assert m is not None and r is not None
    return Assessment(m, r, pooled(parts["season"]), pooled(parts["fresh"]))


def calibrate_threshold(t: Trained, target_rate: float = 1e-3) -> tuple[float, dict[str, float]]:
    """Default anomaly threshold from validation one-step residuals.

    The service scores ``erf(z / sqrt 2)`` with ``z = |actual - forecast[0]| / scale[0]``;
    the threshold is the score that normal validation data exceeds at ``target_rate`` of
    steps, so a miscalibrated spread moves the threshold instead of flooding alerts.
    """
    from math import erf, sqrt

    zs = []
    for d in t.data:
        pos = rollout.split_positions(d.split.train_end, d.split.val_end, 1, first_valid=t.cfg.model.window)
        if len(pos) == 0:
            continue
        if isinstance(t.net, StepNet):
            fc, sc = rollout.stream_with_scale(t.net, d.values, d.tf, pos)
        else:
            fc, sc = rollout.windowed(t.net, d.values, pos)
        y = d.values[pos + 1]  # (P, F)
        z = np.abs(y - fc[:, 0]) / sc[:, 0]
        zs.append(z[~np.isnan(z)])
    if not zs or not sum(len(z) for z in zs):
        return 0.999, {}
    z = np.concatenate(zs)
    zq = float(np.quantile(z, 1 - target_rate))
    thr = float(np.clip(erf(zq / sqrt(2)), 0.99, 0.999999))
    return thr, {"val_coverage_95": float(np.mean(z < 1.96)), "val_z_q999": zq, "threshold": thr}
