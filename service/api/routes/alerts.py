"""Alert history: every alert event, from the persisted history (service/store/alertlog.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import PipelineDep, ReadScope
from service.api.schemas import AlertOut, ErrorOut, page_headers
from service.records import CHECKS, KINDS, NS_PER_S
from service.store.alertlog import Cursor, HistoryError
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
    history = pipeline.alert_log
    if history is None:  # the reason holds the file's path: it stays in the log
        reason = ("the history file could not be opened (details in the service log)" if pipeline.history_error
                  else "this process does not run the 'inference' role")
        raise HTTPException(503, f"no alert history: {reason}")
    try:
        cursor = Cursor.parse(before) if before else None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    q = HistoryQuery(stream=stream, state=state, check=check, kind=kind, since_ns=_ns(since, "since"),
                     until_ns=_ns(until, "until"))
    try:
        alerts, nxt = await run_in_threadpool(history.page, limit, q, cursor)
    except HistoryError as e:
        log.warning("GET /v1/alerts: %s", e)
        raise HTTPException(503, "the alert history cannot be read right now (details in the service log)") from None
    if nxt is not None:
        token = nxt.token()
        response.headers["X-Next-Cursor"] = token
        query = urlencode({**request.query_params, "before": token})
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return [AlertOut.from_alert(a) for a in alerts]
