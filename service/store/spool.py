"""The durable spool: batches the store could not take, on disk until it can.

Each batch is one file named ``<seq:016d>-<count>.spool`` holding the JSON of
``[[device, quantity, [[k, v], ...], ts_ns, value], ...]``. A file is written to a
temporary name, fsync'd, renamed and the directory fsync'd, so after ``append`` returns
the batch survives a crash or power loss; a crash mid-write leaves only a ``.tmp`` file,
which is removed on open. Batches are replayed oldest first (by sequence number). Only
a corrupt file is set aside (``.bad``); read errors from outside it are retried.

When the spool is at ``max_bytes`` or the disk is full, ``append`` raises
``SpoolFullError``: the caller must stop acknowledging, so the broker keeps the readings.

One process owns a spool directory at a time (an exclusive ``flock`` on ``.lock``): two
writers would hand out the same sequence numbers and overwrite each other's batches.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from service.errors import SpoolFullError, SpoolReadError, StoreError
from service.records import Reading, StreamKey
from service.store.durable import fsync_dir, write_synced

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    path: Path
    seq: int
    count: int
    size: int


def encode_batch(readings: Sequence[Reading]) -> bytes:
    return orjson.dumps(
        [[r.stream.device, r.stream.quantity, r.stream.tags, r.ts_ns, r.value] for r in readings]
    )


def decode_batch(data: bytes) -> list[Reading]:
    """The readings of a spool file; ValueError/TypeError when it is not one (corrupt)."""
    out = []
    for device, quantity, tags, ts, value in orjson.loads(data):
        # Types checked here: a well-formed JSON file of the wrong shape is corruption too, and
        # must be set aside now rather than fail in the store on every replay.
        pairs = tuple((k, v) for k, v in tags)
        if not all(type(x) is str for x in (device, quantity, *(x for kv in pairs for x in kv))):
            raise TypeError("a stream name is not a string")
        if type(ts) is not int or type(value) not in (int, float):
            raise TypeError(f"timestamp {ts!r} or value {value!r} has the wrong type")
        out.append(Reading(StreamKey(device, quantity, pairs), ts, float(value)))
    return out


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create spool directory {self.dir}: {e}") from e
        self._lockfd: int | None = None
        self._scan()

    def acquire(self) -> None:
        """Become the directory's one writer (before appending or replaying); idempotent."""
        if self._lockfd is not None:
            return
        try:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open spool lock in {self.dir}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"spool directory {self.dir} is in use by another ingester; give each process its own "
                "store.spool_dir"
            ) from None
        self._lockfd = fd
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a write that never completed was never acknowledged
        self._scan()

    def _scan(self) -> None:
        entries: list[SpoolEntry] = []
        for p in sorted(self.dir.glob("*.spool")):
            try:
                seq_s, count_s = p.stem.split("-")
                entries.append(SpoolEntry(p, int(seq_s), int(count_s), p.stat().st_size))
            except (ValueError, OSError):
                log.error("spool: ignoring unexpected file %s", p)
        with self._lock:
            self._entries = entries
            self._entries.sort(key=lambda e: e.seq)
            self._next = self._entries[-1].seq + 1 if self._entries else 0
            self._bytes = sum(e.size for e in self._entries)
        self.full = False

    def close(self) -> None:
        """Release the directory for another process (the files stay)."""
        if self._lockfd is not None:
            os.close(self._lockfd)  # closing the descriptor drops the flock
            self._lockfd = None

    def __del__(self) -> None:
        self.close()

    # --- state ---------------------------------------------------------------------------
    @property
    def readings(self) -> int:
        return sum(e.count for e in self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    # --- writing -------------------------------------------------------------------------
    def append(self, readings: Sequence[Reading]) -> None:
        """Make ``readings`` durable or raise ``SpoolFullError`` (nothing written then)."""
        self.acquire()
        data = encode_batch(readings)
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                self.full = True
                raise SpoolFullError(
                    f"spool {self.dir} full: {self._bytes} + {len(data)} bytes > limit {self.max_bytes}"
                )
            seq = self._next
            final = self.dir / f"{seq:016d}-{len(readings)}.spool"
            tmp = final.with_suffix(".tmp")
            try:
                write_synced(tmp, data, append=False)
                os.rename(tmp, final)
                fsync_dir(self.dir)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.full = True
                    raise SpoolFullError(f"spool {self.dir}: disk full ({e})") from e
                raise StoreError(f"spool {self.dir}: write failed ({e})") from e
            self._next = seq + 1
            self._entries.append(SpoolEntry(final, seq, len(readings), len(data)))
            self._bytes += len(data)
            self.full = False

    # --- replay --------------------------------------------------------------------------
    def oldest(self) -> tuple[SpoolEntry, list[Reading]] | None:
        """The oldest batch (not removed), or None.

        Only a corrupt file (not JSON of the spool's shape, or not as many readings as its
        name says) is set aside as ``.bad``. A read that fails for a reason outside the file
        (EIO, EMFILE, EACCES...) raises ``SpoolReadError`` and the batch stays for a retry:
        it was acknowledged, so it must never be given up because of a passing error.
        """
        while True:
            with self._lock:
                if not self._entries:
                    return None
                entry = self._entries[0]
            try:
                data = entry.path.read_bytes()
            except FileNotFoundError:
                log.error("spool: batch %s (%d readings) was removed by something else", entry.path, entry.count)
                self._drop(entry)
                continue
            except OSError as e:
                raise SpoolReadError(f"spool: cannot read {entry.path} now ({e}); will retry") from e
            try:
                readings = decode_batch(data)
                if len(readings) != entry.count:
                    raise ValueError(f"holds {len(readings)} readings, its name says {entry.count}")
                return entry, readings
            except (ValueError, TypeError) as e:
                bad = entry.path.with_suffix(".bad")
                log.error("spool: corrupt batch %s (%s); moved to %s", entry.path, e, bad)
                with contextlib.suppress(OSError):
                    entry.path.rename(bad)
                self._drop(entry)

    def remove(self, entry: SpoolEntry) -> None:
        """Forget ``entry`` once its readings are in the store."""
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as e:
            # Already stored: forgetting it is right. If the file survives, a restart replays
            # it once more, and the store overwrites the same points.
            log.error("spool: cannot remove replayed batch %s (%s); it may be replayed again", entry.path, e)
        self._drop(entry)

    def _drop(self, entry: SpoolEntry) -> None:
        with self._lock:
            if self._entries and self._entries[0] == entry:
                self._entries.pop(0)
            else:
                self._entries = [e for e in self._entries if e != entry]
            self._bytes -= entry.size
            self.full = False
