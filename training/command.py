"""``sensorcast train``: history -> trained network -> ONNX artefact + report.

    sensorcast train --config train.toml [--source data.csv] [--cell lstm] [--epochs 20] ...
    sensorcast train --from-store --streams machine2/temperature --name machine2

Without a source, the service's store (SENSORCAST_STORE__URL, as the compose trainer has it);
``--from-store`` says so explicitly and falls back to the service's default store URL.

Flags override the config file; with no config file the flags alone describe the run.
Writes ``<models-dir>/<name>/<version>/{model.onnx, manifest.json}`` and, in
``<runs-dir>/<name>/<version>/`` (default ``reports/train``), ``checkpoint.pt`` (weights + config), ``report.json``,
``report.md`` and the plots.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.tabular import LABEL_COLUMNS, TIME_COLUMNS
from training.config import Config, from_dict, load
from training.data import DataError


def _yes_no(text: str) -> bool:
    word = text.strip().lower()
    if word not in ("yes", "no", "true", "false", "1", "0"):
        raise ValueError(f"{text!r}: expected yes or no")
    return word in ("yes", "true", "1")


_yes_no.__name__ = "yes/no"  # argparse names the type in its error message

# Flags that set one config key each: key -> (type, help). The config file's key of the
# same name is overridden by the flag.
_DATA: dict[str, tuple[type, str]] = {
    "source": (str, "CSV file or store URL (influxdb://..., sqlite:///...); default: SENSORCAST_STORE__URL"),
    "time_column": (str, f"CSV time column (default: the one column named {', '.join(TIME_COLUMNS)}, any case; "
                         "the same default as sensorcast backtest)"),
    "series_column": (str, "CSV column naming the series of each row (long format: one file, many entities)"),
    "cadence_s": (float, "seconds per step the history is resampled to (default: the median timestamp step)"),
    "layout": (str, "'series': each series is one multivariate asset; 'univariate': every column or stream is "
                    "its own one-feature series of one global model (default: series)"),
    "delimiter": (str, "CSV delimiter, one character (default: detected from the header: ',', ';', tab or '|'; "
                       "in files not separated by commas, decimal commas are read)"),
}
_MODEL: dict[str, tuple[type, str]] = {
    "cell": (str, "network: rnn, lstm, gru, peephole (peephole LSTM), jordan (GRU fed its own last forecast), seq2seq-gru, seq2seq-lstm, seq2seq-attn-gru, seq2seq-attn-lstm, grid-rowlstm (step models; grid-rowlstm needs --grid) or segrnn (window model)"),
    "hidden": (int, "hidden units per layer"),
    "layers": (int, "recurrent layers"),
    "dropout": (float, "dropout between layers, 0..1"),
    "horizon": (int, "forecast steps ahead"),
    "lags": (int, "step models: last values kept in the state for a linear skip head (0: none)"),
    "scaling": (str, "'fixed': train mean/std in the graph; 'ema': per-stream running statistics in the state"),
    "window": (int, "window models: input length in steps"),
    "segment": (int, "segrnn: segment length in steps (window must be a multiple)"),
    "attn_window": (int, "seq2seq-attn-gru / seq2seq-attn-lstm: past encoder steps the decoder attends over, kept "
                         "in the state (default 48)"),
}
_TRAIN: dict[str, tuple[Callable[[str], Any], str]] = {
    "epochs": (int, "maximum epochs (early stopping may end sooner)"),
    "batch": (int, "batch size"),
    "chunk": (int, "truncated BPTT length in steps"),
    "strand": (int, "step models: contiguous steps each batch row walks per epoch, state carried between chunks"),
    "carry_state": (_yes_no, "step models, yes/no: each strand starts from the state the strand before it ended "
                             "with in the previous epoch (state never reset, as in the service; default no)"),
    "level_noise": (float, "step models: each strand is shifted by a random level per channel with this std, in "
                           "train stds, so the network forecasts changes without leaning on the level (0: off; "
                           "1.0 took ETTh1's lag-free GRU from 0.68 to 0.45, docs/training.md)"),
    "lr": (float, "peak learning rate (AdamW)"),
    "seed": (int, "random seed: the same seed and data give the same model"),
    "threads": (int, "torch threads"),
    "patience": (int, "epochs without a better validation error before stopping"),
    "false_alerts_per_day": (float, "anomaly thresholds are calibrated on validation for this many false alerts per "
                                    "stream-day (default 0.024: one per 1,000 stream-hours)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML or YAML file with [data], [model], [train] tables; "
                   "flags override its keys")
    p.add_argument("--name", help="model name (folder under --models-dir)")
    p.add_argument("--version", help="model version (default: UTC timestamp)")
    for group in (_DATA, _MODEL, _TRAIN):
        for key, (typ, text) in group.items():
            p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=typ, default=None, help=text)
    p.add_argument("--from-store", action="store_true", help="read the history from the service's store: "
                   "SENSORCAST_STORE__URL, else the default sqlite:///./data/sensorcast.db (where sensorcast import "
                   "and serve write); pick streams with --streams")
    p.add_argument("--streams", help="comma-separated: store stream ids (device/quantity) or CSV columns "
                   "(default: all, except columns named like a label: " + ", ".join(LABEL_COLUMNS) + ")")
    p.add_argument("--serve", metavar="GLOB[,GLOB]", help="comma-separated globs on the stream ids the model "
                   "serves without a binding ('device/quantity', or the device for a multivariate model), e.g. "
                   "'machine*/value' (default: the store stream ids trained on; none for a CSV)")
    p.add_argument("--time-features", help="comma-separated names from service.runtime.timefeatures ('' for none)")
    p.add_argument("--split-rows", help="train_end,val_end[,test_end] row numbers; without test_end (or with "
                   "test_end = val_end) there is no test part and only validation is reported "
                   "(default: 70%% train, 10%% validation, the rest test)")
    p.add_argument("--grid", metavar="HxW", help="sensor grid shape, e.g. 8x8: the H*W features are its pixels in "
                   "row-major order (r0c0, r0c1, ...); needed by --cell grid-rowlstm, and declared in the manifest "
                   "for any step model (the dashboard then draws a heat map)")
    p.add_argument("--bidirectional", action="store_true", help="window models only: read the window both ways")
    p.add_argument("--minutes", type=float, help="training time limit in minutes (default 15)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where the ONNX artefact is written "
                   "(default: models)")
    p.add_argument("--runs-dir", type=Path, default=Path("reports/train"), help="where the checkpoint, report "
                   "and plots are written (default: reports/train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _split_rows(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        rows = [int(p) for p in parts]
    except ValueError:
        rows = []
    if len(rows) not in (2, 3) or not 0 < rows[0] < rows[1] <= rows[-1]:
        raise DataError(f"--split-rows {text!r}: expected train_end,val_end[,test_end] row numbers with "
                        "0 < train_end < val_end <= test_end, e.g. 400,500 (no test part) or 400,500,600")
    return rows


def _grid(text: str) -> list[int]:
    parts = text.lower().split("x")
    try:
        shape = [int(p) for p in parts]
    except ValueError:
        shape = []
    if len(shape) != 2 or min(shape) < 1:
        raise DataError(f"--grid {text!r}: expected HxW with two sizes >= 1, e.g. 8x8")
    return shape


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
    if getattr(args, "serve", None) is not None:
        raw["data"]["serve"] = [s.strip() for s in args.serve.split(",") if s.strip()]
    if args.time_features is not None:
        raw["data"]["time_features"] = [s for s in args.time_features.split(",") if s]
    if args.split_rows:
        raw["data"]["split_rows"] = _split_rows(args.split_rows)
    if getattr(args, "grid", None):
        raw["model"]["grid"] = _grid(args.grid)
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
    if args.from_store:
        if cfg.data.source:
            raise DataError(f"--from-store and a source ({cfg.data.source!r}) given; expected one of them")
        from service.config import Settings

        cfg = replace(cfg, data=replace(cfg.data, source=Settings().store.url))
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
    cfg = config_from_args(args)  # a wrong flag is refused before torch is imported
    import torch

    from service.errors import ModelError
    from training.data import load as load_data
    from training.evaluate import naive_warning, report_markdown, write_report
    from training.export import export, save_checkpoint
    from training.trainer import assess, calibrate_threshold, check_trainable, train

    torch.set_num_threads(cfg.train.threads)
    ds = load_data(cfg.data)
    if cfg.model.grid:  # pixels named r{row}c{col} into row-major order, whatever the source's order
        from training.grid import row_major

        ds = row_major(ds, cfg.model.grid)
    print(f"data: {len(ds.series)} series x {len(ds.features)} features, cadence {ds.cadence_s:g} s, "
          f"{sum(len(s.values) for s in ds.series)} rows from {ds.source}")
    for note in ds.notes:
        print(f"data: {note}")
    check_trainable(ds, cfg)  # before the training time is spent
    t = train(cfg, ds)
    a = {"val": assess(t, "val")}
    if any(d.split.has_test for d in t.data):
        a["test"] = assess(t, "test")
    else:
        print("data: --split-rows leaves no test part; reporting validation metrics only")
    threshold, calib = calibrate_threshold(t)
    run_dir = args.runs_dir / cfg.name / cfg.version
    # The checkpoint first: a failed export must not throw away the training time.
    save_checkpoint(t, run_dir / "checkpoint.pt")
    try:
        exported = export(t, args.models_dir, a, version=cfg.version, default_threshold=threshold,
                          extra_metrics={"calibration": calib} if calib else None,
                          false_alerts_per_day=cfg.train.false_alerts_per_day)
    except ModelError as e:
        print(f"sensorcast train: export failed, nothing written under {args.models_dir / cfg.name}: {e}. "
              f"The trained weights are kept in {run_dir / 'checkpoint.pt'} (`sensorcast evaluate` reads it); "
              "retry with --scaling ema or report this with that file.", file=sys.stderr)
        return 2
    rep = write_report(t, a, run_dir)
    print(report_markdown(rep))
    if exported.calibration:
        print(exported.calibration)
    print(f"model: {exported.folder} (ONNX parity {exported.parity:.1e})")
    served = exported.manifest.streams
    if served:
        print(f"serves: {', '.join(served[:10])}{' ...' if len(served) > 10 else ''} (Manifest.streams)")
    else:
        print("serves: no streams declared (a CSV training); give --serve GLOB (e.g. 'machine*/value') or "
              "bind it with SENSORCAST_MODELS__BINDINGS; else the feature-name rule routes to it (docs/engine.md)")
    if (warning := naive_warning(a)) is not None:
        print(f"sensorcast train: {warning}", file=sys.stderr)
    print(f"report, plots, checkpoint: {run_dir}")
    return 0
