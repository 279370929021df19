"""Persisted alert history: every alert event in a small SQLite file, read newest first.

``append`` is called from the engine's alert sink, inside its tick: it only queues the
alert. A writer thread commits whatever has queued in one transaction (``executemany``),
so the tick never waits for the disk, a lock held by another process, or a full disk.
The file is WAL with ``synchronous=NORMAL`` like the alert outbox: a commit survives the
process dying (SIGKILL); an fsync'd checkpoint at each prune bounds what a power cut takes.

Bounded: rows beyond ``max_rows`` (oldest first) and rows written more than ``max_age_s``
ago are deleted about once a minute. Age counts from when a row was written, not from
the alert's own time: replayed history carries old timestamps and must not vanish at once.

Failures never reach the engine. A write that fails (locked, disk full, I/O error) keeps
its batch queued and retries every second; beyond ``queue_max`` waiting alerts the
oldest are dropped, counted in ``dropped`` and logged. A file that is not a database (or
from a newer schema) is refused at open with ``HistoryError`` naming the path.

Each row is one alert event; its row id is the alert's id in ``GET /v1/alerts``. A row
also says whether the stream was silenced when the alert was raised (it was recorded but
not notified) and carries its acknowledgement (``ack``: when, by whom, a note; the first
ack is kept). Schema 2 added these columns; a schema-1 file gains them at open.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.errors import SensorcastError
from service.records import Alert
from service.store.alertrows import Cursor, HistoryRow, Query, decode, encode

__all__ = ["AlertLog", "Cursor", "HistoryError", "HistoryRow", "Query", "decode", "encode"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, "
    "stream TEXT NOT NULL, state TEXT NOT NULL, chk TEXT NOT NULL, kind TEXT NOT NULL, logged_ns INTEGER NOT NULL, "
    "body BLOB NOT NULL, silenced INTEGER NOT NULL DEFAULT 0, acked_ns INTEGER, acked_by TEXT, ack_note TEXT)",
    "CREATE INDEX IF NOT EXISTS alerts_time ON alerts (ts_ns, id)",
    "CREATE INDEX IF NOT EXISTS alerts_stream ON alerts (stream, ts_ns, id)",
)
_INSERT = ("INSERT INTO alerts (ts_ns, stream, state, chk, kind, logged_ns, body, silenced) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# Schema 1 -> 2: columns added in place (ALTER TABLE ADD COLUMN rewrites nothing).
_ADDED = {"silenced": "INTEGER NOT NULL DEFAULT 0", "acked_ns": "INTEGER", "acked_by": "TEXT", "ack_note": "TEXT"}
_ROW = "SELECT id, ts_ns, body, silenced, acked_ns, acked_by, ack_note FROM alerts"
PRUNE_EVERY_S = 60.0
RETRY_S = 1.0
BATCH_MAX = 5_000  # rows per transaction: a long storm commits in pieces
_ANY = Query()


class HistoryError(SensorcastError):
    """The alert history file cannot be opened or read."""


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=0.5)
    db.execute("PRAGMA busy_timeout=500")  # a lock held elsewhere: fail fast, the writer retries
    return db


class AlertLog:
    """The history file, its writer thread and its reads; ``close()`` flushes what is queued."""

    def __init__(self, path: Path, max_rows: int = 100_000, max_age_s: float = 90 * 86_400.0,
                 queue_max: int = 100_000) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.queue_max = queue_max
        self.dropped = 0  # alerts never written: queue overflow or not encodable
        self.written = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise HistoryError(f"alert history {self.path} has schema {version}, newer than this version "
                                   f"of sensorcast ({SCHEMA_VERSION}); point alerts.history_path elsewhere")
            for stmt in _SCHEMA:
                self._db.execute(stmt)
            have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(alerts)")}
            for col, decl in _ADDED.items():
                if col not in have:
                    self._db.execute(f"ALTER TABLE alerts ADD COLUMN {col} {decl}")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._read = _connect(self.path)
        except (sqlite3.Error, OSError) as e:
            raise HistoryError(
                f"cannot open the alert history {self.path}: {e} (a damaged file can be moved aside; "
                "alerts.history_path sets where it lives)"
            ) from e
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()  # the writer thread, or prune() called from outside
        self._cond = threading.Condition()
        self._queue: deque[tuple[Alert, bool]] = deque()  # (alert, silenced)
        self._busy = 0  # alerts taken from the queue and not yet committed or given up
        self._closing = False
        self._pruned_at = 0.0
        self._warned_at = -PRUNE_EVERY_S
        self._thread = threading.Thread(target=self._run, name="alert-history-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ writing
    def append(self, alert: Alert, silenced: bool = False) -> None:
        """Queue one alert (the engine's sink: never blocks on the disk); ``silenced``: its
        stream was silenced, so it is recorded but was not notified."""
        with self._cond:
            if len(self._queue) >= self.queue_max:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:  # a storm: not one line per alert
                    log.error("alert history: %d alert(s) dropped so far, the writer cannot keep up or the "
                              "file %s cannot be written", self.dropped, self.path)
            self._queue.append((alert, silenced))
            self._cond.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every alert appended so far is committed (or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(PRUNE_EVERY_S)
                    if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                        break
                n = min(len(self._queue), BATCH_MAX)
                batch = [self._queue.popleft() for _ in range(n)]
                self._busy = n
                closing = self._closing
            ok = True
            try:
                if batch:
                    ok = self._write(batch)
                if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                    self.prune()
            except Exception:  # the thread must outlive any bug: the watchdog would end the process
                log.exception("alert history writer failed a batch of %d", len(batch))
                ok = False
            with self._cond:
                self._busy = 0
                if not ok:
                    if closing:  # stopping: do not retry forever
                        lost = len(batch) + len(self._queue)
                        self._queue.clear()
                        self.dropped += lost
                        log.error("alert history: %d alert(s) not written at shutdown", lost)
                    else:
                        self._queue.extendleft(reversed(batch))  # retry first, in order
                        while len(self._queue) > self.queue_max:
                            self._queue.popleft()
                            self.dropped += 1
                self._cond.notify_all()
                if closing and (not self._queue or not ok):
                    return
            if not ok and not closing:
                time.sleep(RETRY_S)

    def _write(self, batch: Sequence[tuple[Alert, bool]]) -> bool:
        """Commit ``batch``; False (retry later) when the file cannot be written right now."""
        now = time.time_ns()
        rows = []
        for a, silenced in batch:
            try:
                rows.append((a.ts_ns, a.stream_id, a.state, a.check, a.kind, now, encode(a), int(silenced)))
            except (TypeError, ValueError) as e:  # orjson: a name that is not valid UTF-8
                self._drop(1, f"cannot encode an alert of {a.stream_id[:200]!r} ({e})")
        try:
            with self._write_lock:
                try:
                    self._commit(rows)
                except (sqlite3.IntegrityError, OverflowError):
                    # A row the same insert would refuse again (a time beyond 64 bits): alone,
                    # so the others are kept and the queue is not stuck behind it.
                    for row in rows:
                        try:
                            self._commit([row])
                        except (sqlite3.IntegrityError, OverflowError) as e:
                            self._drop(1, f"cannot store an alert of {str(row[1])[:200]!r} ({e})")
        except sqlite3.Error as e:  # locked, disk full, I/O: transient, said once a minute
            if time.monotonic() - self._warned_at >= PRUNE_EVERY_S:
                self._warned_at = time.monotonic()
                log.warning("alert history: writing %d alert(s) to %s failed (%s); retrying every %.0f s",
                            len(rows), self.path, e, RETRY_S)
            return False
        self.written += len(rows)
        return True

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        log.error("alert history: %s; dropped (%d so far)", why, self.dropped)

    def _commit(self, rows: Sequence[tuple[object, ...]]) -> None:
        try:
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, rows)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def prune(self, now_ns: int | None = None) -> int:
        """Apply the retention bounds; returns the rows deleted."""
        self._pruned_at = time.monotonic()
        now = time.time_ns() if now_ns is None else now_ns
        try:
            with self._write_lock:
                return self._prune(now)
        except sqlite3.Error as e:
            log.warning("alert history: pruning %s failed (%s); retried later", self.path, e)
            return 0

    def _prune(self, now_ns: int) -> int:
        deleted = 0
        if self.max_rows > 0:
            deleted += self._db.execute(
                "DELETE FROM alerts WHERE id <= (SELECT id FROM alerts ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.max_rows,),
            ).rowcount
        if self.max_age_s > 0:
            # Ids follow the write order: the first young row bounds the old ones, no index needed.
            first = self._db.execute("SELECT id FROM alerts WHERE logged_ns >= ? ORDER BY id LIMIT 1",
                                     (now_ns - int(self.max_age_s * 1e9),)).fetchone()
            sql, args = ("DELETE FROM alerts", ()) if first is None else ("DELETE FROM alerts WHERE id < ?", (first[0],))
            deleted += self._db.execute(sql, args).rowcount
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # an fsync: bounds what a power cut can take
        return deleted

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), then close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("alert history: %d alert(s) still queued at shutdown were not written", self.pending())
            return  # the writer still holds the connection: leave it to the process exit
        with self._read_lock:
            self._read.close()
        self._db.close()

    # ------------------------------------------------------------ reading
    def page(self, limit: int, q: Query = _ANY, before: Cursor | None = None) -> tuple[list[Alert], Cursor | None]:
        """``rows`` without the ids, silences and acks."""
        rows, nxt = self.rows(limit, q, before)
        return [r.alert for r in rows], nxt

    def rows(self, limit: int, q: Query = _ANY, before: Cursor | None = None) -> tuple[list[HistoryRow], Cursor | None]:
        """Up to ``limit`` alerts matching ``q``, newest first (time, then write order), after
        ``before``; and the cursor of the next page (None: this was the last)."""
        where: list[str] = []
        args: list[object] = []
        for col, val in (("stream", q.stream), ("state", q.state), ("chk", q.check), ("kind", q.kind)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if q.since_ns is not None:
            where.append("ts_ns >= ?")
            args.append(q.since_ns)
        if q.until_ns is not None:
            where.append("ts_ns < ?")
            args.append(q.until_ns)
        if q.acked is not None:
            where.append("acked_ns IS NOT NULL" if q.acked else "acked_ns IS NULL")
        if before is not None:
            where.append("(ts_ns < ? OR (ts_ns = ? AND id < ?))")
            args += [before.ts_ns, before.ts_ns, before.id]
        sql = _ROW
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_ns DESC, id DESC LIMIT ?"
        rows = self._select(sql, (*args, limit + 1))
        nxt = Cursor(int(rows[limit - 1][1]), int(rows[limit - 1][0])) if len(rows) > limit else None
        out = [r for r in map(self._row, rows[:limit]) if r is not None]
        return out, nxt

    def get(self, alert_id: int) -> HistoryRow | None:
        """The event with this id (None: unknown, pruned or unreadable)."""
        found = self._select(_ROW + " WHERE id = ?", (alert_id,))
        return self._row(found[0]) if found else None

    def ack(self, alert_id: int, by: str | None = None, note: str | None = None,
            now_ns: int | None = None) -> HistoryRow | None:
        """Acknowledge one event, durably; acking again keeps the first ack (idempotent).
        None: no event with this id."""
        try:
            with self._write_lock:  # the writer's connection: one writer to the file at a time
                self._db.execute("UPDATE alerts SET acked_ns = ?, acked_by = ?, ack_note = ? "
                                 "WHERE id = ? AND acked_ns IS NULL",
                                 (time.time_ns() if now_ns is None else now_ns, by, note, alert_id))
        except (sqlite3.Error, OverflowError) as e:
            raise HistoryError(f"cannot write an ack to the alert history {self.path}: {e}") from e
        return self.get(alert_id)

    def _select(self, sql: str, args: Sequence[object]) -> list[Any]:
        with self._read_lock:
            try:
                return self._read.execute(sql, args).fetchall()
            except (sqlite3.Error, OverflowError) as e:
                raise HistoryError(f"cannot read the alert history {self.path}: {e}") from e

    def _row(self, row: Any) -> HistoryRow | None:
        try:
            alert = decode(bytes(row[2]))
        except (ValueError, TypeError, KeyError) as e:  # a row damaged by hand: skipped, said once
            log.warning("alert history: row %d of %s cannot be read (%s); skipped", row[0], self.path, e)
            return None
        return HistoryRow(int(row[0]), alert, bool(row[3]), None if row[4] is None else int(row[4]), row[5], row[6])

    def count(self) -> int:
        with self._read_lock:
            try:
                return int(self._read.execute("SELECT COUNT(*) FROM alerts").fetchone()[0])
            except sqlite3.Error as e:
                raise HistoryError(f"cannot read the alert history {self.path}: {e}") from e
