"""InfluxQL reads shared by the 1.x and 2.x/3.x stores: quoting, queries, response parsing.

Every query groups by all tags (``GROUP BY *``) and keeps only series whose tag set equals
the stream's exactly, so a stream without extra tags never picks up the points of one
that has them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from service.records import Reading, StreamKey


def quote_ident(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def stream_condition(stream: StreamKey) -> str:
    parts = [f'"device" = {quote_string(stream.device)}', f'"quantity" = {quote_string(stream.quantity)}']
    parts += [f"{quote_ident(k)} = {quote_string(v)}" for k, v in stream.tags]
    return "(" + " AND ".join(parts) + ")"


def stream_of(tags: dict[str, str]) -> StreamKey | None:
    """The stream a result series belongs to; None for points written without our tags."""
    device, quantity = tags.get("device", ""), tags.get("quantity", "")
    if not device or not quantity:
        return None
    extra = tuple(sorted((k, v) for k, v in tags.items() if k not in ("device", "quantity") and v))
    return StreamKey(device, quantity, extra)


def iter_series(body: dict[str, Any]) -> Iterator[tuple[StreamKey, list[list[Any]]]]:
    """(stream, rows) of every series in a ``/query?epoch=ns`` JSON answer; raises on errors."""
    for result in body.get("results", []):
        if "error" in result:
            raise ValueError(result["error"])
        for series in result.get("series", []):
            stream = stream_of(series.get("tags") or {})
            if stream is not None:
                yield stream, series.get("values") or []


def readings_from(stream: StreamKey, rows: list[list[Any]]) -> list[Reading]:
    return [Reading(stream, int(t), float(v)) for t, v in rows if v is not None]


def range_query(
    measurement: str, stream: StreamKey, start_ns: int, end_ns: int, limit: int | None = None, rp: str | None = None
) -> str:
    """Points in ``[start_ns, end_ns)``; with ``limit``, only the newest ``limit`` (newest first).
    ``rp``: from that retention policy (the hourly means), else the default one."""
    source = quote_ident(measurement) if rp is None else f"{quote_ident(rp)}.{quote_ident(measurement)}"
    q = (
        f'SELECT "value" FROM {source} WHERE {stream_condition(stream)} '
        f"AND time >= {int(start_ns)} AND time < {int(end_ns)} GROUP BY *"
    )
    return q if limit is None else f"{q} ORDER BY time DESC LIMIT {int(limit)}"


def last_query(measurement: str, streams: Sequence[StreamKey], n: int) -> str:
    cond = " OR ".join(stream_condition(s) for s in streams)
    return (
        f'SELECT "value" FROM {quote_ident(measurement)} WHERE {cond} '
        f"GROUP BY * ORDER BY time DESC LIMIT {int(n)}"
    )


def streams_query(measurement: str) -> str:
    return f'SELECT last("value") FROM {quote_ident(measurement)} GROUP BY *'
