"""SQLite (stdlib, WAL): the embedded default store, no server needed.

One table of points keyed ``(stream, ts)`` so a redelivered reading overwrites (upsert),
and one of streams. The stream key is the JSON of ``[device, quantity, tags]``: unlike the
display id it is injective whatever characters the names contain.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson

from service.errors import StoreError, StoreRejected
from service.records import Reading, StreamKey

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def stream_key_text(s: StreamKey) -> str:
    return orjson.dumps([s.device, s.quantity, [list(t) for t in s.tags]]).decode()


def stream_from_text(text: str) -> StreamKey:
    device, quantity, tags = orjson.loads(text)
    return StreamKey(device, quantity, tuple((k, v) for k, v in tags))


class SqliteStore:
    def __init__(self, path: str | Path, table: str = "readings") -> None:
        if not _IDENT.match(table):
            raise StoreError(f"sqlite table name must be an identifier, found {table!r}")
        self._t = table
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the writer and readers; the lock serialises them.
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a batch is acknowledged to the broker only after its commit is on disk.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (stream TEXT NOT NULL, ts INTEGER NOT NULL, "
                "value REAL NOT NULL, PRIMARY KEY (stream, ts)) WITHOUT ROWID"
            )
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {table}_streams (stream TEXT PRIMARY KEY)")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open sqlite store {path}: {e}") from e
        self._known: set[StreamKey] = set()

    def write(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        keys: dict[StreamKey, str] = {}
        rows = []
        try:
            for r in readings:
                k = keys.get(r.stream)
                if k is None:
                    k = keys[r.stream] = stream_key_text(r.stream)
                rows.append((k, r.ts_ns, r.value))
        except (TypeError, ValueError) as e:  # orjson: a lone surrogate in a name
            raise StoreRejected(0, "invalid_value", f"sqlite cannot encode a stream name: {e}") from e
        new = [(keys[s],) for s in keys if s not in self._known]
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"INSERT INTO {self._t} (stream, ts, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (stream, ts) DO UPDATE SET value = excluded.value",
                    rows,
                )
                if new:
                    self._db.executemany(f"INSERT OR IGNORE INTO {self._t}_streams VALUES (?)", new)
                self._db.execute("COMMIT")
            except (sqlite3.IntegrityError, OverflowError) as e:
                # The points themselves (NaN stored as NULL, a timestamp beyond 64 bits): the same
                # batch would fail again, so the writer isolates them. Disk, lock and I/O errors
                # (OperationalError) stay transient below.
                self._rollback()
                raise StoreRejected(0, "invalid_value", f"sqlite refused the batch: {e}") from e
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"sqlite write failed: {e}") from e
            self._known.update(keys)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _select(self, sql: str, args: tuple[object, ...]) -> list[tuple[int, float]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args))
            except sqlite3.Error as e:
                raise StoreError(f"sqlite read failed: {e}") from e

    def read_range(self, stream: StreamKey, start_ns: int, end_ns: int, limit: int | None = None) -> list[Reading]:
        args = (stream_key_text(stream), start_ns, end_ns)
        where = f"FROM {self._t} WHERE stream = ? AND ts >= ? AND ts < ?"
        if limit is None:
            rows = self._select(f"SELECT ts, value {where} ORDER BY ts", args)
            return [Reading(stream, t, v) for t, v in rows]
        # The newest ``limit`` of the range: the primary key (stream, ts) serves it backwards.
        rows = self._select(f"SELECT ts, value {where} ORDER BY ts DESC LIMIT ?", (*args, max(0, limit)))
        return [Reading(stream, t, v) for t, v in reversed(rows)]

    def read_last(self, stream: StreamKey, n: int) -> list[Reading]:
        rows = self._select(
            f"SELECT ts, value FROM {self._t} WHERE stream = ? ORDER BY ts DESC LIMIT ?",
            (stream_key_text(stream), n),
        )
        return [Reading(stream, t, v) for t, v in reversed(rows)]

    def read_last_many(self, streams: Sequence[StreamKey], n: int) -> dict[StreamKey, list[Reading]]:
        # Embedded: per-stream index lookups are ~10 us each, no round trips to save.
        out = {}
        for s in set(streams):
            rs = self.read_last(s, n)
            if rs:
                out[s] = rs
        return out

    def streams(self) -> list[StreamKey]:
        with self._lock:
            try:
                rows = list(self._db.execute(f"SELECT stream FROM {self._t}_streams"))
            except sqlite3.Error as e:
                raise StoreError(f"sqlite read failed: {e}") from e
        return sorted(stream_from_text(r[0]) for r in rows)

    def ping(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1")
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            self._db.close()
