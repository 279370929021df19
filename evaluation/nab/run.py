"""Run detectors over the NAB corpus and score them under every profile."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.nab.corpus import CostProfile, DataFile
from evaluation.nab.detectors import Detector
from evaluation.nab.scoring import ProfileResult, score_corpus, sweep_weights, window_rows


@dataclass(frozen=True, slots=True)
class DetectorRun:
    name: str
    scores: dict[str, np.ndarray]
    seconds: float
    results: dict[str, ProfileResult]


def run_detector(name: str, detector: Detector, files: Sequence[DataFile],
                 profiles: Mapping[str, CostProfile]) -> DetectorRun:
    t0 = time.perf_counter()
    scores = {f.name: np.clip(np.asarray(detector(f.values), dtype=np.float64), 0.0, 1.0) for f in files}
    seconds = time.perf_counter() - t0
    return score_run(name, scores, seconds, files, profiles)


def score_run(name: str, scores: dict[str, np.ndarray], seconds: float, files: Sequence[DataFile],
              profiles: Mapping[str, CostProfile]) -> DetectorRun:
    results = {p: score_corpus(files, scores, prof) for p, prof in profiles.items()}
    return DetectorRun(name, scores, seconds, results)


def label_column(f: DataFile) -> np.ndarray:
    """1 inside a labelled window, 0 outside (NAB's ``label`` column of result files)."""
    lab = np.zeros(len(f.values), dtype=np.int64)
    for start, end in f.windows:
        lab[(f.timestamps >= start) & (f.timestamps <= end)] = 1
    return lab


def write_results(run: DetectorRun, files: Sequence[DataFile], out_dir: Path,
                  profiles: Mapping[str, CostProfile] | None = None) -> Path:
    """NAB layout: ``<out>/<detector>/<category>/<detector>_<file>.csv``.

    Columns ``timestamp,value,anomaly_score,label``, then, as NAB's scored result files
    have, ``S(t)_<profile>``: what a detection at each row would earn or cost.
    """
    base = out_dir / run.name
    profiles = profiles or {}
    for f in files:
        path = base / f.category / f"{run.name}_{f.stem}"
        path.parent.mkdir(parents=True, exist_ok=True)
        lab = label_column(f)
        scores = run.scores[f.name].tolist()  # Python floats: repr() gives plain round-trip digits
        values = f.values.tolist()
        rows = window_rows(f.timestamps, f.windows)
        sweeps = [sweep_weights(len(scores), rows, prof)[0].tolist() for prof in profiles.values()]
        ts = np.datetime_as_string(f.timestamps, unit="s")
        with path.open("w", encoding="utf-8") as out:
            out.write(",".join(["timestamp", "value", "anomaly_score", "label",
                                *(f"S(t)_{p}" for p in profiles)]) + "\n")
            for i in range(len(scores)):
                extra = "".join(f",{w[i]!r}" for w in sweeps)
                out.write(f"{ts[i].replace('T', ' ')},{values[i]!r},{scores[i]!r},{lab[i]}{extra}\n")
    return base
