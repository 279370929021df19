"""The product on TEP: a recurrent step model trained on normal operation, replayed live.

``train_model`` writes ``d00.dat`` as a CSV (52 columns, synthetic timestamps at the
180 s cadence) into the work folder and runs ``sensorcast train`` on it in a subprocess
(the user's command, so whatever the trainer writes into the manifest, such as its
anomaly calibration, is what the bench measures; and ``evaluation`` imports neither
torch nor ``training``, as the import contract requires). The artefact is cached under
``<work>/models/tep/<key>``: the key hashes the data, the training settings and the
trainer's source, so a rerun reuses it and a changed trainer retrains.

``run_file`` replays one test file through ``service.backtest.backtest_frame`` (one
stream of 52 features, a fresh engine per file) and returns, per sample, the engine's
anomaly score (NaN while warming) and whether the stream's alert is firing.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.backtest import backtest_frame
from service.config import AnomalySettings, Settings
from service.runtime.registry import ModelRegistry

F64 = npt.NDArray[np.float64]
BoolArr = npt.NDArray[np.bool_]

MODEL_NAME = "tep"
T0_S = 1_600_000_200  # synthetic clock; the files carry no timestamps


@dataclass(frozen=True, slots=True)
class ProductConfig:
    """Training settings (small: a couple of CPU minutes at most)."""

    cell: str = "gru"
    hidden: int = 48
    horizon: int = 4
    epochs: int = 100  # early stopping (patience 5) ends it sooner
    chunk: int = 48
    minutes: float = 2.0
    seed: int = 0
    # Ends of train and validation as fractions of the rows; validation runs to the end, no
    # test part (d00: train 250, validation 250 rows). The trainer calibrates the anomaly
    # evidence on validation and leaves it uncalibrated below 200 steps (training/calibrate.py
    # MIN_STEPS); the default 10 % of d00 would be 50.
    split: tuple[float, float] = (0.5, 1.0)

    def split_rows(self, n: int) -> tuple[int, int, int]:
        return round(n * self.split[0]), round(n * self.split[1]), n


@dataclass(frozen=True, slots=True)
class Trained:
    models_dir: Path
    version: str
    cached: bool
    log: str  # the trainer's output (empty when cached)


def feature_columns(n: int) -> list[str]:
    from evaluation.tep.data import FEATURES

    return list(FEATURES) if n == len(FEATURES) else [f"x{i:02d}" for i in range(n)]


def write_csv(x: F64, path: Path) -> None:
    """``x`` (N, F) as ``date,<features>`` at the TEP cadence from a synthetic start."""
    from datetime import UTC, datetime

    from evaluation.tep.data import CADENCE_S

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["date", *feature_columns(x.shape[1])])
        for i, row in enumerate(x):
            when = datetime.fromtimestamp(T0_S + i * CADENCE_S, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            w.writerow([when, *(repr(float(v)) for v in row)])


@functools.cache
def _trainer_digest() -> str:
    """Hash of the trainer's and the manifest's source: a changed trainer invalidates the cache
    (read once per process, so one run uses one key)."""
    import service.runtime.manifest

    repo = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    files = [*sorted((repo / "training").glob("*.py")), Path(service.runtime.manifest.__file__)]
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def cache_key(x: F64, cfg: ProductConfig) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(_trainer_digest().encode())
    return h.hexdigest()[:16]


def train_model(x: F64, work: Path, cfg: ProductConfig, retrain: bool = False) -> Trained:
    """Train (or reuse) the step model on ``x`` (N, F) of normal operation."""
    version = cache_key(x, cfg)
    models_dir = work / "models"
    if not retrain and (models_dir / MODEL_NAME / version / "manifest.json").is_file():
        return Trained(models_dir, version, True, "")
    source = work / f"train-{version}.csv"
    write_csv(x, source)
    argv = [sys.executable, "-m", "service.cli", "train", "--source", str(source), "--name", MODEL_NAME,
            "--version", version, "--cell", cfg.cell, "--hidden", str(cfg.hidden), "--horizon", str(cfg.horizon),
            "--epochs", str(cfg.epochs), "--chunk", str(cfg.chunk), "--minutes", str(cfg.minutes),
            "--seed", str(cfg.seed), "--threads", "1", "--time-features", "",
            "--split-rows", ",".join(map(str, cfg.split_rows(len(x)))),
            "--models-dir", str(models_dir), "--runs-dir", str(work / "runs"), "--no-progress"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sensorcast train failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:] or done.stdout[-2000:]}")
    return Trained(models_dir, version, False, done.stdout)


def bench_settings() -> tuple[Settings, dict[str, object]]:
    """The engine settings the product runs with: the defaults, plus, where the setting
    exists, ``anomaly.accept_after_steps=0`` (a fault is never accepted as the new normal).
    Returns the settings and the overrides applied."""
    base = Settings(_env_file=None)
    updates: dict[str, object] = {}
    if "accept_after_steps" in AnomalySettings.model_fields:
        updates["accept_after_steps"] = 0
    anomaly = AnomalySettings.model_validate({**base.anomaly.model_dump(), **updates})
    return base.model_copy(update={"anomaly": anomaly}), updates


def _rank(score: float, evidence: float | None) -> float:
    return score if evidence is None else float(evidence)


@dataclass(frozen=True, slots=True)
class Replay:
    score: F64  # (N,) engine score (or its log evidence, see run_file), NaN where unscored (warming)
    firing: BoolArr  # (N,) the stream's alert is firing after this sample
    fired: dict[str, int]  # firing events per "check/kind" (e.g. "anomaly/multivariate")
    statistic: str  # what ``score`` holds: "score" or "evidence" (-log10 tail probability)


def run_file(registry: ModelRegistry, version: str, x: F64, settings: Settings) -> Replay:
    """Replay ``x`` (N, F) as one multivariate stream through the live engine."""
    from evaluation.tep.data import CADENCE_S

    cadence_ns = round(CADENCE_S * 1e9)
    stamps = [T0_S * 1_000_000_000 + i * cadence_ns for i in range(len(x))]
    rows = backtest_frame(registry, MODEL_NAME, stamps, x.tolist(), feature_columns(x.shape[1]),
                          settings=settings, version=version, as_steps=True)
    if len(rows) != len(x):
        raise RuntimeError(f"backtest returned {len(rows)} rows for {len(x)} samples")
    # The score is 1 - 10^-E and reads 1.0 in float64 once E passes ~16, so ties at the top
    # would hide the ranking that equal-FAR thresholds and AUC need: rank by the log
    # evidence E itself when the backtest reports it (field ``evidence``), else by the score.
    score = np.array([np.nan if r.score is None else _rank(r.score, getattr(r, "evidence", None)) for r in rows],
                     dtype=np.float64)
    firing = np.array([r.status == "firing" for r in rows], dtype=bool)
    fired: Counter[str] = Counter()
    for r in rows:  # several events on one row are joined by ";", checks and kinds alike
        events = r.event.split(";") if r.event else []
        checks, kinds = (getattr(r, "check", "") or "").split(";"), (getattr(r, "kind", "") or "").split(";")
        for i, e in enumerate(events):
            if e == "firing":
                fired[f"{checks[i] if i < len(checks) else ''}/{kinds[i] if i < len(kinds) else ''}"] += 1
    statistic = "evidence" if any(getattr(r, "evidence", None) is not None for r in rows) else "score"
    return Replay(score, firing, dict(fired), statistic)
