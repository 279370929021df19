"""Recent alert events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from service.api.deps import EngineDep, ReadScope
from service.api.schemas import AlertOut

router = APIRouter(prefix="/v1", tags=["alerts"], dependencies=[ReadScope])


@router.get("/alerts")
def list_alerts(
    engine: EngineDep,
    stream: Annotated[str | None, Query(max_length=1024, description="Only this stream id.")] = None,
    state: Annotated[Literal["firing", "resolved"] | None, Query(description="Only this state.")] = None,
    since: Annotated[datetime | None, Query(description="Only events at or after this time (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[AlertOut]:
    """Recent alert events, newest first, filterable by stream, state and time."""
    alerts = engine.recent_alerts(limit=limit, stream=stream, state=state)
    out = [AlertOut.from_alert(a) for a in alerts]
    if since is not None:
        if since.tzinfo is None:
            raise HTTPException(422, "since must carry a time zone (e.g. 2024-01-01T00:00:00Z)")
        out = [a for a in out if a.time >= since]
    out.sort(key=lambda a: a.ts_ns, reverse=True)
    return out[:limit]

