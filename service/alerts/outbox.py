"""The durable outbox: MQTT messages that must survive a crash until the broker has them.

A message is committed before it is handed to the MQTT client and deleted only when the
broker acknowledges it (QoS 1 PUBACK). On start every message still in the outbox is
sent again, oldest first: delivery is at-least-once, so a subscriber may see a message
twice after a crash, never zero times.

Durability: WAL with ``synchronous=NORMAL``. A commit is in the WAL file (the OS page
cache) when ``put`` returns, so it survives the process dying (SIGKILL, OOM); ``sync()``
(called about once a second by the publisher) checkpoints the WAL with an fsync, which
bounds what a power cut can take to the last second. ``synchronous=FULL`` would fsync every
commit: measured 7 ms median, 40 ms p99 per alert on this (busy, shared) machine, paid
inside the engine's tick, against ~0.05 ms now.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """A FIFO of unacknowledged messages in ``<dir>/outbox.db``; safe across threads."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "outbox.db"
        # One connection shared under a lock: writes are few (alerts, not readings).
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
            self._db.execute(_SCHEMA)
        # A second connection only for checkpoints: its fsync (~10 ms) must not hold up put().
        self._sync_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._sync_lock = threading.Lock()

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store one message durably; returns its id."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                (topic, payload, qos, int(retain)),
            )
            return int(cur.lastrowid or 0)

    def ack(self, entry_id: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxEntry]:
        """Up to ``limit`` messages with id > ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxEntry(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4])) for r in rows]

    def sync(self) -> None:
        """Force committed messages to disk (WAL checkpoint with fsync)."""
        with self._sync_lock:
            self._sync_db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._sync_lock:
            self._sync_db.close()
        with self._lock:
            self._db.close()
