"""The live dashboard: a static page served by the service, reading its REST API.

``mount(app)`` serves ``static/`` under ``/dashboard/``, redirects ``/`` there, and adds
the read-only ``/v1/points`` route the charts need for history (unless the app already
has it). Everything the page loads is local (uPlot is vendored under
``static/vendor/``): edge gateways are often offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def mount(app: FastAPI) -> None:
    """Add the dashboard (``/dashboard/``, ``/`` redirects) and the points route to ``app``."""
    from service.api.routes import points

    paths = {getattr(r, "path", None) for r in app.router.routes}
    if "/v1/points/{stream_id:path}" not in paths:
        app.include_router(points.router)
    app.mount("/dashboard", StaticFiles(directory=STATIC, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")
