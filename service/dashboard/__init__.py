"""The live dashboard: a static page served by the service, reading its REST API.

``mount(app)`` serves ``static/`` under ``/dashboard/`` and redirects ``/`` there; it adds
no API route (the charts' history, ``GET /v1/points``, is an ordinary v1 route of
``service.api.app``). Everything the page loads is local (uPlot is vendored under
``static/vendor/``): edge gateways are often offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def mount(app: FastAPI) -> None:
    """Serve the dashboard's static files under ``/dashboard/``; ``/`` redirects there."""
    app.mount("/dashboard", StaticFiles(directory=STATIC, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")
