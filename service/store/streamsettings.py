"""Persisted per-stream alert rules (``PUT /v1/streams/{id}/settings``), one SQLite file.

One row per stream id: the ``StreamRules`` as JSON (only the fields set). A write is one
transaction with ``synchronous=FULL``, so a 200 means the rules are on disk (a power cut
cannot take them back) and a crash mid-write leaves the previous rules whole. Writes are
rare (an operator's change): the fsync is worth it.

Every row is read into memory at open; ``get`` is a dict lookup, cheap enough for the
engine to call for each new stream. A stream id is checked before it is stored: it must
be an id the engine gives a stream (``check_stream_id``), so a typo cannot sit unnoticed
as rules for a stream that can never exist. A stream not seen yet may be configured ahead.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from service.config import StreamRules
from service.errors import SensorcastError
from service.records import StreamKey

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class SettingsStoreError(SensorcastError):
    """The settings file cannot be opened, read or written."""


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
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            rows = self._db.execute("SELECT stream, rules FROM stream_settings").fetchall()
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
        log.info("stream settings: %d stream(s) with their own rules in %s", len(self._rules), self.path)

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

    def __len__(self) -> int:
        return len(self._rules)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _short(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())[:500]
