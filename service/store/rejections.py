"""Which store answers are permanent, and how to find the points a store refuses.

Classification of an HTTP answer to a write (InfluxDB 1.x ``/write``, 2.x ``/api/v2/write``):

| answer | class | why |
|---|---|---|
| 204 | success | |
| 400, 413, 422 and other 4xx | ``StoreRejected`` (permanent) | the same points would be refused again: a series key over 64 KiB, a point beyond the retention policy, a field type conflict, a series limit, a body too large (413: split, so it goes through) |
| 401, 403 | ``StoreAuthError`` (transient) | our credentials: an operator fixes them; nothing may be lost meanwhile |
| 404 | ``StoreError`` (transient) | database/bucket not found: configuration, not the points |
| 408, 429 | ``StoreError`` (transient) | timeouts and throttling |
| 5xx, timeouts, connection errors, anything else | ``StoreError`` (transient) | retried; the batch waits in the spool |

InfluxDB 1.x answers 400 ``partial write: ... dropped=N`` after writing the points it
accepted. ``isolate`` then writes halves again: points are identified by series and
timestamp, so a re-write overwrites with the same value (idempotent) and never doubles.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from service.errors import StoreAuthError, StoreError, StoreRejected
from service.records import Reading

# A bisect of n points with one bad point costs 1 + 2*ceil(log2 n) requests (27 for 5,000);
# k bad points about 2k*log2(n/k). Past this many requests for one batch, what is still
# unresolved is dead-lettered whole (kind "unisolated") rather than holding up ingestion.
MAX_ISOLATE_REQUESTS = 1000
DETAIL_CHARS = 500

_TRANSIENT_4XX = frozenset({404, 408, 429})
# Substrings of the store's reason -> metric label; checked in order, first match wins.
_KINDS = (
    ("max key length exceeded", "series_key_too_long"),
    ("beyond retention policy", "retention"),
    ("field type conflict", "field_type_conflict"),
    ("max-series-per-database", "series_limit"),
    ("max-values-per-tag", "series_limit"),
    ("unable to parse", "unparseable"),
)
# Every label sensorcast_store_rejected_total{reason} can carry (bounded cardinality).
KINDS = frozenset({k for _, k in _KINDS} | {"too_large", "invalid_value", "refused", "unisolated"})
_UNPARSED_LINE = re.compile(r"unable to parse '([^\n]*)': ")
_DROPPED = re.compile(r"dropped=(\d+)")


def summarize(text: str) -> str:
    """The store's reason, short: JSON ``{"error"|"message": ...}`` unwrapped, echoed lines elided."""
    text = text.strip()
    try:
        body = orjson.loads(text)
        if isinstance(body, dict):
            text = str(body.get("error") or body.get("message") or text)
    except orjson.JSONDecodeError:
        pass
    # influxd echoes each unparseable line whole (a 64 KiB series key makes a 90 KB answer).
    text = _UNPARSED_LINE.sub(lambda m: f"unable to parse a {len(m.group(1))}-byte line: ", text)
    return text[:DETAIL_CHARS]


def kind_of(status: int, detail: str) -> str:
    for needle, kind in _KINDS:
        if needle in detail:
            return kind
    return "too_large" if status == 413 else "refused"


def error_for_status(status: int, text: str, what: str) -> StoreError:
    """The exception for a non-success HTTP answer to a write (table in the module docstring)."""
    detail = summarize(text)
    if status in (401, 403):
        return StoreAuthError(f"{what}: {status} (credentials refused; fix store.password_file/token_file): {detail}")
    if 400 <= status < 500 and status not in _TRANSIENT_4XX:
        m = _DROPPED.search(detail)
        return StoreRejected(status, kind_of(status, detail), detail, int(m.group(1)) if m else None)
    return StoreError(f"{what} answered {status}: {detail}")


@dataclass(frozen=True, slots=True)
class Rejection:
    reading: Reading
    status: int
    kind: str
    detail: str


def isolate(
    write: Callable[[Sequence[Reading]], None],
    readings: Sequence[Reading],
    first: StoreRejected,
    max_requests: int = MAX_ISOLATE_REQUESTS,
) -> list[Rejection]:
    """Bisect a batch the store refused (``first``) down to the points it refuses.

    Writes halves depth-first, left before right, so among points of the same series and
    timestamp the later one still lands last. Returns the refused points; everything else
    has been written. A transient ``StoreError`` propagates: the caller retries the whole
    batch later (re-writes are idempotent) and nothing has been dead-lettered yet.
    """
    out: list[Rejection] = []
    budget = [max_requests]

    def split(batch: Sequence[Reading], err: StoreRejected) -> None:
        # One point, or the store says it dropped every point: nothing left to separate.
        if len(batch) == 1 or (err.dropped is not None and err.dropped >= len(batch)):
            out.extend(Rejection(r, err.status, err.kind, err.detail) for r in batch)
            return
        mid = len(batch) // 2
        for half in (batch[:mid], batch[mid:]):
            if budget[0] <= 0:
                # May hold good points (with partial writes, already stored): kept, not lost.
                detail = f"not isolated: {max_requests} write requests spent on this batch; last answer: {err.detail}"
                out.extend(Rejection(r, err.status, "unisolated", detail[:DETAIL_CHARS]) for r in half)
                continue
            budget[0] -= 1
            try:
                write(half)
            except StoreRejected as e:
                split(half, e)

    split(readings, first)  # recursion depth is log2(len(readings))
    return out
