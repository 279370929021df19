"""Streams: state, warm-up progress and the latest stateful forecast."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep, ReadScope
from service.api.schemas import ErrorOut, ForecastOut, StreamOut, forecast_body
from service.pipeline import EngineLike
from service.streams.status import ForecastLookup

router = APIRouter(prefix="/v1/streams", tags=["streams"], dependencies=[ReadScope])
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "Unknown stream."}}


@router.get("")
def list_streams(
    engine: EngineDep,
    status: Annotated[Literal["warming", "ok", "firing"] | None, Query(description="Only streams in this state.")] = None,
) -> list[StreamOut]:
    """List every stream with its state and warm-up progress."""
    out = [StreamOut.from_status(s) for s in engine.streams()]
    return [s for s in out if status is None or s.status == status]


# Declared before the plain stream route: ids contain "/", so the path converter of the
# plain route would otherwise swallow ".../forecast".
# ``async``: the forecast is read on the event loop without the engine's lock (a seqlock
# read of a few array rows, see Engine.lookup_forecast). Only when a write overlapped every
# attempt does the request wait for the lock, in the threadpool: the lock can be held for
# long (bulk warm-up reads the store inside a tick) and must never stall the event loop.
@router.get(
    "/{stream_id:path}/forecast",
    response_model=ForecastOut,
    responses={**_404, 409: {"model": ErrorOut, "description": "No forecast yet (warming up)."}},
)
async def get_forecast(
    stream_id: str,
    engine: EngineDep,
    request: Request,
    z: Annotated[float | None, Query(gt=0, le=10, description="Band half-width in spreads; settings.api.band_z when empty.")] = None,
) -> Response:
    """Latest stateful forecast of one stream, with bands."""
    band_z = z if z is not None else request.app.state.settings.api.band_z
    found = engine.lookup_forecast(stream_id)
    if found is None:
        found = await run_in_threadpool(_locked_lookup, engine, stream_id)
    if not found.known:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    if found.forecast is None:  # e.g. restored from a checkpoint but not stepped yet, or warming
        raise HTTPException(
            409, f"no forecast yet for {stream_id!r}: warming up ({found.warm_have} / {found.warm_need})"
        )
    return _json(forecast_body(found.forecast, band_z, stream_id))


def _locked_lookup(engine: EngineLike, stream_id: str) -> ForecastLookup:
    status = engine.stream(stream_id)
    if status is None:
        return ForecastLookup(known=False)
    return ForecastLookup(
        known=True, forecast=engine.forecast(stream_id),
        warm_have=int(status.warm_have), warm_need=int(status.warm_need),
    )


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


@router.get("/{stream_id:path}", responses=_404)
def get_stream(stream_id: str, engine: EngineDep) -> StreamOut:
    """One stream: state, warm-up, last value and score."""
    status = engine.stream(stream_id)
    if status is None:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    return StreamOut.from_status(status)
