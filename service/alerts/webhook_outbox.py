"""The webhook outbox: alert events not yet delivered to a webhook URL, in their own SQLite file.

The same pattern as the MQTT outbox (service/alerts/outbox.py): an event is committed
(WAL, ``synchronous=NORMAL``: it survives the process dying; ``sync()`` bounds what a
power cut can take) before anything is sent, and deleted once the receiver answered 2xx or
the event was given up. One row per event and URL, so each receiver is served on its own;
a row keeps its failed attempts, so ``max_attempts`` holds across restarts.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body BLOB NOT NULL,
    queued REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_url ON webhooks (url, id);
"""


@dataclass(frozen=True, slots=True)
class WebhookEntry:
    id: int
    url: str
    event_id: str
    body: bytes
    queued: float  # unix seconds
    attempts: int


class WebhookOutbox:
    """Undelivered webhook events in one SQLite file; safe across threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection under a lock: writes are few (alert events, not readings).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        # A second connection only for checkpoints: its fsync (~10 ms) must not hold up put(),
        # which runs on the engine's thread.
        self._sync_db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._sync_lock = threading.Lock()

    def put(self, urls: list[str], event_id: str, body: bytes, queued: float) -> None:
        """One row per URL, in one transaction: all are durable when this returns."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO webhooks (url, event_id, body, queued) VALUES (?, ?, ?, ?)",
                    [(url, event_id, body, queued) for url in urls],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def oldest(self, url: str) -> WebhookEntry | None:
        """The next event for ``url`` (events to one receiver go in the order they were queued)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, url, event_id, body, queued, attempts FROM webhooks WHERE url = ? ORDER BY id LIMIT 1",
                (url,),
            ).fetchone()
        if row is None:
            return None
        return WebhookEntry(int(row[0]), str(row[1]), str(row[2]), bytes(row[3]), float(row[4]), int(row[5]))

    def failed_attempt(self, entry_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE webhooks SET attempts = attempts + 1 WHERE id = ?", (entry_id,))

    def delete(self, entry_id: int) -> None:
        """Delivered, or given up: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM webhooks WHERE id = ?", (entry_id,))

    def drop_other_urls(self, keep: list[str]) -> int:
        """Delete events for URLs no longer configured; returns how many."""
        marks = ",".join("?" * len(keep))
        with self._lock:
            cur = self._db.execute(f"DELETE FROM webhooks WHERE url NOT IN ({marks})", keep)
        return max(cur.rowcount, 0)

    def count(self, url: str | None = None) -> int:
        with self._lock:
            if url is None:
                row = self._db.execute("SELECT COUNT(*) FROM webhooks").fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM webhooks WHERE url = ?", (url,)).fetchone()
        return int(row[0])

    def sync(self) -> None:
        """Force committed events to disk (WAL checkpoint with fsync)."""
        with self._sync_lock:
            self._sync_db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._sync_lock:
            self._sync_db.close()
        with self._lock:
            self._db.close()
