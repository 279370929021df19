"""Stream state checkpoints: one ``.npz`` file per model table, written atomically.

Each file holds the table's row arrays (recurrent state, forecasts, scorer and decider
state) and a JSON ``meta`` entry naming the model (name, version, SHA-256) and each
stream (id, keys, row, resampler position). A file is written to a temporary name,
fsynced and renamed over the old one, so a crash mid-write leaves the previous
checkpoint intact. On restore, a file whose model no longer matches is ignored (those
streams re-warm from the store).

``meta["format"]`` is the layout version. Format 2 (escaped, injective stream ids) replaced
format 1 (no ``format`` key), whose ids joined raw names with ``/``, ``;`` and ``=``. A
format-1 entry is migrated to its format-2 id when its old id decodes to exactly the
names stored beside it; otherwise two streams may have shared that id (and its state), so
the entry is dropped with an error log line and that stream warms from the store. A file
of a newer format is ignored with an error log line.
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

from service.records import StreamKey

log = logging.getLogger(__name__)

SUFFIX = ".state.npz"
FORMAT = 2
Arrays = dict[str, npt.NDArray[np.generic]]


def write(directory: Path, name: str, meta: dict[str, Any], arrays: dict[str, npt.NDArray[np.generic]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}{SUFFIX}"
    tmp = directory / f".{name}{SUFFIX}.tmp"
    buf = io.BytesIO()
    meta = {**meta, "format": FORMAT}
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
        fmt = meta.get("format", 1) if isinstance(meta, dict) else None
        if fmt == 1:
            try:
                meta, arrays = migrate_v1(path, meta, arrays)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                log.error("checkpoint %s (format 1) cannot be migrated, ignored (its streams warm from the store): %r",
                          path, e)
                continue
        elif fmt != FORMAT:
            log.error("checkpoint %s has format %r, this version reads %d (and migrates 1): ignored, its streams "
                      "warm from the store", path, fmt, FORMAT)
            continue
        out.append((path, meta, arrays))
    return out


def _old_id_parts(text: str) -> tuple[str, list[tuple[str, str]]]:
    """How format 1 split an id: the part before the first ';', and k=v at each first '='."""
    base, *parts = text.split(";")
    tags = []
    for part in parts:
        k, _, v = part.partition("=")
        tags.append((k, v))
    return base, sorted(tags)


def migrate_v1(path: Path, meta: dict[str, Any], arrays: Arrays) -> tuple[dict[str, Any], Arrays]:
    """Format-1 meta and arrays -> format 2: ids re-encoded, ambiguous entries dropped.

    An entry is kept only when its old id reads back as exactly its stored names: the
    part before ';' is ``device/quantity`` split at its last '/' (or the device, for a
    multivariate stream, whose device must then hold no '/') and each tag splits at its
    first '='. Anything else is an id that another stream could have produced too.
    """
    keep: list[bool] = []
    streams: list[dict[str, Any]] = []
    for s in meta["streams"]:
        key = StreamKey(str(s["key"][0]), str(s["key"][1]), tuple((str(k), str(v)) for k, v in s["tags"]))
        old_id = str(s["id"])
        base, tags = _old_id_parts(old_id)
        device, _, quantity = base.rpartition("/")
        if s["quantity"] == "*" and base == key.device:  # multivariate: the id names the device only
            # With a '/' in the device, a device/quantity stream had the same id.
            ok, new_id = tags == list(key.tags) and "/" not in base, key.device_id
        else:
            ok, new_id = (device, quantity, tags) == (key.device, key.quantity, list(key.tags)), key.id
        if ok:
            streams.append({**s, "id": new_id})
            if new_id != old_id:
                log.info("checkpoint %s: stream id %r migrated to %r", path, old_id, new_id)
        else:
            log.error(
                "checkpoint %s: stream id %r does not decode to its own names (device %r, quantity %r, tags %r): "
                "another stream may have shared it, so its state is dropped and it warms from the store",
                path, old_id, key.device, key.quantity, list(key.tags),
            )
        keep.append(ok)
    if all(keep):
        return {**meta, "streams": streams, "format": FORMAT}, arrays
    mask = np.array(keep, bool)
    picked = {k: (v[mask] if v.ndim and len(v) == len(keep) else v) for k, v in arrays.items()}
    return {**meta, "streams": streams, "format": FORMAT}, picked


def remove_others(directory: Path, keep: set[str]) -> None:
    """Delete checkpoints of tables that no longer exist."""
    if not directory.is_dir():
        return
    for path in directory.glob(f"*{SUFFIX}"):
        if path.name[: -len(SUFFIX)] not in keep:
            path.unlink(missing_ok=True)
