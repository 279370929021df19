"""``sensorcast train``: history -> trained network -> ONNX artefact + report.

    sensorcast train --config train.toml [--source data.csv] [--cell lstm] [--epochs 20] ...

Without a source, the service's store (SENSORCAST_STORE__URL, as the compose trainer has it).

Flags override the config file; with no config file the flags alone describe the run.
Writes ``<models-dir>/<name>/<version>/{model.onnx, manifest.json}`` and, in
``<runs-dir>/<name>/<version>/`` (default ``reports/train``), ``checkpoint.pt`` (weights + config), ``report.json``,
``report.md`` and the plots.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.config import Config, from_dict, load
from training.data import DataError

_DATA = {"source": str, "time_column": str, "series_column": str, "cadence_s": float, "layout": str,
         "delimiter": str}
_MODEL = {"cell": str, "hidden": int, "layers": int, "dropout": float, "horizon": int, "lags": int,
          "scaling": str, "window": int, "segment": int}
_TRAIN = {"epochs": int, "batch": int, "chunk": int, "lr": float, "seed": int, "threads": int, "patience": int}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML or YAML file with [data], [model], [train] tables")
    p.add_argument("--name", help="model name (folder under --models-dir)")
    p.add_argument("--version", help="model version (default: UTC timestamp)")
    for group in (_DATA, _MODEL, _TRAIN):
        for key, typ in group.items():
            p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=typ, default=None)
    p.add_argument("--streams", help="comma-separated: store stream ids (device/quantity) or CSV columns")
    p.add_argument("--time-features", help="comma-separated names from service.runtime.timefeatures ('' for none)")
    p.add_argument("--split-rows", help="train_end,val_end,test_end rows (default: 70/10/20 split)")
    p.add_argument("--bidirectional", action="store_true", help="window models only")
    p.add_argument("--minutes", type=float, help="training time limit")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--runs-dir", type=Path, default=Path("reports/train"))
    p.add_argument("--no-progress", action="store_true")


def _config_file(path: Path) -> Config:
    try:
        return load(path)
    except FileNotFoundError:
        raise DataError(f"config {path}: no such file; expected a TOML or YAML file (--config)") from None
    except ValueError as e:  # unknown keys, contradictions, TOML/YAML syntax
        raise DataError(f"config {path}: {str(e).splitlines()[0]}") from None


def config_from_args(args: argparse.Namespace) -> Config:
    raw: dict[str, Any] = _config_file(args.config).to_dict() if args.config else Config().to_dict()
    for table, group in (("data", _DATA), ("model", _MODEL), ("train", _TRAIN)):
        for key in group:
            v = getattr(args, key, None)
            if v is not None:
                raw[table][key] = v
    if args.streams is not None:
        raw["data"]["streams"] = [s for s in args.streams.split(",") if s]
    if args.time_features is not None:
        raw["data"]["time_features"] = [s for s in args.time_features.split(",") if s]
    if args.split_rows:
        raw["data"]["split_rows"] = [int(x) for x in args.split_rows.split(",")]
    if args.bidirectional:
        raw["model"]["bidirectional"] = True
    if args.minutes is not None:
        raw["train"]["max_minutes"] = args.minutes
    if args.no_progress:
        raw["train"]["progress"] = False
    if args.name:
        raw["name"] = args.name
    if args.version:
        raw["version"] = args.version
    try:
        cfg = from_dict(raw)
    except ValueError as e:
        raise DataError(str(e)) from None
    if not cfg.data.source and os.environ.get("SENSORCAST_STORE__URL"):
        # The service's store (the compose trainer): history from where the service keeps it.
        cfg = replace(cfg, data=replace(cfg.data, source=os.environ["SENSORCAST_STORE__URL"]))
    if not cfg.data.source:
        raise DataError("found no data source; expected --source, [data] source in the config, "
                        "or SENSORCAST_STORE__URL")
    if not cfg.version:
        cfg = replace(cfg, version=datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    return cfg


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except DataError as e:
        # A user's error: one line that says what was found and what was expected, no traceback.
        print(f"sensorcast train: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from service.errors import ModelError
    from training.data import load as load_data
    from training.evaluate import report_markdown, write_report
    from training.export import export, save_checkpoint
    from training.trainer import assess, calibrate_threshold, check_trainable, train

    cfg = config_from_args(args)
    torch.set_num_threads(cfg.train.threads)
    ds = load_data(cfg.data)
    print(f"data: {len(ds.series)} series x {len(ds.features)} features, cadence {ds.cadence_s:g} s, "
          f"{sum(len(s.values) for s in ds.series)} rows from {ds.source}")
    check_trainable(ds, cfg)  # before the training time is spent
    t = train(cfg, ds)
    a = {"val": assess(t, "val"), "test": assess(t, "test")}
    threshold, calib = calibrate_threshold(t)
    run_dir = args.runs_dir / cfg.name / cfg.version
    # The checkpoint first: a failed export must not throw away the training time.
    save_checkpoint(t, run_dir / "checkpoint.pt")
    try:
        exported = export(t, args.models_dir, a, version=cfg.version, default_threshold=threshold,
                          extra_metrics={"calibration": calib} if calib else None)
    except ModelError as e:
        print(f"sensorcast train: export failed, nothing written under {args.models_dir / cfg.name}: {e}. "
              f"The trained weights are kept in {run_dir / 'checkpoint.pt'} (`sensorcast evaluate` reads it); "
              "retry with --scaling ema or report this with that file.", file=sys.stderr)
        return 2
    rep = write_report(t, a, run_dir)
    print(report_markdown(rep))
    print(f"model: {exported.folder} (ONNX parity {exported.parity:.1e})")
    print(f"report, plots, checkpoint: {run_dir}")
    return 0
