"""Alert history: every alert event, from the persisted history (service/store/alertlog.py),
and its acknowledgement (``POST /v1/alerts/{id}/ack``, write scope)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service.api.deps import PipelineDep, ReadScope, WriteScope
from service.api.schemas import AlertOut, ErrorOut, page_headers, ts_to_dt
from service.pipeline import Pipeline
from service.records import CHECKS, KINDS, NS_PER_S
from service.store.alertlog import AlertLog, Cursor, HistoryError
from service.store.alertlog import Query as HistoryQuery

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["alerts"], dependencies=[ReadScope])

Check = Literal["anomaly", "stuck", "silent", "out_of_range", "rate_of_change", "predicted_breach"]
Kind = Literal["spike", "level_shift", "drift", "variance", "multivariate", "stuck", "silent", "out_of_range",
               "rate_of_change", "predicted_breach"]
# Spelt out for the OpenAPI document and mypy; the records' lists are the truth.
assert get_args(Check) == CHECKS and get_args(Kind) == KINDS, "records.CHECKS/KINDS changed: update these"

_PAGE_HEADERS = page_headers("older events", "before")


def _ns(t: datetime | None, name: str) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        raise HTTPException(422, f"{name} must carry a time zone (e.g. 2024-01-01T00:00:00Z)")
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)  # exact, no float rounding
    ns = (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000
    return max(-(2**63), min(2**63 - 1, ns))  # beyond 1677-2262: as far as the stored times can go


@router.get(
    "/alerts",
    responses={200: {"description": "One page of alert events, newest first.", "headers": _PAGE_HEADERS},
               422: {"model": ErrorOut, "description": "Invalid parameter or cursor."},
               503: {"model": ErrorOut, "description": "No alert history in this process, or it cannot be read."}},
)
async def list_alerts(
    pipeline: PipelineDep,
    request: Request,
    response: Response,
    stream: Annotated[str | None, Query(max_length=1024, description="Only this stream id.")] = None,
    state: Annotated[Literal["firing", "resolved"] | None, Query(description="Only this state.")] = None,
    check: Annotated[Check | None, Query(description="Only this check (detector).")] = None,
    kind: Annotated[Kind | None, Query(description="Only this kind.")] = None,
    since: Annotated[datetime | None, Query(description="Only events at or after this time (ISO 8601, with zone).")] = None,
    until: Annotated[datetime | None, Query(description="Only events before this time (ISO 8601, with zone).")] = None,
    acked: Annotated[bool | None, Query(description="Only acknowledged (true) or unacknowledged (false) events.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Events per page.")] = 100,
    before: Annotated[
        str | None, Query(max_length=200, description="The X-Next-Cursor of the previous page; empty: the newest.")
    ] = None,
) -> list[AlertOut]:
    """Alert events, newest first (by event time), filterable, one page at a time.

    Read from the persisted history (``alerts.history_path``), so it survives restarts. When
    older events follow, the response carries ``X-Next-Cursor`` (and a ``Link`` header with
    the next page's URL): pass it as ``before``. The cursor is a position, so events written
    between pages do not shift the next page.
    """
    history = _history(pipeline)
    try:
        cursor = Cursor.parse(before) if before else None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    q = HistoryQuery(stream=stream, state=state, check=check, kind=kind, since_ns=_ns(since, "since"),
                     until_ns=_ns(until, "until"), acked=acked)
    try:
        rows, nxt = await run_in_threadpool(history.rows, limit, q, cursor)
    except HistoryError as e:
        log.warning("GET /v1/alerts: %s", e)
        raise HTTPException(503, "the alert history cannot be read right now (details in the service log)") from None
    if nxt is not None:
        token = nxt.token()
        response.headers["X-Next-Cursor"] = token
        query = urlencode({**request.query_params, "before": token})
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return [AlertOut.from_row(r) for r in rows]


def _history(pipeline: Pipeline) -> AlertLog:
    if pipeline.alert_log is None:  # the reason holds the file's path: it stays in the log
        reason = ("the history file could not be opened (details in the service log)" if pipeline.history_error
                  else "this process does not run the 'inference' role")
        raise HTTPException(503, f"no alert history: {reason}")
    return pipeline.alert_log


class AckIn(BaseModel):
    by: str | None = Field(None, max_length=200, description="Who acknowledges (free text: a name, a team).")
    note: str | None = Field(None, max_length=2000, description="Why, or what is being done.")


class AckOut(BaseModel):
    id: int = Field(description="The event's id.")
    stream_id: str
    state: Literal["firing", "resolved"]
    time: datetime = Field(description="The event's time.")
    acked_at: datetime = Field(description="When it was first acknowledged.")
    acked_by: str | None
    ack_note: str | None


@router.post(
    "/alerts/{alert_id}/ack",
    dependencies=[WriteScope],
    responses={404: {"model": ErrorOut, "description": "No alert event with this id (never, or pruned)."},
               503: {"model": ErrorOut, "description": "No alert history in this process, or it cannot be written."}},
)
def ack_alert(
    pipeline: PipelineDep,
    alert_id: Annotated[int, Path(ge=1, lt=2**63, description="The event's ``id`` in GET /v1/alerts.")],
    body: Annotated[AckIn | None, Body(openapi_examples={
        "ack": {"summary": "who and why", "value": {"by": "ops on call", "note": "valve replaced"}}})] = None,
) -> AckOut:
    """Acknowledge one alert event (write scope), durably. Acking again changes nothing and
    answers the first ack: ``acked_at`` and ``acked_by`` stay as they were."""
    history = _history(pipeline)
    body = body or AckIn()
    try:
        row = history.ack(alert_id, body.by, body.note)
    except HistoryError as e:
        log.warning("POST /v1/alerts/%d/ack: %s", alert_id, e)
        raise HTTPException(503, "the alert history cannot be written right now (details in the service log)") from None
    if row is None or row.acked_ns is None:  # None: the id was never written, or pruned
        raise HTTPException(404, f"no alert event with id {alert_id} (unknown, or pruned from the history)")
    log.info("alert %d of %s acknowledged by %s", row.id, row.alert.stream_id, row.acked_by or "(unnamed)")
    return AckOut(id=row.id, stream_id=row.alert.stream_id, state=row.alert.state, time=ts_to_dt(row.alert.ts_ns),
                  acked_at=ts_to_dt(row.acked_ns), acked_by=row.acked_by, ack_note=row.ack_note)
