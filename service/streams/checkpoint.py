"""Stream state checkpoints: one ``.npz`` file per lane (model version), written atomically.

Each file holds the lane's row arrays (``Lane.export_rows``: recurrent state, forecasts,
scorer and decider state, resample position; array names as declared, see
``service.arrays``) and a JSON ``meta`` entry naming the model (name, version, SHA-256) and
each stream (id, device, quantity, tags, key), in row order. A file is written to a
temporary name, fsynced and renamed over the old one, so a crash mid-write leaves the
previous checkpoint intact. On restore, a file whose model no longer matches is ignored
(those streams re-warm from the store). ``take`` (under the engine's lock), ``save`` and
``restore`` are the engine's side.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from service.errors import ModelError
from service.records import StreamKey
from service.runtime.registry import LoadedModel, ModelRegistry
from service.streams.lane import Lane, Stream
from service.streams.slots import StreamSlots

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


# -- the engine's side: taking rows out under its lock, writing them after, restoring ----


@dataclass(frozen=True, slots=True)
class Taken:
    """One lane's rows in use, copied under the engine's lock."""

    lane: Lane
    name: str
    streams: list[Stream]
    arrays: Arrays


def take(lanes: Mapping[str, Lane]) -> list[Taken]:
    """Under the engine's lock: copies of every lane's occupied rows (fast)."""
    out = []
    for name, lane in lanes.items():
        rows = np.flatnonzero(lane.occupied)
        owners = lane.owners
        streams = [st for st in (owners[r] for r in rows.tolist()) if st is not None]
        out.append(Taken(lane, name, streams, lane.export_rows(rows)))
    return out


def save(directory: Path, taken: list[Taken]) -> int:
    """Off the lock: one file per lane (stream identities never change, so the JSON is
    built here), other lanes' files removed; returns the streams saved."""
    for t in taken:
        m = t.lane.model
        meta = {
            "model": m.name, "version": m.version, "sha256": m.manifest.sha256, "saved_ns": time.time_ns(),
            "streams": [
                {"id": st.id, "device": st.device, "quantity": st.quantity,
                 "tags": [list(tag) for tag in st.tags], "key": [st.keys[0].device, st.keys[0].quantity]}
                for st in t.streams
            ],
        }
        write(directory, t.name, meta, t.arrays)
    remove_others(directory, {t.name for t in taken})
    return sum(len(t.streams) for t in taken)


def restore(directory: Path, registry: ModelRegistry, slots: StreamSlots, restored: Callable[[Stream], None]) -> int:
    """Bind the streams of every checkpoint whose model still matches and load their rows;
    ``restored`` is told of each. Returns the streams restored."""
    count = 0
    for path, meta, arrays in read_all(directory):
        try:
            loaded = registry.get(meta["model"], meta["version"])
        except ModelError as e:
            log.warning("checkpoint %s skipped: %s", path, e)
            continue
        if loaded.manifest.sha256 != meta["sha256"]:
            log.warning("checkpoint %s skipped: model %s changed since", path, loaded.key)
            continue
        try:
            count += _restore_lane(slots, loaded, meta, arrays, restored)
        except (KeyError, ValueError, TypeError, IndexError) as e:  # a damaged file: warm from the store
            log.error("checkpoint %s unusable, those streams warm from the store: %s", path, e)
    log.info("restored %d streams from checkpoints", count)
    return count


def _restore_lane(
    slots: StreamSlots, loaded: LoadedModel, meta: dict[str, Any], arrays: Arrays, restored: Callable[[Stream], None]
) -> int:
    streams: list[Stream] = []
    src: list[int] = []
    for i, s in enumerate(meta["streams"]):
        key = StreamKey(s["key"][0], s["key"][1], tuple((k, v) for k, v in s["tags"]))
        hit = slots.bind(key)
        if hit is None or hit.stream.lane.model is not loaded or hit.stream.id != s["id"]:
            continue  # bindings changed: this stream now warms from the store
        streams.append(hit.stream)
        src.append(i)
    if not streams:
        return 0
    lane = streams[0].lane
    rows = np.array([st.row for st in streams], np.intp)
    picked = np.array(src, np.intp)
    try:
        lane.import_rows(rows, {k: v[picked] for k, v in arrays.items()})  # one gather per array
    except Exception:
        lane.wipe(rows)  # no half-restored streams: they warm from the store instead
        slots.reconfigure(streams)  # and keep their own alert rules
        raise
    for st in streams:
        restored(st)
    return len(streams)
