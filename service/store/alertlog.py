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
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.errors import SensorcastError
from service.records import Alert, StreamKey

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, "
    "stream TEXT NOT NULL, state TEXT NOT NULL, chk TEXT NOT NULL, kind TEXT NOT NULL, logged_ns INTEGER NOT NULL, "
    "body BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS alerts_time ON alerts (ts_ns, id)",
    "CREATE INDEX IF NOT EXISTS alerts_stream ON alerts (stream, ts_ns, id)",
)
_INSERT = "INSERT INTO alerts (ts_ns, stream, state, chk, kind, logged_ns, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
_FLOATS = ("value", "expected", "lower", "upper", "score", "onset_value", "onset_expected")
PRUNE_EVERY_S = 60.0
RETRY_S = 1.0
BATCH_MAX = 5_000  # rows per transaction: a long storm commits in pieces


class HistoryError(SensorcastError):
    """The alert history file cannot be opened or read."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in newest-first order: the last row of a page."""

    ts_ns: int
    id: int

    def token(self) -> str:
        return base64.urlsafe_b64encode(f"{self.ts_ns}.{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """ValueError for anything ``token()`` did not produce."""
        try:
            text = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
            ts, row = (int(part) for part in text.split("."))
            if not (-(2**63) <= ts < 2**63 and 0 < row < 2**63):
                raise ValueError(text)
            return cls(ts, row)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError("cursor is not one this API gave out (pass X-Next-Cursor as it is)") from None


@dataclass(frozen=True, slots=True)
class Query:
    """Filters of a page; None: any."""

    stream: str | None = None
    state: str | None = None
    check: str | None = None
    kind: str | None = None
    since_ns: int | None = None  # at or after
    until_ns: int | None = None  # before


def encode(a: Alert) -> bytes:
    """Every field of the record (NaN -> null); the key is kept whole, not as its display id."""
    return orjson.dumps({
        "device": a.key.device, "key_quantity": a.key.quantity, "tags": [list(t) for t in a.key.tags],
        "multivariate": a.multivariate, "quantity": a.quantity, "state": a.state, "ts_ns": a.ts_ns,
        "value": a.value, "expected": a.expected, "lower": a.lower, "upper": a.upper, "score": a.score,
        "model": a.model, "model_version": a.model_version, "warm": a.warm, "extra": a.extra, "check": a.check,
        "kind": a.kind, "onset_ns": a.onset_ns, "onset_value": a.onset_value, "onset_expected": a.onset_expected,
        "contributors": [[n, s] for n, s in a.contributors],
    })


def decode(body: bytes) -> Alert:
    d: dict[str, Any] = orjson.loads(body)
    floats = {k: math.nan if d[k] is None else float(d[k]) for k in _FLOATS}
    return Alert(
        StreamKey(d["device"], d["key_quantity"], tuple((k, v) for k, v in d["tags"])), d["quantity"], d["state"],
        int(d["ts_ns"]), floats["value"], floats["expected"], floats["lower"], floats["upper"], floats["score"],
        d["model"], d["model_version"], bool(d["warm"]), dict(d["extra"]), bool(d["multivariate"]), d["check"],
        d["kind"], d["onset_ns"], floats["onset_value"], floats["onset_expected"],
        tuple((str(n), float(s)) for n, s in d["contributors"]),
    )


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
        self._queue: deque[Alert] = deque()
        self._busy = 0  # alerts taken from the queue and not yet committed or given up
        self._closing = False
        self._pruned_at = 0.0
        self._warned_at = -PRUNE_EVERY_S
        self._thread = threading.Thread(target=self._run, name="alert-history-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ writing
    def append(self, alert: Alert) -> None:
        """Queue one alert (the engine's sink: never blocks on the disk)."""
        with self._cond:
            if len(self._queue) >= self.queue_max:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:  # a storm: not one line per alert
                    log.error("alert history: %d alert(s) dropped so far, the writer cannot keep up or the "
                              "file %s cannot be written", self.dropped, self.path)
            self._queue.append(alert)
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

    def _write(self, batch: Sequence[Alert]) -> bool:
        """Commit ``batch``; False (retry later) when the file cannot be written right now."""
        now = time.time_ns()
        rows = []
        for a in batch:
            try:
                rows.append((a.ts_ns, a.stream_id, a.state, a.check, a.kind, now, encode(a)))
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
    def page(self, limit: int, q: Query = Query(), before: Cursor | None = None) -> tuple[list[Alert], Cursor | None]:
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
        if before is not None:
            where.append("(ts_ns < ? OR (ts_ns = ? AND id < ?))")
            args += [before.ts_ns, before.ts_ns, before.id]
        sql = "SELECT id, ts_ns, body FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_ns DESC, id DESC LIMIT ?"
        with self._read_lock:
            try:
                rows = self._read.execute(sql, (*args, limit + 1)).fetchall()
            except (sqlite3.Error, OverflowError) as e:
                raise HistoryError(f"cannot read the alert history {self.path}: {e}") from e
        nxt = Cursor(int(rows[limit - 1][1]), int(rows[limit - 1][0])) if len(rows) > limit else None
        out = []
        for row in rows[:limit]:
            try:
                out.append(decode(bytes(row[2])))
            except (ValueError, TypeError, KeyError) as e:  # a row damaged by hand: skipped, said once
                log.warning("alert history: row %d of %s cannot be read (%s); skipped", row[0], self.path, e)
        return out, nxt

    def count(self) -> int:
        with self._read_lock:
            try:
                return int(self._read.execute("SELECT COUNT(*) FROM alerts").fetchone()[0])
            except sqlite3.Error as e:
                raise HistoryError(f"cannot read the alert history {self.path}: {e}") from e
