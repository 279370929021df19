"""History in, model-ready arrays out: load (CSV or store), resample, split, scale.

A ``Dataset`` is a list of ``Series`` that share feature names and cadence: one
multivariate asset (ETT), or many univariate streams served by one global model.
Missing values stay NaN all the way into the network (which masks them); nothing is
interpolated here. Splits are chronological per series; statistics come from the train
rows only.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.records import NS_PER_S, Reading, StreamKey
from service.runtime.timefeatures import time_features
from training.config import DataConfig

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class DataError(ValueError):
    """The data, or the settings that describe it, do not fit: a user's error, not a bug.

    The message is one line naming what was found and what was expected;
    ``sensorcast train`` prints it and exits with status 2, without a traceback.
    """


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


@dataclass(frozen=True, slots=True)
class Dataset:
    features: tuple[str, ...]
    cadence_s: float
    series: tuple[Series, ...]
    source: str


def _parse_time(text: str) -> int:
    s = text.strip()
    try:
        v = float(s)
    except ValueError:
        pass
    else:  # epoch seconds, milliseconds or nanoseconds, by magnitude
        if v > 1e17:
            return int(v)
        if v > 1e11:
            return int(v * 1e6)
        return int(v * NS_PER_S)
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # naive timestamps are read as UTC
    return int(dt.timestamp()) * NS_PER_S + dt.microsecond * 1000


def _float(text: str, decimal_comma: bool = False) -> float:
    try:
        return float(text.replace(",", ".") if decimal_comma else text)
    except ValueError:
        return float("nan")  # empty or garbled cell: missing, not a crash


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


def _read_rows(path: Path, delimiter: str) -> tuple[list[list[str]], str]:
    """The file's rows and its delimiter: the configured one, else sniffed from the start."""
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        raise DataError(f"{path}: found {what}; expected a CSV file with a header row (check --source)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            if not delimiter:
                sample = fh.read(64 * 1024)
                fh.seek(0)
                try:
                    delimiter = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=",;\t|").delimiter
                except csv.Error:
                    delimiter = ","  # one column, or no candidate in the header: the default
            return list(csv.reader(fh, delimiter=delimiter)), delimiter
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected a CSV text file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); expected a readable CSV file") from None


def _column(path: Path, header: list[str], name: str, what: str, flag: str) -> int:
    n = header.count(name)
    if n == 0:
        raise DataError(f"{path}: {what} {name!r} not in the header; found columns {header} (set {flag})")
    if n > 1:
        raise DataError(f"{path}: {what} {name!r} is ambiguous: the header names it {n} times; "
                        "expected unique column names")
    return header.index(name)


def _times(path: Path, body: list[list[str]], ti: int, name: str) -> I64:
    out = np.empty(len(body), dtype=np.int64)
    for k, r in enumerate(body):
        try:
            out[k] = _parse_time(r[ti])
        except ValueError:
            raise DataError(f"{path}: row {k + 2}: time {r[ti]!r} in column {name!r} is not a time; expected "
                            "ISO 8601 (2024-01-31T12:00:00Z) or epoch seconds/ms/ns") from None
    return out


def load_csv(cfg: DataConfig) -> Dataset:
    path = Path(cfg.source)
    rows, delim = _read_rows(path, cfg.delimiter)
    rows = [r for r in rows if r]  # blank lines
    if len(rows) < 3:
        raise DataError(f"{path}: found {len(rows)} non-empty lines; expected a header and at least two rows")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataError(f"{path}: found one column {header[0][:60]!r} with delimiter {delim!r}; expected a time "
                        "column and value columns (set --delimiter)")
    ti = _column(path, header, cfg.time_column, "time column", "--time-column")
    si = _column(path, header, cfg.series_column, "series column", "--series-column") if cfg.series_column else None
    skip = {ti} | ({si} if si is not None else set())
    cols = list(cfg.streams) or [h for i, h in enumerate(header) if i not in skip]
    ci = [_column(path, header, c, "column", "--streams") for c in cols]
    if not ci:
        raise DataError(f"{path}: found no value columns besides {header}; expected at least one")
    body = [r for r in rows[1:] if len(r) == len(header)]
    if len(body) < 2:
        raise DataError(f"{path}: found {len(body)} rows with {len(header)} fields (as the header has); "
                        f"expected at least two (is the delimiter {delim!r} right? set --delimiter)")
    ts = _times(path, body, ti, cfg.time_column)
    # ';'-separated files usually come with decimal commas (26,5): read them as numbers.
    comma = delim != ","
    vals = np.array([[_float(r[i], comma) for i in ci] for r in body], dtype=np.float32).reshape(len(body), len(ci))
    for f, c in enumerate(cols):
        if np.isnan(vals[:, f]).all():
            example = next((r[ci[f]] for r in body if r[ci[f]].strip()), "")
            raise DataError(f"{path}: column {c!r} has no number in {len(body)} rows (found e.g. {example!r}); "
                            "expected numeric values")
    groups: dict[str, npt.NDArray[np.bool_]] = {}
    if si is None:
        groups[path.stem] = np.ones(len(body), dtype=bool)
    else:
        names = np.array([r[si] for r in body])
        for name in sorted(set(names.tolist())):
            groups[name] = names == name
    cadence = cfg.cadence_s or infer_cadence(ts[next(iter(groups.values()))])
    return _assemble(groups, ts, vals, tuple(cols), cadence, cfg, str(path))


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
    try:
        keys = [_parse_key(s) for s in cfg.streams] or store.streams()
        start = _parse_time(cfg.start) if cfg.start else 0
        end = _parse_time(cfg.end) if cfg.end else 2**62
        data = {k: store.read_range(k, start, end) for k in keys}
    finally:
        store.close()
    return readings_to_dataset(data, cfg, cfg.source)


def load(cfg: DataConfig) -> Dataset:
    if "://" in cfg.source:
        return load_store(cfg)
    return load_csv(cfg)


def split_rows(n: int, cfg: DataConfig) -> Split:
    if cfg.split_rows is not None:
        tr, va, te = cfg.split_rows
        if not 0 < tr < va < te <= n:
            raise DataError(f"data.split_rows {cfg.split_rows} must satisfy 0 < train < val < test <= {n} rows")
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
