"""``memory://``: the in-memory twin of a store, for unit tests of pure logic.

``fail`` makes every write raise ``StoreError`` (a store that is down), so batching and
spool logic can be tested without a server; set it to an exception instance (e.g. a
``StoreAuthError``) to raise that instead. ``reject`` simulates permanent refusals: a
function giving, for a reading, the store's reason text (or None to accept it). A write
holding any refused reading raises ``StoreRejected`` (status 400, kind from the reason
text as for InfluxDB); with ``partial_writes`` the twin first stores the others and says
``dropped=N``, as influxd 1.x does for retention drops, otherwise it stores nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from service.errors import StoreError, StoreRejected
from service.records import Reading, StreamKey
from service.store.rejections import kind_of


class MemoryStore:
    def __init__(self) -> None:
        self.points: dict[StreamKey, dict[int, float]] = {}
        self.fail: bool | StoreError = False
        self.reject: Callable[[Reading], str | None] | None = None
        self.partial_writes = False
        self.writes = 0  # successful write calls
        self.attempts = 0  # every write call, refused ones included
        self._lock = threading.Lock()

    def write(self, readings: Sequence[Reading]) -> None:
        with self._lock:
            self.attempts += 1
            if self.fail:
                raise self.fail if isinstance(self.fail, StoreError) else StoreError("memory store is set to fail")
            refused: list[str] = []
            if self.reject is not None:
                refused = [why for why in map(self.reject, readings) if why is not None]
            if refused and not self.partial_writes:
                raise StoreRejected(400, kind_of(400, refused[0]), refused[0])
            for r in readings:
                if self.reject is None or self.reject(r) is None:
                    self.points.setdefault(r.stream, {})[r.ts_ns] = r.value
            if refused:
                raise StoreRejected(400, kind_of(400, refused[0]), f"partial write: {refused[0]}", len(refused))
            self.writes += 1

    def _sorted(self, stream: StreamKey) -> list[Reading]:
        with self._lock:
            pts = dict(self.points.get(stream, {}))
        return [Reading(stream, t, v) for t, v in sorted(pts.items())]

    def read_range(self, stream: StreamKey, start_ns: int, end_ns: int, limit: int | None = None) -> list[Reading]:
        rows = [r for r in self._sorted(stream) if start_ns <= r.ts_ns < end_ns]
        if limit is None:
            return rows
        return rows[-limit:] if limit > 0 else []

    def read_last(self, stream: StreamKey, n: int) -> list[Reading]:
        return self._sorted(stream)[-n:] if n > 0 else []

    def read_last_many(self, streams: Sequence[StreamKey], n: int) -> dict[StreamKey, list[Reading]]:
        out = {s: self.read_last(s, n) for s in set(streams)}
        return {s: rs for s, rs in out.items() if rs}

    def streams(self) -> list[StreamKey]:
        with self._lock:
            return sorted(s for s, p in self.points.items() if p)

    def count(self) -> int:
        with self._lock:
            return sum(len(p) for p in self.points.values())

    def ping(self) -> bool:
        return not self.fail

    def close(self) -> None:
        pass
