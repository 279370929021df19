"""``memory://``: the in-memory twin of a store, for unit tests of pure logic.

``fail`` makes every write raise ``StoreError`` (a store that is down), so batching and
spool logic can be tested without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from service.errors import StoreError
from service.records import Reading, StreamKey


class MemoryStore:
    def __init__(self) -> None:
        self.points: dict[StreamKey, dict[int, float]] = {}
        self.fail = False
        self.writes = 0
        self._lock = threading.Lock()

    def write(self, readings: Sequence[Reading]) -> None:
        with self._lock:
            if self.fail:
                raise StoreError("memory store is set to fail")
            self.writes += 1
            for r in readings:
                self.points.setdefault(r.stream, {})[r.ts_ns] = r.value

    def _sorted(self, stream: StreamKey) -> list[Reading]:
        with self._lock:
            pts = dict(self.points.get(stream, {}))
        return [Reading(stream, t, v) for t, v in sorted(pts.items())]

    def read_range(self, stream: StreamKey, start_ns: int, end_ns: int) -> list[Reading]:
        return [r for r in self._sorted(stream) if start_ns <= r.ts_ns < end_ns]

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
