"""History in, model-ready arrays out: load (CSV or store), resample, split, scale.

A ``Dataset`` is a list of ``Series`` that share feature names and cadence: one
multivariate asset (ETT), or many univariate streams served by one global model.
Missing values stay NaN all the way into the network (which masks them); nothing is
interpolated here. Splits are chronological per series; statistics come from the train
rows only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.records import NS_PER_S, Reading, StreamKey
from service.runtime.timefeatures import time_features
from service.tabular import (
    DataError as DataError,  # re-exported: training's callers catch it from here
)
from service.tabular import (
    column_index,
    is_label,
    label_note,
    numbers,
    parse_time,
    read_table,
    time_index,
    times,
    value_indices,
)
from training.config import DataConfig

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Series:
    """One entity on a regular grid: ``values[t]`` belongs to ``ts_ns[t]``."""

    name: str
    ts_ns: I64  # (N,)
    values: F32  # (N, F), NaN = missing


@dataclass(frozen=True, slots=True)
class Split:
    """Row boundaries (end exclusive): train [0, train_end), val [train_end, val_end), test [val_end, test_end)."""

    train_end: int
    val_end: int
    test_end: int

    @property
    def has_test(self) -> bool:
        return self.test_end > self.val_end


@dataclass(frozen=True, slots=True)
class Dataset:
    features: tuple[str, ...]
    cadence_s: float
    series: tuple[Series, ...]
    source: str
    notes: tuple[str, ...] = ()  # what the reader left out and why, printed once by `sensorcast train`


def infer_cadence(ts_ns: I64) -> float:
    if len(ts_ns) < 2:
        raise DataError("need at least two timestamps to infer the cadence; set data.cadence_s")
    step = float(np.median(np.diff(np.sort(ts_ns)))) / NS_PER_S
    if step <= 0:
        raise DataError("timestamps do not advance (most rows share a time); set data.cadence_s")
    return step


def resample(ts_ns: I64, values: F32, cadence_s: float) -> tuple[I64, F32]:
    """Put irregular rows on the cadence grid: mean of the readings in each bin, NaN where none.

    Bins are ``((k-1)c, kc]`` labelled by their end ``kc``, exactly as the service's stream
    resampler does, so time features and groups match between training and serving.
    """
    if len(ts_ns) == 0:
        raise ValueError("no rows to resample")
    step = round(cadence_s * NS_PER_S)
    k = -(-np.asarray(ts_ns, dtype=np.int64) // step)  # (N,) ceil(ts / step)
    k0 = int(k.min())
    t0 = k0 * step
    idx = k - k0  # (N,)
    n = int(idx.max()) + 1
    F = values.shape[1]
    out = np.full((n, F), np.nan, dtype=np.float32)
    for f in range(F):
        v = values[:, f].astype(np.float64)
        ok = ~np.isnan(v)
        sums = np.bincount(idx[ok], weights=v[ok], minlength=n)
        counts = np.bincount(idx[ok], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, f] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    grid = t0 + np.arange(n, dtype=np.int64) * step
    return grid, out


def load_csv(cfg: DataConfig) -> Dataset:
    table = read_table(Path(cfg.source), cfg.delimiter)
    path = table.path
    ti = time_index(table, cfg.time_column)
    si = column_index(table, cfg.series_column, "series column", "--series-column") if cfg.series_column else None
    skip = {ti} | ({si} if si is not None else set())
    cols, ci, labels = value_indices(table, cfg.streams, skip, "--streams")
    notes = [label_note(labels, "--streams")] if labels else []
    if table.dropped:
        notes.append(f"{table.dropped} rows without {len(table.header)} fields (as the header has) left out")
    body = table.body
    ts = times(table, ti)
    vals = numbers(table, ci).astype(np.float32)
    groups: dict[str, npt.NDArray[np.bool_]] = {}
    if si is None:
        groups[path.stem] = np.ones(len(body), dtype=bool)
    else:
        names = np.array([r[si] for r in body])
        for name in sorted(set(names.tolist())):
            groups[name] = names == name
    cadence = cfg.cadence_s or infer_cadence(ts[next(iter(groups.values()))])
    ds = _assemble(groups, ts, vals, tuple(cols), cadence, cfg, str(path))
    return replace(ds, notes=tuple(notes))


def _assemble(
    groups: dict[str, npt.NDArray[np.bool_]],
    ts: I64,
    vals: F32,
    cols: tuple[str, ...],
    cadence: float,
    cfg: DataConfig,
    source: str,
) -> Dataset:
    series: list[Series] = []
    for name, sel in groups.items():
        g_ts, g_vals = resample(ts[sel], vals[sel], cadence)
        if cfg.layout == "univariate":
            for f, col in enumerate(cols):
                series.append(Series(f"{name}:{col}" if len(groups) > 1 else col, g_ts, g_vals[:, f : f + 1].copy()))
        else:
            series.append(Series(name, g_ts, g_vals))
    features = ("value",) if cfg.layout == "univariate" else cols
    return Dataset(features, cadence, tuple(series), source)


def _parse_key(text: str) -> StreamKey:
    device, sep, quantity = text.partition("/")
    if not sep or not device or not quantity:
        raise ValueError(f"stream {text!r}: expected 'device/quantity'")
    return StreamKey(device, quantity)


def readings_to_dataset(by_stream: Mapping[StreamKey, Sequence[Reading]], cfg: DataConfig, source: str) -> Dataset:
    """Readings per stream -> Dataset. 'series' layout: one series per device, quantities as features."""
    nonempty = {k: v for k, v in by_stream.items() if v}
    if not nonempty:
        raise ValueError(f"{source}: no readings for the requested streams and time range")
    cadence = cfg.cadence_s or infer_cadence(np.array([r.ts_ns for r in next(iter(nonempty.values()))], dtype=np.int64))
    if cfg.layout == "univariate":
        series = []
        for key in sorted(nonempty):
            rs = nonempty[key]
            ts = np.array([r.ts_ns for r in rs], dtype=np.int64)
            v = np.array([[r.value] for r in rs], dtype=np.float32)
            g_ts, g_v = resample(ts, v, cadence)
            series.append(Series(key.id, g_ts, g_v))
        return Dataset(("value",), cadence, tuple(series), source)
    quantities = tuple(sorted({k.quantity for k in nonempty}))
    devices = sorted({k.device for k in nonempty})
    out = []
    for dev in devices:
        ts_l, v_l = [], []
        for f, q in enumerate(quantities):
            for r in nonempty.get(StreamKey(dev, q), ()):
                row = [np.nan] * len(quantities)
                row[f] = r.value
                ts_l.append(r.ts_ns)
                v_l.append(row)
        g_ts, g_v = resample(np.array(ts_l, dtype=np.int64), np.array(v_l, dtype=np.float32), cadence)
        out.append(Series(dev, g_ts, g_v))
    return Dataset(quantities, cadence, tuple(out), source)


def load_store(cfg: DataConfig) -> Dataset:
    """Read the configured streams (all when none given) over [start, end) from a store URL.

    The other store settings (password or token file, measurement, timeout) are the
    service's, from SENSORCAST_STORE__* as it reads them: the compose trainer reads the
    service's store with the service's secret file, never a password on its command line.
    """
    from service.config import Settings
    from service.store import open_store

    store = open_store(Settings().store.model_copy(update={"url": cfg.source}))
    labels: list[str] = []
    try:
        keys = [_parse_key(s) for s in cfg.streams]
        if not keys:  # every stream, except quantities named like a label
            every = store.streams()
            keys = [k for k in every if not is_label(k.quantity)]
            labels = sorted({k.id for k in every if is_label(k.quantity)})
        start = parse_time(cfg.start) if cfg.start else 0
        end = parse_time(cfg.end) if cfg.end else 2**62
        data = {k: store.read_range(k, start, end) for k in keys}
    finally:
        store.close()
    ds = readings_to_dataset(data, cfg, cfg.source)
    return replace(ds, notes=(label_note(labels, "--streams"),)) if labels else ds


def load(cfg: DataConfig) -> Dataset:
    if "://" in cfg.source:
        return load_store(cfg)
    return load_csv(cfg)


def split_rows(n: int, cfg: DataConfig) -> Split:
    """Chronological split; explicit rows may leave no test part (test_end == val_end)."""
    if cfg.split_rows is not None:
        tr, va, te = (*cfg.split_rows, cfg.split_rows[1])[:3]  # (train_end, val_end) alone: no test part
        if not 0 < tr < va <= te <= n:
            raise DataError(f"--split-rows / data.split_rows {','.join(map(str, cfg.split_rows))}: found a series "
                            f"of {n} rows; expected 0 < train_end < val_end <= test_end <= {n}")
        return Split(tr, va, te)
    ftr, fva = cfg.split
    tr, va = int(n * ftr), int(n * (ftr + fva))
    if not 0 < tr < va < n:
        raise DataError(f"found a series of {n} rows; too short for split {cfg.split} (train, validation, rest test)")
    return Split(tr, va, n)


def train_stats(values: Sequence[F32], splits: Sequence[Split]) -> tuple[F32, F32]:
    """Per-feature mean and population std over the train rows of every series."""
    stacked = np.concatenate([v[: s.train_end] for v, s in zip(values, splits, strict=True)], axis=0)
    mean = np.nanmean(stacked, axis=0).astype(np.float32)
    std = np.nanstd(stacked, axis=0).astype(np.float32)
    if np.isnan(mean).any():
        raise DataError(f"feature(s) {np.flatnonzero(np.isnan(mean)).tolist()} have no observed value in the train "
                        "split; expected some readings in the first part of the history")
    std = np.where(std > 1e-8, std, 1.0).astype(np.float32)  # a constant feature: leave its scale alone
    return mean, std


def targets(values: F32, horizon: int, end: int) -> F32:
    """(N, H, F): row t holds values[t+1 .. t+H]; NaN where that reaches ``end`` or beyond."""
    N, F = values.shape
    padded = np.full((N + horizon, F), np.nan, dtype=np.float32)
    padded[:end] = values[:end]
    win = np.lib.stride_tricks.sliding_window_view(padded[1:], horizon, axis=0)  # (N, F, H)
    return np.ascontiguousarray(win[:N].transpose(0, 2, 1))


def tf_for(series: Series, names: Sequence[str]) -> F32 | None:
    return time_features(series.ts_ns, tuple(names)) if names else None
