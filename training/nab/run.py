"""Run detectors over the NAB corpus and score them under every profile."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.nab.corpus import CostProfile, DataFile
from training.nab.detectors import Detector
from training.nab.scoring import ProfileResult, score_corpus


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


def write_results(run: DetectorRun, files: Sequence[DataFile], out_dir: Path) -> Path:
    """NAB layout: ``<out>/<detector>/<category>/<detector>_<file>.csv``."""
    base = out_dir / run.name
    for f in files:
        path = base / f.category / f"{run.name}_{f.stem}"
        path.parent.mkdir(parents=True, exist_ok=True)
        lab = label_column(f)
        scores = run.scores[f.name].tolist()  # Python floats: repr() gives plain round-trip digits
        values = f.values.tolist()
        ts = np.datetime_as_string(f.timestamps, unit="s")
        with path.open("w", encoding="utf-8") as out:
            out.write("timestamp,value,anomaly_score,label\n")
            for i in range(len(scores)):
                out.write(f"{ts[i].replace('T', ' ')},{values[i]!r},{scores[i]!r},{lab[i]}\n")
    return base
