"""``sensorcast calibrate``: (re)compute a model's anomaly calibration from history, no retraining.

    sensorcast calibrate models/pump/3 --source history.csv [--split-rows 4000,6000]

The history is read as ``sensorcast train`` reads it (CSV or store URL), resampled to the
model's cadence; per series, rows before the calibration part only warm the state. By
default the calibration part is the trainer's validation split (70-80 % of each series),
so calibrating the training history reproduces what training wrote; ``--split-rows
WARM,END`` picks it explicitly (e.g. a stretch of known-normal operation). Only
``manifest.json`` is rewritten (atomically): the ONNX file and its SHA-256 stay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.errors import ModelError
from training.calibrate import (
    DEFAULT_FALSE_ALERTS_PER_DAY,
    Segment,
    calibrate,
    open_model,
    summary,
    write_block,
)
from training.config import DataConfig
from training.data import DataError, load, split_rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="model folder with manifest.json and model.onnx (models/<name>/<version>)")
    p.add_argument("--source", required=True, help="CSV file or store URL (influxdb://..., sqlite:///...) with normal "
                   "operation")
    p.add_argument("--streams", help="comma-separated: CSV columns or store stream ids (default: the model's features "
                   "for a multivariate model, every column otherwise)")
    p.add_argument("--time-column", default="", help="CSV time column (default: as sensorcast train)")
    p.add_argument("--delimiter", default="", help="CSV delimiter (default: detected)")
    p.add_argument("--series-column", help="CSV column naming the series of each row (long format)")
    p.add_argument("--start", help="store reads: ISO start time")
    p.add_argument("--end", help="store reads: ISO end time")
    p.add_argument("--split-rows", help="WARM,END: measure on rows [WARM, END) of each series, earlier rows only warm "
                   "the state (default: the trainer's validation split, 70-80 %%)")
    p.add_argument("--false-alerts-per-day", type=float, default=DEFAULT_FALSE_ALERTS_PER_DAY,
                   help="false alerts per stream-day the thresholds are set for (default "
                   f"{DEFAULT_FALSE_ALERTS_PER_DAY}: one per 1,000 stream-hours)")
    p.add_argument("--dry-run", action="store_true", help="print the calibration, do not rewrite the manifest")


def _segments(args: argparse.Namespace, features: list[str], cadence_s: float) -> list[Segment]:
    univariate = features == ["value"]
    streams = tuple(s for s in (args.streams or "").split(",") if s)
    if not streams and not univariate and "://" not in args.source:
        streams = tuple(features)
    rows: tuple[int, ...] | None = None
    if args.split_rows:
        try:
            warm, end = (int(v) for v in args.split_rows.split(","))
        except ValueError:
            raise DataError(f"--split-rows {args.split_rows!r}: expected WARM,END row numbers, e.g. 4000,6000") from None
        rows = (warm, end)
    cfg = DataConfig(source=args.source, streams=streams, time_column=args.time_column, delimiter=args.delimiter,
                     series_column=args.series_column, cadence_s=cadence_s, start=args.start, end=args.end,
                     split_rows=rows, time_features=(), layout="univariate" if univariate else "series")
    ds = load(cfg)
    if list(ds.features) != features:
        raise DataError(f"{args.source}: found features {list(ds.features)}; the model reads {features} "
                        "(name them with --streams)")
    out = []
    for s in ds.series:
        sp = split_rows(len(s.values), cfg)
        out.append(Segment(s.name, s.ts_ns, s.values, sp.train_end, sp.val_end))
    return out


def run(args: argparse.Namespace) -> int:
    try:
        model = open_model(args.folder)
        m = model.manifest
        if not args.false_alerts_per_day > 0:
            raise DataError(f"--false-alerts-per-day {args.false_alerts_per_day}: expected a rate above 0")
        segments = _segments(args, list(m.features), m.cadence_s)
        result = calibrate(model, segments, args.false_alerts_per_day)
    except (DataError, ModelError, ValueError) as e:
        print(f"sensorcast calibrate: {e}", file=sys.stderr)
        return 2
    print(summary(result, m.cadence_s))
    if args.dry_run:
        print("dry run: manifest not changed")
        return 0
    write_block(args.folder, result.block)
    print(f"wrote the anomaly block to {args.folder / 'manifest.json'} (model.onnx unchanged, sha256 {m.sha256[:12]}…)")
    return 0
