"""Persisted per-stream alert rules (``PUT /v1/streams/{id}/settings``), one SQLite file.

One row per stream id: the ``StreamRules`` as JSON (only the fields set). A write is one
transaction with ``synchronous=FULL``, so a 200 means the rules are on disk (a power cut
cannot take them back) and a crash mid-write leaves the previous rules whole. Writes are
rare (an operator's change): the fsync is worth it.

Every row is read into memory at open; ``get`` is a dict lookup, cheap enough for the
engine to call for each new stream. A stream id is checked before it is stored: it must
be an id the engine gives a stream (``check_stream_id``), so a typo cannot sit unnoticed
as rules for a stream that can never exist. A stream not seen yet may be configured ahead.

Silences (``PUT /v1/streams/{id}/silence``) live in the same file, table ``silences``: the
stream id, until when (ns since the epoch) and why. ``silenced_until`` is a dict lookup,
called by ``Pipeline.on_alert`` for each alert. A silence that has run out stops applying
by itself (the lookup compares with the clock); its row is deleted at the next silence
write or open. The table was added without a schema bump: an older sensorcast opens the
file and ignores it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.config import StreamRules
from service.errors import SensorcastError
from service.records import StreamKey

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class SettingsStoreError(SensorcastError):
    """The settings file cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class Silence:
    """A stream's alerts are recorded but not notified until ``until_ns``."""

    stream: str
    until_ns: int
    reason: str | None
    set_ns: int


def check_stream_id(text: str) -> str:
    """``text`` when it is a stream id as the engine writes it (``device/quantity[;k=v...]``, or
    a multivariate stream's ``device[;k=v...]``); ValueError saying what is wrong otherwise."""
    if not text:
        raise ValueError("stream id is empty; expected device/quantity[;tag=value...] or device[;tag=value...]")
    base = text.split(";", 1)[0]
    if "/" in base:
        canonical = StreamKey.parse(text).id
    else:
        device, tags = StreamKey.parse_device_id(text)
        canonical = StreamKey(device, "*", tags).device_id
    if canonical != text:  # parse accepts only canonical escapes and sorted tags: a guard, not expected
        raise ValueError(f"stream id {text[:200]!r} is not in its canonical form {canonical[:200]!r}")
    return text


class StreamSettings:
    """The stream id -> own ``StreamRules`` table, held in memory, written through to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._rules: dict[str, StreamRules] = {}
        self._silences: dict[str, Silence] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=2.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # see the module docstring
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise SettingsStoreError(
                    f"stream settings {self.path} have schema {version}, newer than this version of sensorcast "
                    f"({SCHEMA_VERSION})")
            self._db.execute("CREATE TABLE IF NOT EXISTS stream_settings (stream TEXT PRIMARY KEY, "
                             "rules TEXT NOT NULL, updated_ns INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS silences (stream TEXT PRIMARY KEY, until_ns INTEGER NOT NULL, "
                             "reason TEXT, set_ns INTEGER NOT NULL)")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            rows = self._db.execute("SELECT stream, rules FROM stream_settings").fetchall()
            self._db.execute("DELETE FROM silences WHERE until_ns <= ?", (time.time_ns(),))
            for stream, until, reason, set_ns in self._db.execute("SELECT stream, until_ns, reason, set_ns FROM silences"):
                self._silences[str(stream)] = Silence(str(stream), int(until), reason, int(set_ns))
        except (sqlite3.Error, OSError) as e:
            raise SettingsStoreError(
                f"cannot open the stream settings {self.path}: {e} (streams.settings_path sets where they live; a "
                "damaged file can be moved aside, which drops every stream's own rules)"
            ) from e
        for stream, text in rows:
            try:
                self._rules[str(stream)] = StreamRules.model_validate_json(text)
            except ValidationError as e:
                # Kept in the file (a later version may read it again) but not applied: said loudly.
                log.error("stream settings %s: the rules of %r are not valid here and are ignored: %s",
                          self.path, str(stream)[:200], _short(e))
        log.info("stream settings: %d stream(s) with their own rules, %d silenced, in %s", len(self._rules),
                 len(self._silences), self.path)

    def get(self, stream_id: str) -> StreamRules | None:
        """The stream's own rules (None: it inherits everything)."""
        return self._rules.get(stream_id)

    def all(self) -> dict[str, StreamRules]:
        with self._lock:
            return dict(self._rules)

    def put(self, stream_id: str, rules: StreamRules | None) -> StreamRules | None:
        """Store (None: delete) the stream's own rules, durably; returns the previous ones."""
        check_stream_id(stream_id)
        with self._lock:
            try:
                if rules is None:
                    self._db.execute("DELETE FROM stream_settings WHERE stream = ?", (stream_id,))
                else:
                    self._db.execute(
                        "INSERT INTO stream_settings (stream, rules, updated_ns) VALUES (?, ?, ?) ON CONFLICT "
                        "(stream) DO UPDATE SET rules = excluded.rules, updated_ns = excluded.updated_ns",
                        (stream_id, rules.model_dump_json(exclude_none=True), time.time_ns()),
                    )
            except sqlite3.Error as e:
                raise SettingsStoreError(f"cannot write the stream settings {self.path}: {e}") from e
            before = self._rules.pop(stream_id, None)
            if rules is not None:
                self._rules[stream_id] = rules
            return before

    # -- silences ------------------------------------------------------------------
    def silenced_until(self, stream_id: str, now_ns: int | None = None) -> int | None:
        """Until when the stream is silenced (ns), None when it is not (or no longer)."""
        found = self._silences.get(stream_id)
        if found is None or found.until_ns <= (time.time_ns() if now_ns is None else now_ns):
            return None
        return found.until_ns

    def silence_of(self, stream_id: str, now_ns: int | None = None) -> Silence | None:
        """The stream's silence while it applies."""
        found = self._silences.get(stream_id)
        return found if found is not None and self.silenced_until(stream_id, now_ns) is not None else None

    def silences(self, now_ns: int | None = None) -> dict[str, Silence]:
        """Every silence that applies now, by stream id."""
        return {k: v for k, v in list(self._silences.items()) if self.silenced_until(k, now_ns) is not None}

    def silence(self, stream_id: str, until_ns: int, reason: str | None = None) -> Silence:
        """Silence the stream until ``until_ns``, durably (replaces its previous silence)."""
        check_stream_id(stream_id)
        now = time.time_ns()
        entry = Silence(stream_id, until_ns, reason, now)
        with self._lock:
            try:
                self._db.execute("DELETE FROM silences WHERE until_ns <= ?", (now,))
                self._db.execute("INSERT OR REPLACE INTO silences (stream, until_ns, reason, set_ns) VALUES (?, ?, ?, ?)",
                                 (stream_id, until_ns, reason, now))
            except (sqlite3.Error, OverflowError) as e:
                raise SettingsStoreError(f"cannot write the stream settings {self.path}: {e}") from e
            self._silences = {k: v for k, v in self._silences.items() if v.until_ns > now} | {stream_id: entry}
        return entry

    def unsilence(self, stream_id: str) -> Silence | None:
        """End the stream's silence now; returns it (None: it had none that applied)."""
        with self._lock:
            try:
                self._db.execute("DELETE FROM silences WHERE stream = ?", (stream_id,))
            except sqlite3.Error as e:
                raise SettingsStoreError(f"cannot write the stream settings {self.path}: {e}") from e
            before = self.silence_of(stream_id)
            self._silences.pop(stream_id, None)
            return before

    def __len__(self) -> int:
        return len(self._rules)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _short(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())[:500]
