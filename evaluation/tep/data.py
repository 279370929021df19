"""The Tennessee Eastman files (Braatz data): normal training run, 21 faulty test runs.

``d00.dat`` is stored transposed (52 rows x 500 samples); every other file is samples x
52, whitespace-separated, no header. In each ``dNN_te.dat`` the fault starts after sample
160 (samples 1..160 normal, 161..960 faulty); ``d00_te.dat`` is normal throughout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

N_FEATURES = 52
ONSET = 160  # samples 1..ONSET of a fault test file are normal
CADENCE_S = 180.0  # one sample every 3 minutes
FAULTS = tuple(range(1, 22))
UNDETECTABLE = (3, 9, 15)  # known to be nearly invisible in these measurements
DETECTABLE = tuple(f for f in FAULTS if f not in UNDETECTABLE)
# XMEAS(1..41) measurements, XMV(1..11) manipulated variables.
FEATURES = tuple([f"xmeas_{i:02d}" for i in range(1, 42)] + [f"xmv_{i:02d}" for i in range(1, 12)])


def default_dir() -> Path:
    """--data default: SENSORCAST_TEP_DIR, else ../shared/data/tep beside the repository."""
    env = os.environ.get("SENSORCAST_TEP_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tep"


def read_matrix(path: Path, transposed: bool = False) -> F64:
    """(samples, 52) from one .dat file; ``transposed``: the file holds 52 rows of samples."""
    m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if transposed:
        m = m.T
    if m.shape[1] != N_FEATURES:
        raise ValueError(f"{path}: found {m.shape[0]} x {m.shape[1]} values after "
                         f"{'transposing' if transposed else 'reading'}; expected {N_FEATURES} columns")
    if not np.isfinite(m).all():
        raise ValueError(f"{path}: non-finite values")
    return m


def load_train(root: Path) -> F64:
    """(500, 52): ``d00.dat``, normal operation, transposed into samples x features."""
    return read_matrix(root / "d00.dat", transposed=True)


def load_test(root: Path, fault: int) -> F64:
    """(960, 52): ``dNN_te.dat`` (fault 0 = ``d00_te.dat``, normal throughout)."""
    return read_matrix(root / f"d{fault:02d}_te.dat")


def check_dir(root: Path) -> str | None:
    """None when every file the benchmark reads is there, else what is missing."""
    names = ["d00.dat"] + [f"d{f:02d}_te.dat" for f in (0, *FAULTS)]
    missing = [n for n in names if not (root / n).is_file()]
    return None if not missing else f"no TEP data at {root} (missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''})"
