"""Streams: state, warm-up progress and the latest stateful forecast."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep, PipelineDep, ReadScope
from service.api.schemas import ErrorOut, ForecastOut, StreamOut, forecast_body
from service.pipeline import EngineLike
from service.records import Forecast

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
# ``async``: a cached forecast is a dict lookup, answered on the event loop. The engine
# path runs in the threadpool: the engine's lock can be held for long (bulk warm-up
# reads the store inside a tick), and that must never stall the event loop.
@router.get(
    "/{stream_id:path}/forecast",
    response_model=ForecastOut,
    responses={**_404, 409: {"model": ErrorOut, "description": "No forecast yet (warming up)."}},
)
async def get_forecast(
    stream_id: str,
    engine: EngineDep,
    pipeline: PipelineDep,
    request: Request,
    z: Annotated[float | None, Query(gt=0, le=10, description="Band half-width in spreads; settings.api.band_z when empty.")] = None,
) -> Response:
    """Latest stateful forecast of one stream, with bands."""
    band_z = z if z is not None else request.app.state.settings.api.band_z
    fc = pipeline.latest_forecast(stream_id)
    if fc is None:
        fc = await run_in_threadpool(_engine_forecast, engine, stream_id)
    return _json(forecast_body(fc, band_z, stream_id))


def _engine_forecast(engine: EngineLike, stream_id: str) -> Forecast:
    status = engine.stream(stream_id)
    if status is None:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    fc = engine.forecast(stream_id)  # e.g. restored from a checkpoint, not stepped yet
    if fc is None:
        have, need = int(status.warm_have), int(status.warm_need)
        raise HTTPException(409, f"no forecast yet for {stream_id!r}: warming up ({have} / {need})")
    return fc


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


@router.get("/{stream_id:path}", responses=_404)
def get_stream(stream_id: str, engine: EngineDep) -> StreamOut:
    """One stream: state, warm-up, last value and score."""
    status = engine.stream(stream_id)
    if status is None:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    return StreamOut.from_status(status)
