"""``sensorcast backtest``: replay history through exactly the live forecast/alert path.

Rows from a CSV (a timestamp column plus value columns) or from the store are fed to a
real ``Engine`` (same resampler, state table, scorer and decider) with a simulated clock:
each row is accepted and then ``tick(now=row time)`` runs, so every bucket is fed as soon
as it has ended, as it would be live. Per row and stream the output has the value, what
the model expected for it (the forecast made one step earlier), the band, the score (in
full precision), the stream status and any alert event with its check, kind and
contributing features, so alert settings can be tuned on history. CSV input is read as
``sensorcast train`` reads it (``service/tabular.py``).

``backtest_frame()`` is the same as a function (the NAB runner calls it for all 58 files).
With ``as_steps=True`` every row is one model step whatever its timestamp (rows are
re-stamped onto the model's cadence; the output keeps the original timestamps): use it
when the data's cadence differs from the model's or is irregular.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from service.config import AnomalySettings, ModelBinding, Settings
from service.errors import ConfigError, ModelError
from service.metrics import Metrics
from service.records import NS_PER_S, Alert, Reading, StreamKey
from service.runtime.explain import AttentionReplay, top_lags
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from service.tabular import (
    LABEL_COLUMNS,
    TIME_COLUMNS,
    label_note,
    numbers,
    read_table,
    time_index,
    times,
    value_indices,
)
from service.tabular import parse_time as parse_time  # the backtest's --start/--end and its callers

DEVICE = "backtest"


@dataclass(frozen=True, slots=True)
class BacktestRow:
    ts_ns: int
    stream: str
    value: float
    expected: float | None
    lower: float | None
    upper: float | None
    score: float | None  # None while warming or unscored
    status: str  # warming | ok | firing | none (no step yet)
    event: str  # "", "firing" or "resolved"; several alert events on one row: joined by ";"
    check: str = ""  # the events' checks (anomaly, stuck, silent...), in the order of ``event``
    kind: str = ""  # the events' kinds (spike, level_shift, ...), in the same order
    contributors: tuple[tuple[str, float], ...] = ()  # (feature, share), top first: multivariate evidence
    evidence: float | None = None  # -log10(1 - score): ranks readings beyond where the score reads 1.0
    # (lag, weight), heaviest first: the steps this row's forecast attended to (--attention)
    attention: tuple[tuple[int, float], ...] = ()


def backtest_frame(
    models: ModelRegistry | Path,
    model: str,
    timestamps_ns: Sequence[int],
    values: Sequence[Sequence[float]],
    columns: Sequence[str],
    settings: Settings | None = None,
    version: str | None = None,
    as_steps: bool = False,
    attention: bool = False,
) -> list[BacktestRow]:
    """Replay ``values`` (T rows x len(columns)) at ``timestamps_ns`` through a fresh engine.

    A univariate model makes one stream per column (``backtest/<column>``); a multivariate
    model makes one stream whose features are the columns of the same name.
    ``attention`` (seq2seq-attn models): each row also names the lags its forecast looked at.
    """
    if len(timestamps_ns) != len(values):
        raise ValueError(f"{len(timestamps_ns)} timestamps for {len(values)} rows")
    registry = models if isinstance(models, ModelRegistry) else ModelRegistry(models)
    loaded = registry.get(model, version)
    features = loaded.manifest.features
    if len(features) > 1:
        missing = set(features) - set(columns)
        if missing:
            raise ValueError(f"model {model} needs columns {features}; missing {sorted(missing)}")
    base = settings or Settings(_env_file=None)
    binding = ModelBinding(model=model, version=loaded.version, device=DEVICE, quantity="*")
    s = base.model_copy(update={"models": base.models.model_copy(update={"bindings": [binding], "watch": False})})
    pending: dict[str, list[Alert]] = {}

    def on_alert(a: Alert) -> None:
        pending.setdefault(a.stream_id, []).append(a)

    engine = Engine(s, registry, None, Metrics(), on_alert=on_alert)
    keys = [StreamKey(DEVICE, c) for c in columns]
    cadence_ns = round(loaded.manifest.cadence_s * NS_PER_S)
    start = (int(timestamps_ns[0]) // cadence_ns + 1) * cadence_ns if timestamps_ns else 0
    multivariate = len(features) > 1
    stream_ids = [DEVICE] if multivariate else [k.id for k in keys]
    out: list[BacktestRow] = []
    n = len(timestamps_ns)
    grace_ns = round(s.streams.close_grace_s * NS_PER_S)
    steps_ns: list[int] = []  # each row's bucket time (the attention replay's time features)
    for i, (ts, row) in enumerate(zip(timestamps_ns, values, strict=True)):
        t = start + i * cadence_ns if as_steps else int(ts)
        engine.accept([Reading(k, t, float(v)) for k, v in zip(keys, row, strict=True) if v == v])
        bucket_ts = -(-t // cadence_ns) * cadence_ns
        steps_ns.append(bucket_ts)
        # The simulated clock: when the next row lies in a later bucket, time passes this
        # bucket's end before it arrives (as it would live), so the bucket is fed now.
        nxt = None if i + 1 == n else (start + (i + 1) * cadence_ns if as_steps else int(timestamps_ns[i + 1]))
        # (A multivariate row missing some columns waits out the grace, as it would live.)
        engine.tick(bucket_ts + grace_ns if nxt is None or nxt > bucket_ts else t)
        snap = engine.snapshot(stream_ids)
        fed = (snap["last_ts_ns"] == bucket_ts).tolist()
        warm = snap["warm"].tolist()
        status = np.where(snap["firing"], "firing", np.where(snap["warm"], "ok", "warming"))
        status[~snap["known"]] = "none"
        cols = {k: snap[k].tolist() for k in ("value", "expected", "lower", "upper", "score", "evidence")}
        for j, sid in enumerate(stream_ids):
            value = cols["value"][j] if multivariate else float(row[j])
            # Every event up to this bucket goes on this row (a watchdog's may carry its tick's time).
            due = [a for a in pending.get(sid, ()) if a.ts_ns <= bucket_ts]
            if due:
                pending[sid] = [a for a in pending[sid] if a.ts_ns > bucket_ts]
            if not fed[j]:
                out.append(_with_events(BacktestRow(int(ts), sid, value, None, None, None, None, str(status[j]), ""),
                                        due))
                continue
            ok = warm[j]
            out.append(_with_events(BacktestRow(
                ts_ns=int(ts), stream=sid, value=value,
                expected=_opt(cols["expected"][j]) if ok else None,
                lower=_opt(cols["lower"][j]), upper=_opt(cols["upper"][j]),
                score=_opt(cols["score"][j]) if ok else None, status=str(status[j]), event="",
                evidence=_opt(cols["evidence"][j]) if ok else None,
            ), due))
    # Events of the last tick (it runs past the last row's bucket) go on each stream's last row.
    for k in range(len(out) - 1, max(len(out) - len(stream_ids), 0) - 1, -1):
        late = pending.pop(out[k].stream, [])
        if late:
            out[k] = _with_events(out[k], late)
    if attention:
        picked = [columns.index(f) for f in features] if multivariate else list(range(len(columns)))
        x = np.asarray(values, np.float32).reshape(n, len(columns))[:, picked]  # (T, F) or (T, streams)
        # One model step per row, as the rows were fed (the engine's resampling and its
        # anomaly masking are not replayed: see docs/engine.md, backtest).
        w = AttentionReplay(loaded.folder).run(x[:, None, :] if multivariate else x[:, :, None],
                                               np.asarray(steps_ns, np.int64))  # (T, B, H, K)
        b = len(stream_ids)
        out = [replace(r, attention=top_lags(w[i // b, i % b])) for i, r in enumerate(out)]
    return out


def _with_events(row: BacktestRow, alerts: Sequence[Alert]) -> BacktestRow:
    if not alerts:
        return row
    events = [*([row.event] if row.event else []), *(a.state for a in alerts)]
    checks = [*([row.check] if row.check else []), *(a.check for a in alerts)]
    kinds = [*([row.kind] if row.kind else []), *(a.kind for a in alerts)]
    named = [a.contributors for a in alerts if a.contributors]
    return replace(row, event=";".join(events), check=";".join(checks), kind=";".join(kinds),
                   contributors=row.contributors or (named[0] if named else ()))


def _opt(v: float) -> float | None:
    return None if v != v else v


# ---------------------------------------------------------------- CSV and store input


@dataclass(frozen=True, slots=True)
class History:
    """Rows read for a backtest, and what the reader left out (printed once)."""

    ts_ns: list[int]
    values: list[list[float]]
    columns: list[str]
    notes: tuple[str, ...] = ()


def load_csv(path: Path, time_column: str = "", columns: Sequence[str] | None = None,
             delimiter: str = "") -> History:
    """The CSV through the reader ``sensorcast train`` uses (``service/tabular.py``): same
    delimiter detection, decimal commas, default time column and label-like columns left out."""
    table = read_table(path, delimiter, source_flag="--csv")
    ti = time_index(table, time_column)
    cols, idx, labels = value_indices(table, columns or (), {ti}, "--columns")
    notes = [label_note(labels, "--columns")] if labels else []
    if table.dropped:
        notes.append(f"{table.dropped} rows without {len(table.header)} fields (as the header has) left out")
    return History(times(table, ti).tolist(), numbers(table, idx).tolist(), cols, tuple(notes))


def read_csv(path: Path, time_column: str = "", columns: Sequence[str] | None = None,
             delimiter: str = "") -> tuple[list[int], list[list[float]], list[str]]:
    h = load_csv(path, time_column, columns, delimiter)
    return h.ts_ns, h.values, h.columns


def read_store(settings: Settings, device: str, quantities: list[str], start_ns: int, end_ns: int) -> tuple[
    list[int], list[list[float]], list[str]
]:
    from service.store import open_store

    store = open_store(settings.store)
    try:
        series = {q: {r.ts_ns: r.value for r in store.read_range(StreamKey(device, q), start_ns, end_ns)} for q in quantities}
    finally:
        store.close()
    stamps = sorted({t for s in series.values() for t in s})
    return stamps, [[series[q].get(t, math.nan) for q in quantities] for t in stamps], quantities


COLUMNS = ("timestamp", "stream", "value", "expected", "lower", "upper", "score", "evidence", "status", "event", "check",
           "kind", "contributors")


def write_rows(rows: list[BacktestRow], out: Path | None, attention: bool = False) -> None:
    """One CSV row per BacktestRow; numbers in full precision (``float(cell)`` gives the value back).
    ``attention``: a last column ``attention``, JSON [[lag, weight], ...]."""
    f = sys.stdout if out is None else out.open("w", newline="", encoding="utf-8")
    try:
        w = csv.writer(f)
        w.writerow((*COLUMNS, "attention") if attention else COLUMNS)
        for r in rows:
            sec, ns = divmod(r.ts_ns, NS_PER_S)
            when = datetime.fromtimestamp(sec, tz=UTC).replace(microsecond=ns // 1000).isoformat()
            contributors = json.dumps([[name, share] for name, share in r.contributors]) if r.contributors else ""
            cells = [when, r.stream, _fmt(r.value), _fmt(r.expected), _fmt(r.lower), _fmt(r.upper),
                     _fmt(r.score), _fmt(r.evidence), r.status, r.event, r.check, r.kind, contributors]
            if attention:
                cells.append(json.dumps([[lag, weight] for lag, weight in r.attention]) if r.attention else "")
            w.writerow(cells)
    finally:
        if out is not None:
            f.close()


def _fmt(v: float | None) -> str:
    # repr: the shortest text that reads back as the same float. Rounding to 6 digits made
    # 3.8 % of normal rows' scores read exactly 1 on Tennessee Eastman.
    return "" if v is None or v != v else repr(float(v))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Model name under the models directory.")
    p.add_argument("--version", help="Model version (newest when omitted).")
    p.add_argument("--models-dir", type=Path, help="Models directory (default: settings, SENSORCAST_MODELS__DIR).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", type=Path, help="CSV with a time column and value columns (the reader of "
                     "sensorcast train).")
    src.add_argument("--device", help="Replay stored history of this device (see --store).")
    p.add_argument("--store", help="Store URL for --device (default: settings, SENSORCAST_STORE__URL).")
    p.add_argument("--time-column", default="", help="CSV time column (default: the one column named "
                   f"{', '.join(TIME_COLUMNS)}, any case; the same default as sensorcast train). "
                   "ISO 8601 (naive = UTC) or epoch s/ms/us/ns.")
    p.add_argument("--delimiter", default="", help="CSV delimiter, one character (default: detected from the "
                   "header: ',', ';', tab or '|'; in files not separated by commas, decimal commas are read).")
    p.add_argument("--columns", help="Comma-separated value columns / quantities (CSV default: all but the time "
                   "column and columns named like a label: " + ", ".join(LABEL_COLUMNS) + ").")
    p.add_argument("--start", help="Store replay start (ISO time).")
    p.add_argument("--end", help="Store replay end (ISO time, exclusive).")
    p.add_argument("--as-steps", action="store_true", help="Every row is one model step (ignore spacing).")
    p.add_argument("--scorer", choices=("evidence", "spread", "surprise"), help="anomaly.scorer (default: settings).")
    p.add_argument("--spread-alpha", type=float, help="anomaly.spread_alpha (default: settings, then the scorer's).")
    p.add_argument("--threshold", type=float, help="Score threshold (default: settings, then model).")
    p.add_argument("--clear-threshold", type=float, help="anomaly.clear_threshold: a firing alert resolves once "
                   "the score stays below this (default: settings).")
    p.add_argument("--min-count", type=int, help="M of the M-of-N rule (anomaly.min_count).")
    p.add_argument("--window", type=int, help="N of the M-of-N rule (anomaly.window).")
    p.add_argument("--cooldown-s", type=float, help="anomaly.cooldown_s: seconds after a resolution before the "
                   "stream may fire again (default: settings).")
    p.add_argument("--attention", action="store_true", help="seq2seq-attn models: add a column 'attention', "
                   "the 3 past steps each row's forecast looked at most, JSON [[lag, weight], ...] (lag 0 = this "
                   "row; weights averaged over the horizon)")
    p.add_argument("--out", type=Path, help="Output CSV (default stdout): timestamp, stream, value, expected, lower, "
                   "upper, score (full precision), status, event, check, kind, contributors (JSON [[feature, share]]).")


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    names = ("scorer", "spread_alpha", "threshold", "clear_threshold", "min_count", "window", "cooldown_s")
    updates = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    try:  # validated like the settings themselves (model_copy would not check the values)
        anomaly = AnomalySettings.model_validate({**settings.anomaly.model_dump(), **updates})
    except ValueError as e:
        print(f"sensorcast backtest: {e}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"anomaly": anomaly})
    if args.store:
        settings = settings.model_copy(update={"store": settings.store.model_copy(update={"url": args.store})})
    models_dir = args.models_dir or settings.models.dir
    columns = args.columns.split(",") if args.columns else None
    if len(args.delimiter) > 1:
        print(f"sensorcast backtest: --delimiter {args.delimiter!r}: expected one character", file=sys.stderr)
        return 2
    try:
        if args.csv is not None:
            history = load_csv(args.csv, args.time_column, columns, args.delimiter)
            for note in history.notes:
                print(f"backtest: {note}", file=sys.stderr)
            ts, vals, cols = history.ts_ns, history.values, history.columns
        else:
            if not columns:
                raise ConfigError("--device needs --columns (the quantities to replay)")
            start = parse_time(args.start) if args.start else 0
            end = parse_time(args.end) if args.end else 2**62
            ts, vals, cols = read_store(settings, args.device, columns, start, end)
        rows = backtest_frame(models_dir, args.model, ts, vals, cols, settings, args.version, args.as_steps,
                              args.attention)
    except (ValueError, ConfigError, ModelError) as e:
        print(f"sensorcast backtest: {e}", file=sys.stderr)
        return 2
    write_rows(rows, args.out, args.attention)
    n_events = sum(r.event.split(";").count("firing") for r in rows)
    print(f"backtest: {len(ts)} rows, {len(rows)} stream-rows, {n_events} alerts fired", file=sys.stderr)
    return 0
