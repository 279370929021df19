"""InfluxDB 1.x over its HTTP API: ``/write`` line protocol (precision=ns), ``/query`` InfluxQL.

The ``write_lines`` hook is the only part the 2.x/3.x store replaces; queries, parsing and
escaping are shared, so what the tests prove against a real influxd 1.6.7 holds for both.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from service.errors import StoreError, StoreRejected
from service.records import Reading, StreamKey
from service.store import influxql
from service.store.lineproto import LineFormatter
from service.store.rejections import error_for_status

# One query string must stay well below URL/body limits; 200 streams per query is ~20 kB.
_STREAMS_PER_QUERY = 200
HOURLY_RP = "sensorcast_hourly"  # the retention policy of downsampled readings (hourly means)


class InfluxQLStore:
    """Shared 1.x/2.x implementation; subclasses set how lines are written."""

    def __init__(
        self,
        base_url: str,
        database: str,
        measurement: str,
        timeout_s: float,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.database = database
        self.measurement = measurement
        self._fmt = LineFormatter(measurement)
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, auth=auth, headers=headers)
        # Downsampling on (store.downsample_after_days): older ranges are read from the hourly
        # means' retention policy (service/store/retention.py writes them).
        self.downsample_after_s: float | None = None
        self.hourly_rp = HOURLY_RP

    # --- writing -------------------------------------------------------------------------
    def write(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        try:
            body = self._fmt.lines(readings)
        except (UnicodeEncodeError, ValueError, TypeError) as e:  # a lone surrogate in a name, say
            raise StoreRejected(0, "invalid_value", f"cannot format as line protocol: {e}") from e
        self.write_lines(body)

    def write_lines(self, body: bytes) -> None:
        try:
            r = self._http.post("/write", params={"db": self.database, "precision": "ns"}, content=body)
        except httpx.HTTPError as e:
            raise StoreError(f"influxdb write failed: {e!r}") from e
        if r.status_code != 204:
            # 4xx: StoreRejected (permanent), 401/403: StoreAuthError, else StoreError (rejections.py).
            raise error_for_status(r.status_code, r.text, "influxdb write")

    # --- reading -------------------------------------------------------------------------
    def query(self, q: str) -> dict[str, Any]:
        try:
            r = self._http.post("/query", params={"db": self.database, "epoch": "ns"}, data={"q": q})
        except httpx.HTTPError as e:
            raise StoreError(f"influxdb query failed: {e!r}") from e
        if r.status_code != 200:
            raise StoreError(f"influxdb query answered {r.status_code}: {r.text[:300]}")
        body: dict[str, Any] = orjson.loads(r.content)
        return body

    def _series(self, q: str) -> list[tuple[StreamKey, list[list[Any]]]]:
        try:
            return list(influxql.iter_series(self.query(q)))
        except ValueError as e:
            if "database not found" in str(e):
                return []
            raise StoreError(f"influxdb query error: {e}") from e

    def read_range(self, stream: StreamKey, start_ns: int, end_ns: int, limit: int | None = None) -> list[Reading]:
        if limit is not None and limit <= 0:
            return []
        if self.downsample_after_s is None:
            return self._range(stream, start_ns, end_ns, limit)
        # Hourly means before the cut (an hour boundary), raw readings from it on.
        cut = time.time_ns() - int(self.downsample_after_s * 1e9)
        cut -= cut % 3_600_000_000_000
        recent = self._range(stream, max(start_ns, cut), end_ns, limit) if end_ns > cut else []
        if start_ns >= cut or (limit is not None and len(recent) >= limit):
            return recent
        rest = None if limit is None else limit - len(recent)
        return self._range(stream, start_ns, min(end_ns, cut), rest, self.hourly_rp) + recent

    def _range(
        self, stream: StreamKey, start_ns: int, end_ns: int, limit: int | None, rp: str | None = None
    ) -> list[Reading]:
        # LIMIT applies per series (GROUP BY *), so a tagged sibling never uses up this one's.
        q = influxql.range_query(self.measurement, stream, start_ns, end_ns, limit, rp)
        out: list[Reading] = []
        for s, rows in self._series(q):
            if s == stream:
                out += influxql.readings_from(s, rows)
        out.sort(key=lambda r: r.ts_ns)
        return out

    def read_last(self, stream: StreamKey, n: int) -> list[Reading]:
        return self.read_last_many([stream], n).get(stream, [])

    def read_last_many(self, streams: Sequence[StreamKey], n: int) -> dict[StreamKey, list[Reading]]:
        wanted = set(streams)
        out: dict[StreamKey, list[Reading]] = defaultdict(list)
        if n <= 0 or not wanted:
            return {}
        unique = sorted(wanted)
        for i in range(0, len(unique), _STREAMS_PER_QUERY):
            q = influxql.last_query(self.measurement, unique[i : i + _STREAMS_PER_QUERY], n)
            for s, rows in self._series(q):
                if s in wanted:
                    out[s] += influxql.readings_from(s, rows)
        for rs in out.values():
            rs.sort(key=lambda r: r.ts_ns)  # the query ran newest first
        return dict(out)

    def streams(self) -> list[StreamKey]:
        return sorted({s for s, _ in self._series(influxql.streams_query(self.measurement))})

    def ping(self) -> bool:
        try:
            return self._http.get("/ping").status_code == 204
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()


class Influx1Store(InfluxQLStore):
    """InfluxDB 1.x (tested against a real influxd 1.6.7); creates the database if missing."""

    def ensure_database(self) -> None:
        # No admin rights or not reachable yet: the writes will say what is wrong.
        with contextlib.suppress(StoreError):
            self.query(f"CREATE DATABASE {influxql.quote_ident(self.database)}")
