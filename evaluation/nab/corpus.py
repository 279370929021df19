"""The NAB corpus on disk: data files, labelled anomaly windows, cost profiles.

Layout as upstream numenta/NAB: ``data/<category>/<file>.csv`` (``timestamp,value``),
``labels/combined_windows.json`` and ``profiles.json``. Timestamps are parsed to
``datetime64[s]`` so window limits and rows compare exactly.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROBATION_FRACTION = 0.15  # NAB: the first 15% of each file (at most 750 rows) is not scored
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@dataclass(frozen=True, slots=True)
class CostProfile:
    """One NAB application profile: weights of true positives, false positives, misses."""

    name: str
    tp: float
    fp: float
    fn: float


@dataclass(frozen=True, slots=True)
class DataFile:
    """One NAB series with its labelled windows (inclusive ``(start, end)`` timestamps)."""

    name: str  # "<category>/<file>.csv", the key used by the label files
    timestamps: np.ndarray  # (N,) datetime64[s]
    values: np.ndarray  # (N,) float64
    windows: tuple[tuple[np.datetime64, np.datetime64], ...]

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def stem(self) -> str:
        return self.name.split("/", 1)[1]


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are never scored: min(floor(0.15 N), 750)."""
    return int(min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_FRACTION * 5000))


def _ts(text: str) -> np.datetime64:
    # NAB writes "2014-04-10 07:15:00" in data and "2014-04-10 07:15:00.000000" in labels.
    return np.datetime64(text.strip().replace(" ", "T").split(".")[0], "s")


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``timestamp,value`` CSV -> (datetime64[s] array, float64 array)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        if [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise ValueError(f"{path}: header {header!r}, expected ['timestamp', 'value']")
        rows = [r for r in reader if r]
    ts = np.array([_ts(r[0]) for r in rows], dtype="datetime64[s]")
    values = np.array([float(r[1]) for r in rows], dtype=np.float64)
    return ts, values


def load_profiles(root: Path) -> dict[str, CostProfile]:
    raw = json.loads((root / "profiles.json").read_text(encoding="utf-8"))
    out = {}
    for name, body in raw.items():
        m = body["CostMatrix"]
        out[name] = CostProfile(name, float(m["tpWeight"]), float(m["fpWeight"]), float(m["fnWeight"]))
    return out


def load_corpus(root: Path, only: list[str] | None = None) -> list[DataFile]:
    """Every file named in ``combined_windows.json`` (or just ``only``), in label order."""
    labels = json.loads((root / "labels" / "combined_windows.json").read_text(encoding="utf-8"))
    files = []
    for name, wins in labels.items():
        if only is not None and name not in only and Path(name).stem not in only:
            continue
        ts, values = read_series(root / "data" / name)
        windows = tuple((_ts(a), _ts(b)) for a, b in wins)
        files.append(DataFile(name, ts, values, windows))
    if only is not None and len(files) != len(set(only)):
        found = {f.name for f in files} | {Path(f.name).stem for f in files}
        missing = [o for o in only if o not in found]
        raise ValueError(f"unknown NAB files: {missing}")
    return files
