"""``GET /v1/points/{id}?since=...`` reads at most ``last`` rows from the store (issue #12)."""

from __future__ import annotations

from pathlib import Path

from service.api.routes.points import MAX_POINTS
from service.records import Reading, StreamKey
from tests.apiharness import T0, harness

SEC = 1_000_000_000


def test_since_pushes_the_limit_into_the_store(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        key = StreamKey("pump-1", "temperature")
        h.store.write([Reading(key, T0 + i * SEC, float(i)) for i in range(20_000)])
        calls: list[tuple[int, int | None]] = []
        real = h.store.read_range

        def spy(stream: StreamKey, start: int, end: int, limit: int | None = None) -> list[Reading]:
            rows = real(stream, start, end, limit)
            calls.append((len(rows), limit))
            return rows

        h.store.read_range = spy  # type: ignore[method-assign]
        r = h.client.get("/v1/points/pump-1/temperature", params={"since": "1970-01-01T00:00:00Z", "last": 7})
        assert r.status_code == 200
        assert r.json()["values"] == [float(i) for i in range(19_993, 20_000)]  # the newest 7, oldest first
        assert calls == [(7, 7)]  # the store returned 7 rows, not 20,000 sliced afterwards
        r = h.client.get("/v1/points/pump-1/temperature", params={"since": "1970-01-01T00:00:00Z"})
        assert len(r.json()["values"]) == 500 and calls[-1] == (500, 500)  # the default cap
        too_many = h.client.get("/v1/points/pump-1/temperature", params={"since": "1970-01-01T00:00:00Z",
                                                                         "last": MAX_POINTS + 1})
        assert too_many.status_code == 422
