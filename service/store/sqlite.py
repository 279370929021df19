"""SQLite (stdlib, WAL): the embedded default store, no server needed.

One table of points keyed ``(stream, ts)`` so a redelivered reading overwrites (upsert),
and one of streams. The stream key is the JSON of ``[device, quantity, tags]``: unlike the
display id it is injective whatever characters the names contain.

Retention (service/store/retention.py drives it): ``prune_batch`` deletes old points a
bounded batch per transaction, ``downsample_batch`` folds old points into ``<table>_hourly``
(hourly mean and count, so a late reading merges weighted instead of skewing the mean).
``read_range`` returns both tables merged; ``read_last`` (warm-up) only raw readings.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from service.errors import StoreError, StoreRejected
from service.records import Reading, StreamKey

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOUR_NS = 3_600_000_000_000


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
            # Hourly means of downsampled readings (ts: the hour's start); n weights a later merge.
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {table}_hourly (stream TEXT NOT NULL, ts INTEGER NOT NULL, "
                "value REAL NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (stream, ts)) WITHOUT ROWID"
            )
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
        with self._lock:
            # Under the lock: pruning forgets a stream whose last point it deleted (``_known`` too).
            new = [(keys[s],) for s in keys if s not in self._known]
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

    def _select(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args))
            except sqlite3.Error as e:
                raise StoreError(f"sqlite read failed: {e}") from e

    def read_range(self, stream: StreamKey, start_ns: int, end_ns: int, limit: int | None = None) -> list[Reading]:
        # Raw readings and hourly means (downsampled history) merged in time order; at an
        # equal timestamp (a late raw reading not folded yet) the hourly mean comes first and wins.
        key = stream_key_text(stream)
        args = (key, start_ns, end_ns, key, start_ns, end_ns)
        union = (
            f"SELECT ts, value, 1 AS raw FROM {self._t} WHERE stream = ? AND ts >= ? AND ts < ? UNION ALL "
            f"SELECT ts, value, 0 AS raw FROM {self._t}_hourly WHERE stream = ? AND ts >= ? AND ts < ?"
        )
        if limit is None:
            rows = self._select(f"{union} ORDER BY ts, raw", args)
        else:
            # The newest ``limit`` of the range: each primary key (stream, ts) serves it backwards.
            rows = self._select(f"{union} ORDER BY ts DESC, raw DESC LIMIT ?", (*args, max(0, limit)))
            rows.reverse()
        out = [Reading(stream, t, v) for t, v, _ in rows]
        if any(raw == 0 for _, _, raw in rows):  # means in the range: one point per timestamp
            out = [r for i, r in enumerate(out) if i == 0 or out[i - 1].ts_ns != r.ts_ns]
        return out

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

    # --- retention (driven by service/store/retention.py) ------------------------------------
    def stream_keys(self) -> list[str]:
        """The stored stream keys (the JSON text ``prune_batch`` and ``downsample_batch`` take)."""
        return [r[0] for r in self._select(f"SELECT stream FROM {self._t}_streams", ())]

    def prune_batch(self, stream: str, cutoff_ns: int, rows: int) -> int:
        """Delete up to ``rows`` of ``stream``'s points older than ``cutoff_ns`` (raw, then hourly
        means) in one transaction; a stream left without points is forgotten. Returns how many."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                n = self._delete_oldest(self._t, stream, cutoff_ns, rows)
                if n < rows:
                    n += self._delete_oldest(f"{self._t}_hourly", stream, cutoff_ns, rows - n)
                if n and not self._has_points(stream):
                    self._db.execute(f"DELETE FROM {self._t}_streams WHERE stream = ?", (stream,))
                    self._known.discard(stream_from_text(stream))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"sqlite prune failed: {e}") from e
        return n

    def downsample_batch(self, stream: str, cutoff_ns: int, rows: int) -> int:
        """Fold up to ``rows`` of ``stream``'s raw readings older than ``cutoff_ns`` into hourly
        means (merged, weighted by count, with a mean already there) in one transaction."""
        hour = f"ts - ((ts % {HOUR_NS}) + {HOUR_NS}) % {HOUR_NS}"  # floor, also before 1970
        with self._lock:
            try:
                self._db.execute("BEGIN")
                upto = self._batch_end(self._t, stream, cutoff_ns, rows)
                self._db.execute(
                    f"INSERT INTO {self._t}_hourly (stream, ts, value, n) SELECT stream, {hour} AS h, avg(value), "
                    f"count(*) FROM {self._t} WHERE stream = ? AND ts < ? GROUP BY h ON CONFLICT (stream, ts) "
                    "DO UPDATE SET value = (value * n + excluded.value * excluded.n) / (n + excluded.n), "
                    "n = n + excluded.n",
                    (stream, upto),
                )
                n = self._db.execute(f"DELETE FROM {self._t} WHERE stream = ? AND ts < ?", (stream, upto)).rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"sqlite downsampling failed: {e}") from e
        return int(n)

    def _batch_end(self, table: str, stream: str, cutoff_ns: int, rows: int) -> int:
        # The primary key (stream, ts) finds the rows-th oldest point: the batch is a range scan.
        row = self._db.execute(
            f"SELECT ts FROM {table} WHERE stream = ? AND ts < ? ORDER BY ts LIMIT 1 OFFSET ?",
            (stream, cutoff_ns, max(0, rows - 1)),
        ).fetchone()
        return cutoff_ns if row is None else int(row[0]) + 1

    def _delete_oldest(self, table: str, stream: str, cutoff_ns: int, rows: int) -> int:
        upto = self._batch_end(table, stream, cutoff_ns, rows)
        return int(self._db.execute(f"DELETE FROM {table} WHERE stream = ? AND ts < ?", (stream, upto)).rowcount)

    def _has_points(self, stream: str) -> bool:
        row = self._db.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self._t} WHERE stream = ?) "
            f"OR EXISTS (SELECT 1 FROM {self._t}_hourly WHERE stream = ?)",
            (stream, stream),
        ).fetchone()
        return bool(row[0])

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
