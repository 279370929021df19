"""Recent stored readings of one stream, for charts (the dashboard's history).

``GET /v1/points/{stream_id}?last=N`` (or ``?since=...``) reads the store, not the
engine, so it shows what was ingested even for streams no model serves. Columnar
output (``times_ms``, ``values``) is what chart libraries take without reshaping.
Its own prefix keeps it clear of ``/v1/streams/{stream_id:path}``, whose path
converter would swallow a ``.../points`` suffix.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service.api.deps import PipelineDep, ReadScope
from service.api.schemas import ErrorOut
from service.records import NS_PER_S, StreamKey

router = APIRouter(prefix="/v1/points", tags=["streams"], dependencies=[ReadScope])

MAX_POINTS = 10_000


class PointsOut(BaseModel):
    stream_id: str = Field(examples=["pump-1/temperature"])
    times_ms: list[int] = Field(description="Epoch milliseconds, oldest first.")
    values: list[float] = Field(description="Stored values, same order.")
    unit: str | None = Field(None, examples=["°C"], description="The stream's unit (as in GET /v1/streams); null: unknown.")


@router.get(
    "/{stream_id:path}",
    responses={
        # The path converter does not match a newline: such an id never reaches the route.
        404: {"model": ErrorOut, "description": "No such route (a stream id with a line break cannot match)."},
        503: {"description": "No store in this process, or it failed."},
    },
)
async def get_points(
    stream_id: str,
    pipeline: PipelineDep,
    last: Annotated[int, Query(ge=1, le=MAX_POINTS, description="The newest N readings (with since: the newest N after it).")] = 500,
    since: Annotated[datetime | None, Query(description="Only readings after this time (ISO 8601, with zone).")] = None,
) -> PointsOut:
    """Recent stored readings of one stream, oldest first."""
    try:
        key = StreamKey.parse(stream_id)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    store = pipeline.store
    if store is None:
        raise HTTPException(503, "this process has no store (roles without ingest or inference)")
    # A StoreError goes to the app's handler: logged in full, 503 with a short reason.
    if since is not None:
        if since.tzinfo is None:
            raise HTTPException(422, "since must carry a time zone (e.g. 2024-01-01T00:00:00Z)")
        delta = since - datetime(1970, 1, 1, tzinfo=UTC)  # exact, no float rounding
        start = (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000 + 1
        # Far future end: the store's range is half-open and "now" may lag the readings.
        # The store applies the limit (SQL/InfluxQL LIMIT, newest first): a since far in
        # the past costs at most ``last`` rows, never the whole history.
        rows = await run_in_threadpool(store.read_range, key, start, 2**62, limit=last)
    else:
        rows = await run_in_threadpool(store.read_last, key, last)
    rows = [r for r in rows if math.isfinite(r.value)]  # JSON has no NaN
    return PointsOut(
        stream_id=key.id,
        times_ms=[r.ts_ns // 1_000_000 for r in rows],
        values=[r.value for r in rows],
        unit=pipeline.units.unit_of(key.id),
    )
