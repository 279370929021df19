"""A recurrent step model trained by the product (``sensorcast train``) on NAB's unscored rows.

NAB's protocol leaves the first ``min(floor(0.15 N), 750)`` rows of each file unscored (the
probationary period). ``train_model`` writes exactly those rows of every file into one
long-format CSV (``time,series,value``; each file is one series on a synthetic 300 s clock,
as the engine replays it with ``as_steps``) and runs ``sensorcast train --layout univariate
--series-column series --scaling ema`` on it in a subprocess: one global GRU that keeps a
per-stream running mean and variance in its state, trained on no scored row. (``evaluation``
imports neither torch nor ``training``: the import contract. The subprocess is the user's
command, so the manifest, with its anomaly calibration, is what a deployment would get.)

The artefact is cached under ``<work>/models/nab-gru/<key>``: the key hashes the training
rows, the settings and the trainer's source, so a rerun reuses it and a changed trainer or
corpus retrains.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from evaluation.nab.corpus import DataFile, probation_length

MODEL_NAME = "nab-gru"
T0_S = 1_600_000_200  # synthetic clock (as evaluation.nab.engine_run)
CADENCE_S = 300  # nominal: NAB rows are fed as steps


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """``sensorcast train`` settings (small: a few CPU minutes on one thread)."""

    cell: str = "gru"
    hidden: int = 32
    horizon: int = 1  # 1 scored 70.7 NAB standard, 4 scored 70.1 (the surprise score reads one-step residuals)
    lags: int = 0  # last values kept in the state for a linear skip head (288: a day of 5-minute rows)
    epochs: int = 15  # fixed, so the model does not depend on the machine's speed (the time limit is a guard)
    chunk: int = 64
    minutes: float = 10.0
    seed: int = 0
    split: tuple[float, float] = (0.75, 0.2)  # train, validation fractions of each probation (the trainer keeps a test tail)


@dataclass(frozen=True, slots=True)
class Trained:
    folder: Path  # <models>/<name>/<version>
    cached: bool
    log: str  # the trainer's output (empty when cached)


def training_rows(files: Sequence[DataFile]) -> list[tuple[str, np.ndarray]]:
    """(series name, probationary values) per file: the rows NAB never scores."""
    return [(f"nab{i}", np.asarray(f.values[: probation_length(len(f.values))], dtype=np.float64))
            for i, f in enumerate(files)]


def write_csv(rows: Sequence[tuple[str, np.ndarray]], path: Path) -> None:
    """Long format ``time,series,value``; every series starts at the same synthetic time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["time", "series", "value"])
        for name, values in rows:
            for i, v in enumerate(values.tolist()):
                when = datetime.fromtimestamp(T0_S + i * CADENCE_S, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                w.writerow([when, name, repr(float(v))])


@functools.cache
def _trainer_digest() -> str:
    """Hash of the trainer's and the manifest's source: a changed trainer retrains."""
    import service.runtime.manifest

    repo = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for p in [*sorted((repo / "training").glob("*.py")), Path(service.runtime.manifest.__file__)]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def cache_key(rows: Sequence[tuple[str, np.ndarray]], cfg: TrainConfig) -> str:
    h = hashlib.sha256()
    for name, values in rows:
        h.update(name.encode())
        h.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(_trainer_digest().encode())
    return h.hexdigest()[:16]


def train_argv(source: Path, config: Path, models_dir: Path, runs_dir: Path, version: str,
               cfg: TrainConfig) -> list[str]:
    return [sys.executable, "-m", "service.cli", "train", "--config", str(config), "--source", str(source),
            "--series-column", "series", "--layout", "univariate", "--scaling", "ema",
            "--name", MODEL_NAME, "--version", version, "--cell", cfg.cell, "--hidden", str(cfg.hidden),
            "--horizon", str(cfg.horizon), "--lags", str(cfg.lags), "--epochs", str(cfg.epochs), "--chunk", str(cfg.chunk),
            "--minutes", str(cfg.minutes), "--seed", str(cfg.seed), "--threads", "1", "--time-features", "",
            "--cadence-s", str(CADENCE_S), "--models-dir", str(models_dir), "--runs-dir", str(runs_dir),
            "--no-progress"]


def train_model(files: Sequence[DataFile], work: Path, cfg: TrainConfig, retrain: bool = False) -> Trained:
    """Train (or reuse) the global GRU on the probationary rows of ``files``."""
    rows = training_rows(files)
    version = cache_key(rows, cfg)
    models_dir = work / "models"
    folder = models_dir / MODEL_NAME / version
    if not retrain and (folder / "manifest.json").is_file():
        return Trained(folder, True, "")
    source = work / f"train-{version}.csv"
    write_csv(rows, source)
    config = work / f"train-{version}.toml"  # the per-series split fractions have no flag
    config.write_text(f"[data]\nsplit = [{cfg.split[0]}, {cfg.split[1]}]\n", encoding="utf-8")
    done = subprocess.run(train_argv(source, config, models_dir, work / "runs", version, cfg),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sensorcast train failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:] or done.stdout[-2000:]}")
    return Trained(folder, False, done.stdout)
