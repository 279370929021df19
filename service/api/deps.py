"""Dependencies the routes declare, as ``Annotated`` aliases (``EngineDep``, ``WriteScope``...).

The pipeline lives on ``app.state`` (opened in the lifespan); a part this process does
not run (see ``settings.roles``) answers 503 saying which role is missing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from service.api.auth import ApiKeys
from service.pipeline import Pipeline
from service.ports import DecoderLike, EngineLike, IngesterLike
from service.store.streamsettings import StreamSettings, check_stream_id

# Two names for the one header, so the OpenAPI document can say which scope a route
# needs (and drop the one whose key is not configured).
_read_key = APIKeyHeader(
    name="X-API-Key", scheme_name="ReadKey", auto_error=False,
    description="The read key (or the write key) in X-API-Key.",
)
_write_key = APIKeyHeader(
    name="X-API-Key", scheme_name="WriteKey", auto_error=False, description="The write key in X-API-Key."
)


async def get_pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline | None = getattr(request.app.state, "pipeline", None)
    if pipeline is None:
        raise HTTPException(503, "the service is starting or stopping")
    return pipeline


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]


async def get_engine(pipeline: PipelineDep) -> EngineLike:
    if pipeline.engine is None:
        raise HTTPException(503, "this process does not run the 'inference' role")
    return pipeline.engine


async def get_ingester(pipeline: PipelineDep) -> IngesterLike:
    if pipeline.ingester is None:
        raise HTTPException(503, "this process does not run the 'ingest' role")
    return pipeline.ingester


async def get_decoder(pipeline: PipelineDep) -> DecoderLike:
    if pipeline.decoder is None:
        raise HTTPException(503, "no decoder configured")
    return pipeline.decoder


EngineDep = Annotated[EngineLike, Depends(get_engine)]
IngesterDep = Annotated[IngesterLike, Depends(get_ingester)]
DecoderDep = Annotated[DecoderLike, Depends(get_decoder)]


def _keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys
    return keys


async def require_read(request: Request, key: Annotated[str | None, Security(_read_key)]) -> None:
    _keys(request).check(key, "read")


async def require_write(request: Request, key: Annotated[str | None, Security(_write_key)]) -> None:
    _keys(request).check(key, "write")


ReadScope = Depends(require_read)
WriteScope = Depends(require_write)


def settings_store(pipeline: Pipeline) -> StreamSettings:
    """The stream settings file (per-stream rules and silences), or 503 without one."""
    if pipeline.stream_settings is None:
        raise HTTPException(503, "this process does not run the 'inference' role: no stream settings")
    return pipeline.stream_settings


def checked_stream_id(stream_id: str) -> str:
    """A stream id from a path, checked as the settings file keys it (422 when malformed)."""
    try:
        return check_stream_id(stream_id)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
