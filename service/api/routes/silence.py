"""Silence a stream: ``PUT/GET/DELETE /v1/streams/{id}/silence``.

While a stream is silenced its alerts are still recorded (history, marked ``silenced``;
store outputs; metrics; the retained state topic) but not notified: no alert event on
MQTT, no webhooks (``Pipeline.on_alert``). The silence is stored durably in the stream
settings file (``service/store/streamsettings.py``) and ends by itself at ``until``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from service.api.deps import PipelineDep, ReadScope, WriteScope, checked_stream_id, settings_store
from service.api.schemas import ErrorOut, StreamOut, ts_to_dt
from service.pipeline import Pipeline
from service.records import NS_PER_S
from service.store.streamsettings import (
    SettingsStoreError,
    Silence,
)

log = logging.getLogger(__name__)
router = APIRouter()

MAX_SILENCE_S = 366 * 86_400.0  # longer is a typo (ms for s, a year too many), not a maintenance window
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "The stream is not silenced."},
    422: {"model": ErrorOut, "description": "Not a stream id, or ``until`` is not a time in the coming year."},
    503: {"model": ErrorOut, "description": "No settings store in this process, or it cannot be written."},
}


class SilenceOut(BaseModel):
    stream_id: str = Field(examples=["pump-1/temperature"])
    until: datetime = Field(description="The silence ends then, by itself.")
    reason: str | None = Field(None, examples=["pump maintenance"])
    set_at: datetime = Field(description="When the silence was set.")


def parse_until(text: str, now_ns: int | None = None) -> int:
    """``until`` (ISO 8601 with a zone, or epoch seconds) as ns; ValueError saying what is wrong."""
    now = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
        if not math.isfinite(seconds) or abs(seconds) > 1e11:
            raise ValueError(f"until={text!r}: epoch seconds out of range")
        ns = int(seconds * NS_PER_S)
    else:
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"until={text[:100]!r} is neither ISO 8601 (2030-01-01T08:00:00Z) nor epoch seconds") from None
        if t.tzinfo is None:
            raise ValueError(f"until={text[:100]!r} must carry a time zone (e.g. 2030-01-01T08:00:00Z or +02:00)")
        delta = t - datetime(1970, 1, 1, tzinfo=UTC)
        ns = (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000
    if ns <= now:
        raise ValueError(f"until={text[:100]!r} is in the past ({ts_to_dt(ns).isoformat()}); a silence must end "
                         "after now (DELETE ends one at once)")
    if ns - now > MAX_SILENCE_S * NS_PER_S:
        raise ValueError(f"until={text[:100]!r} is more than {MAX_SILENCE_S / 86_400:.0f} days ahead; silence for "
                         "less, or change the stream's alert rules (PUT /v1/streams/{id}/settings)")
    return ns


def _out(s: Silence) -> SilenceOut:
    return SilenceOut(stream_id=s.stream, until=ts_to_dt(s.until_ns), reason=s.reason, set_at=ts_to_dt(s.set_ns))


def with_silence(out: StreamOut, pipeline: Pipeline) -> StreamOut:
    """``out`` with ``silenced_until`` filled in from the stream settings."""
    until = None if pipeline.stream_settings is None else pipeline.stream_settings.silenced_until(out.id)
    if until is not None:
        out.silenced_until = ts_to_dt(until)
    return out


@router.put("/{stream_id:path}/silence", dependencies=[WriteScope], responses=_ERRORS)
def put_silence(
    stream_id: str,
    pipeline: PipelineDep,
    until: Annotated[str, Query(max_length=64, description="When the silence ends: ISO 8601 with a zone "
                                "(2030-01-01T08:00:00Z) or epoch seconds; after now, within a year.")],
    reason: Annotated[str | None, Query(max_length=500, description="Why (shown with the silence).")] = None,
) -> SilenceOut:
    """Silence the stream's notifications until ``until`` (write scope): its alerts are still
    recorded (history, marked ``silenced``) and its retained state topic still updates, but no
    alert event is published and no webhook is called. Replaces a previous silence; stored
    durably; ends by itself. A stream not served yet may be silenced ahead."""
    store = settings_store(pipeline)
    sid = checked_stream_id(stream_id)
    try:
        until_ns = parse_until(until)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    try:
        s = store.silence(sid, until_ns, reason)
    except SettingsStoreError as e:
        log.warning("silence of %r: %s", sid[:200], e)  # the path stays in the log
        raise HTTPException(503, "the stream settings cannot be written right now (details in the service log)") from None
    log.info("stream %s silenced until %s%s", sid, ts_to_dt(until_ns).isoformat(), f" ({reason})" if reason else "")
    return _out(s)


@router.get("/{stream_id:path}/silence", dependencies=[ReadScope], responses=_ERRORS)
def get_silence(stream_id: str, pipeline: PipelineDep) -> SilenceOut:
    """The stream's silence while it applies (404 when it has none, or it has run out)."""
    sid = checked_stream_id(stream_id)
    s = settings_store(pipeline).silence_of(sid)
    if s is None:
        raise HTTPException(404, f"stream {sid!r} is not silenced")
    return _out(s)


@router.delete("/{stream_id:path}/silence", dependencies=[WriteScope], status_code=204,
               responses={204: {"description": "Not silenced (any more)."}, **_ERRORS})
def delete_silence(stream_id: str, pipeline: PipelineDep) -> Response:
    """End the stream's silence now (write scope); 204 whether or not it was silenced."""
    sid = checked_stream_id(stream_id)
    try:
        before = settings_store(pipeline).unsilence(sid)
    except SettingsStoreError as e:
        log.warning("silence of %r: %s", sid[:200], e)
        raise HTTPException(503, "the stream settings cannot be written right now (details in the service log)") from None
    if before is not None:
        log.info("stream %s: silence ended", sid)
    return Response(status_code=204)
