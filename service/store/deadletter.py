"""The dead-letter file: points the store refused for good, kept with the store's reason.

One JSON object per line, appended and fsync'd before the batch holding the points is
acknowledged (or removed from the spool)::

    {"at": "2026-12-06T03:00:00.123456Z", "source": "store", "reason": "retention",
     "status": 400, "detail": "partial write: points beyond retention policy dropped=1",
     "reading": {"device": "pump-1", "quantity": "temp", "tags": {"site": "n"},
                 "ts_ns": 1700000000000000000, "value": 21.5}}

``reading`` holds everything needed to write the point again once the cause is fixed.
The file lives in the spool directory (``<store.spool_dir>/deadletter.jsonl``): the same
volume, writable whenever the spool is, and owned by the one process that owns the spool.
It is bounded: past ``max_bytes`` it is renamed to ``deadletter.jsonl.1`` (replacing the
previous one) and a new file is started, so at most twice ``max_bytes`` stay on disk.

Each refused point is counted in ``sensorcast_store_rejected_total{reason}``; the log gets
the first refusal of each reason, then at most one line per reason every ``LOG_EVERY_S``.
A crash between this append and the spool's removal of the batch writes the same points
here twice on replay (at least once, like everything else).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson

from service.metrics import Metrics
from service.store.durable import fsync_dir, write_synced
from service.store.rejections import Rejection

log = logging.getLogger(__name__)

FILE_NAME = "deadletter.jsonl"
MAX_BYTES = 64 * 1024 * 1024  # ~190,000 refused points (~350 bytes each); a flood rotates, never fills the disk
LOG_EVERY_S = 10.0


def record_line(rej: Rejection, at: str) -> bytes:
    r = rej.reading
    obj = {
        "at": at,
        "source": "store",
        "reason": rej.kind,
        "status": rej.status,
        "detail": rej.detail,
        "reading": {
            "device": r.stream.device,
            "quantity": r.stream.quantity,
            "tags": dict(r.stream.tags),
            "ts_ns": r.ts_ns,
            # JSON has no NaN/Infinity: such a value (one a store may refuse) is kept as text.
            "value": r.value if math.isfinite(r.value) else repr(r.value),
        },
    }
    try:
        return orjson.dumps(obj) + b"\n"
    except TypeError:  # a lone surrogate in a name (another thing a store refuses)
        names = obj["reading"]
        assert isinstance(names, dict)
        for k in ("device", "quantity"):
            names[k] = _printable(names[k])
        names["tags"] = {_printable(k): _printable(v) for k, v in r.stream.tags}
        obj["names_escaped"] = True  # \udc80 as text: valid UTF-8 JSON, marked as not exact
        return orjson.dumps(obj) + b"\n"


def _printable(s: str) -> str:
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


class DeadLetter:
    def __init__(self, path: Path, metrics: Metrics, max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._counter = metrics.store_rejected
        self._lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def record(self, rejections: Sequence[Rejection]) -> None:
        """Count, log and append ``rejections``; never raises (a refusal must not stop intake)."""
        if not rejections:
            return
        for rej in rejections:
            self._counter.labels(rej.kind).inc()
        self._log(rejections)
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        data = b"".join(record_line(rej, at) for rej in rejections)
        try:
            self._append(data)
        except OSError as e:
            # The store refused these points for good and the disk will not take them either:
            # keep them in the log rather than block every later reading behind them.
            log.error(
                "dead-letter file %s not writable (%s); %d refused points only logged here: %s",
                self.path, e, len(rejections), data[:2000].decode(errors="replace"),
            )

    def _append(self, data: bytes) -> None:
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                log.warning("dead-letter file %s reached %d bytes; rotated to %s.1", self.path, size, self.path.name)
                size = 0
            write_synced(self.path, data, append=True)
            if not size:  # a new file: its directory entry must survive a crash too
                fsync_dir(self.path.parent)

    def _log(self, rejections: Sequence[Rejection]) -> None:
        by_kind: dict[str, list[Rejection]] = {}
        for rej in rejections:
            by_kind.setdefault(rej.kind, []).append(rej)
        now = time.monotonic()
        for kind, rs in by_kind.items():
            with self._lock:
                if now - self._last_log.get(kind, -1e9) < LOG_EVERY_S:
                    self._suppressed[kind] = self._suppressed.get(kind, 0) + len(rs)
                    continue
                self._last_log[kind] = now
                hidden = self._suppressed.pop(kind, 0)
            first = rs[0]
            log.warning(
                "store refused %d point(s) for good (%s, %d): %s; first: %s at %d; dead-lettered to %s%s",
                len(rs), kind, first.status, first.detail[:300], first.reading.stream.id[:200],
                first.reading.ts_ns, self.path, f" ({hidden} more '{kind}' refusals not logged)" if hidden else "",
            )
