"""Stream state checkpoints: one ``.npz`` file per model table, written atomically.

Each file holds the table's row arrays (recurrent state, forecasts, scorer and decider
state) and a JSON ``meta`` entry naming the model (name, version, SHA-256) and each
stream (id, keys, row, resampler position). A file is written to a temporary name,
fsynced and renamed over the old one, so a crash mid-write leaves the previous
checkpoint intact. On restore, a file whose model no longer matches is ignored (those
streams re-warm from the store).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

log = logging.getLogger(__name__)

SUFFIX = ".state.npz"


def write(directory: Path, name: str, meta: dict[str, Any], arrays: dict[str, npt.NDArray[np.generic]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}{SUFFIX}"
    tmp = directory / f".{name}{SUFFIX}.tmp"
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8), **arrays)  # type: ignore[arg-type]
    with tmp.open("wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_all(directory: Path) -> list[tuple[Path, dict[str, Any], dict[str, npt.NDArray[np.generic]]]]:
    """Every readable checkpoint in ``directory``; unreadable ones are logged and skipped."""
    out: list[tuple[Path, dict[str, Any], dict[str, npt.NDArray[np.generic]]]] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = orjson.loads(arrays.pop("meta").tobytes())
        except Exception as e:  # a damaged file must not stop the service from starting
            log.error("checkpoint %s unreadable, ignored: %s", path, e)
            continue
        out.append((path, meta, arrays))
    return out


def remove_others(directory: Path, keep: set[str]) -> None:
    """Delete checkpoints of tables that no longer exist."""
    if not directory.is_dir():
        return
    for path in directory.glob(f"*{SUFFIX}"):
        if path.name[: -len(SUFFIX)] not in keep:
            path.unlink(missing_ok=True)
