"""Liveness, readiness (broker, store or spool, models, pipeline threads) and Prometheus metrics.

Details are short reasons: no store error text, URL or filesystem path (those go to the log).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import PipelineDep, ReadScope
from service.api.schemas import CheckOut, HealthOut, ReadyOut
from service.pipeline import Pipeline
from service.records import CHECKS
from service.watchdog import dead_threads

if TYPE_CHECKING:
    from service.ingest.ingester import IngestStatus

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> HealthOut:
    """The process is up and serving HTTP."""
    return HealthOut(status="ok")


@router.get("/readyz", responses={503: {"model": ReadyOut, "description": "Degraded: see the failing checks."}})
def readyz(pipeline: PipelineDep) -> Any:
    """Ready when broker, store (or its spool) and models are all fine; 503 with details otherwise."""
    # While the store is down and readings spool, the service still takes and keeps
    # every reading: 200 with status "degraded", so orchestrators do not restart it.
    checks = readiness(pipeline)
    ready = all(c.ok for c in checks.values())
    degraded = any(c.degraded for c in checks.values())
    body = ReadyOut(
        ready=ready, status="not_ready" if not ready else "degraded" if degraded else "ready", checks=checks
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    dependencies=[ReadScope],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
def metrics(pipeline: PipelineDep) -> Response:
    """Prometheus metrics of this process."""
    m = pipeline.metrics
    if pipeline.engine is not None:
        counts = {"warming": 0, "ok": 0, "firing": 0}
        firing = []
        for s in pipeline.engine.streams():
            counts[str(s.status)] = counts.get(str(s.status), 0) + 1
            if s.checks_firing:
                firing.append((s.id, s.checks_firing, s.score))
        for status, n in counts.items():
            m.streams.labels(status=status).set(n)
        m.set_firing(firing, pipeline.settings.api.metrics_firing_streams, CHECKS)
    checks = readiness(pipeline)
    for name, check in checks.items():
        m.check_ok.labels(check=name).set(int(check.ok))
    m.ready.set(int(all(c.ok for c in checks.values())))
    if pipeline.publisher is not None:
        pipeline.metrics.alert_outbox.set(pipeline.publisher.pending())
    return Response(pipeline.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def readiness(pipeline: Pipeline) -> dict[str, CheckOut]:
    """Each part this process runs, checked now."""
    checks: dict[str, CheckOut] = {}
    if pipeline.ingester is not None:
        st = pipeline.ingester.status()
        if pipeline.ingester.subscribes:  # else HTTP intake only: no broker to check
            detail = "connected" if st.broker_connected else "not connected to the MQTT broker"
            checks["broker"] = CheckOut(ok=st.broker_connected, detail=detail + _session_lost(st))
        store_ok = st.store_ok
        spool_ok = not st.spool_full
        depth = st.spool_readings
        if store_ok:
            detail = "store answers" + (f"; {depth} readings spooled, replaying" if depth else "")
        elif spool_ok:
            detail = f"store unreachable; spooling durably ({depth} readings waiting)"
        else:
            detail = "store unreachable and the spool is full: intake stopped"
        # The spool keeps every reading durable while the store is away: still ready.
        checks["store"] = CheckOut(ok=store_ok or spool_ok, detail=detail, degraded=not store_ok)
    if pipeline.intake is not None:  # an inference process's own subscription
        ok = pipeline.intake.subscribed.is_set()
        checks["broker"] = CheckOut(ok=ok, detail="subscribed to readings" if ok else "not subscribed to the MQTT broker")
    if pipeline.engine is not None:
        n = len(pipeline.engine.models())
        checks["models"] = CheckOut(ok=n > 0, detail=f"{n} model(s) loaded" if n else "no model loaded")
    if pipeline.publisher is not None:
        ok = pipeline.publisher.connected
        pending = pipeline.publisher.pending()
        detail = "connected" if ok else "not connected to the MQTT broker"
        checks["alerts"] = CheckOut(ok=ok, detail=f"{detail}; {pending} alert message(s) in the outbox")
    if not pipeline.started:
        checks["pipeline"] = CheckOut(ok=False, detail="not started")
    else:
        names = pipeline.liveness()
        dead = dead_threads(pipeline.liveness)
        if dead:
            detail = f"dead: {', '.join(dead)}; the process is exiting for its supervisor to restart it"
        else:
            detail = f"alive: {', '.join(sorted(names))}" if names else "no pipeline threads in this process"
        checks["threads"] = CheckOut(ok=not dead, detail=detail)
    return checks


def _session_lost(status: IngestStatus) -> str:
    """A detail, not a failure: the session is back; what it held meanwhile may not be."""
    if not status.sessions_lost:
        return ""
    at = status.last_session_lost
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at is not None else "unknown"
    return (f"; the broker lost our persistent session {status.sessions_lost} time(s), last at {when}: readings "
            "published meanwhile may be gone (check the broker's persistence)")
