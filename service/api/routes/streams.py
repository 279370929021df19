"""Streams: state, warm-up progress and the latest stateful forecast."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep, PipelineDep, ReadScope, WriteScope
from service.api.routes import silence, stream_settings
from service.api.schemas import (
    LIST_DEFAULT,
    LIST_MAX,
    ErrorOut,
    ForecastOut,
    StreamOut,
    forecast_body,
    page_headers,
    with_units,
)
from service.errors import ModelError
from service.pipeline import Pipeline
from service.ports import EngineLike
from service.streams.binding import NO_MODEL
from service.streams.status import ForecastLookup

# Scopes per route: the settings routes below write.
router = APIRouter(prefix="/v1/streams", tags=["streams"])
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "Unknown stream."}}


_PAGE_HEADERS = page_headers("more streams", "cursor")


@router.get(
    "",
    dependencies=[ReadScope],
    responses={200: {"description": "One page of streams, in id order.", "headers": _PAGE_HEADERS},
               422: {"model": ErrorOut, "description": "Invalid parameter or cursor."}},
)
def list_streams(
    engine: EngineDep,
    pipeline: PipelineDep,
    request: Request,
    response: Response,
    status: Annotated[
        Literal["warming", "ok", "firing", "no_model"] | None,
        Query(description="Only streams in this state (no_model: readings come, no model serves them)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_MAX, description=f"Streams per page (at most {LIST_MAX}).")] = LIST_DEFAULT,
    cursor: Annotated[
        str | None, Query(max_length=16_384, description="The X-Next-Cursor of the previous page; empty: the first page.")
    ] = None,
) -> list[StreamOut]:
    """Streams in id order with their state and warm-up progress, one page at a time.

    A page holds up to ``limit`` streams. When more follow, the response carries an
    ``X-Next-Cursor`` header (and a ``Link`` header with the next page's URL): pass it as
    ``cursor``. The cursor is a position in id order, so streams that come or go between
    pages do not shift the others.
    """
    page, last = engine.streams_page(limit, _after(cursor), status)
    if last is not None:
        token = base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")
        response.headers["X-Next-Cursor"] = token
        query = urlencode({**request.query_params, "cursor": token})
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return [silence.with_silence(_with_units(StreamOut.from_status(s), s, engine, pipeline), pipeline) for s in page]


def _with_units(out: StreamOut, s: Any, engine: EngineLike, pipeline: Pipeline) -> StreamOut:
    """``out`` with its unit (service/units.py); a multivariate stream's per input feature of its model."""
    features: list[str] = []
    if s.quantity == "*" and s.model:
        try:
            features = engine.registry.get(s.model, s.model_version).manifest.features
        except ModelError:  # unloaded meanwhile: the unit of `feature` alone
            features = [s.feature] if s.feature else []
    return with_units(out, pipeline.units, features)


def _after(cursor: str | None) -> str | None:
    """The stream id a cursor stands for (it is the base64url of the last id of a page)."""
    if not cursor:
        return None
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPException(422, "cursor is not one this API gave out (use X-Next-Cursor as it is)") from None


# Declared before the plain stream route: ids contain "/", so the path converter of the
# plain route would otherwise swallow ".../forecast".
# ``async``: the forecast is read on the event loop without the engine's lock (a seqlock
# read of a few array rows, see Engine.lookup_forecast). Only when a write overlapped every
# attempt does the request wait for the lock, in the threadpool: a tick over many streams
# holds it for a while (~0.2 s at 100k streams) and must never stall the event loop.
@router.get(
    "/{stream_id:path}/forecast",
    dependencies=[ReadScope],
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
        raise HTTPException(404, _unknown(engine, stream_id))
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


# GET/PUT/DELETE .../settings and .../silence: before the plain stream route, for the same reason.
router.include_router(stream_settings.router)
router.include_router(silence.router)


@router.get("/{stream_id:path}", dependencies=[ReadScope], responses=_404)
def get_stream(stream_id: str, engine: EngineDep, pipeline: PipelineDep) -> StreamOut:
    """One stream: state, warm-up, last value and score, and until when it is silenced."""
    status = engine.stream(stream_id)
    if status is None:
        raise HTTPException(404, _unknown(engine, stream_id))
    return silence.with_silence(_with_units(StreamOut.from_status(status), status, engine, pipeline), pipeline)


def _unknown(engine: EngineLike, stream_id: str) -> str:
    if stream_id in engine.unserved():
        return (f"stream {stream_id!r}: {NO_MODEL} (its readings are stored, not forecast; bind a model with "
                "models.bindings or train one with `sensorcast train --streams`)")
    return f"unknown stream {stream_id!r}"


@router.delete(
    "/{stream_id:path}", dependencies=[WriteScope], status_code=204,
    responses={204: {"description": "Forgotten."}, **_404},
)
def delete_stream(stream_id: str, engine: EngineDep, pipeline: PipelineDep) -> Response:
    """Forget a stream (write scope): its live state, warm-up, pending readings, checkpoint
    entry and the unit its readings gave. Its history stays in the store: a later reading
    creates the stream again, warmed from there. Its own settings and silence
    (``.../settings``, ``.../silence``) stay too."""
    if not engine.forget_stream(stream_id):
        raise HTTPException(404, _unknown(engine, stream_id))
    pipeline.units.forget(stream_id)
    return Response(status_code=204)
