"""The FastAPI application: routers, error handlers, body limit, lifespan.

``create_app(settings)`` builds and owns a pipeline in its lifespan (what ``serve``
does); tests pass their own ``pipeline`` and keep ownership of it.

Building the app refuses open write routes on a non-loopback address (``check_exposure``)
and logs which routes are open. Error bodies carry a short reason: store errors (URLs,
spool paths, the store's own text) go to the log only. ``/docs`` (Swagger UI) and
``/redoc`` load their scripts from this service (``_add_offline_docs``), not from a CDN.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html as get_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from service.api.auth import ApiKeys, AuthError, check_exposure, is_loopback
from service.api.limits import BodyLimitMiddleware
from service.api.routes import alerts, health, models, points, predict, readings, streams
from service.api.schemas import ErrorOut
from service.config import Settings
from service.dashboard import mount as mount_dashboard
from service.errors import DecodeError, ModelError, SpoolFullError, StoreError
from service.metrics import Metrics
from service.pipeline import Pipeline

log = logging.getLogger(__name__)

# The Swagger UI and ReDoc bundles that the fastapi-offline package ships (a dependency,
# so pip keeps them current; nothing is copied into this repository). Only its files are
# used, not its FastAPIOffline factory: this app builds its own FastAPI.
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/docs/assets"

DESCRIPTION = """\
Forecasts and anomaly alerts for sensor streams. Stream ids are `device/quantity`
(plus `;tag=value` pairs) and are used as they are in paths: `/v1/streams/pump-1/temperature`.
When API keys are configured, send one in the `X-API-Key` header: reading routes need the
read or write key, mutating routes (`POST /v1/readings`, `POST /v1/models/reload`, `PUT`/`DELETE
/v1/streams/{id}/settings`) the write key.
"""


def create_app(
    settings: Settings,
    pipeline: Pipeline | None = None,
    metrics: Metrics | None = None,
    on_started: Callable[[], object] | None = None,
    on_fatal: Callable[[list[str]], object] | None = None,
) -> FastAPI:
    """``on_started`` runs once the app's own pipeline has started (serve: the GC policy);
    ``on_fatal`` is given to it for dead threads (serve: stop and exit 70)."""
    owned = pipeline is None
    keys = ApiKeys.from_settings(settings.api)
    check_exposure(settings.api, keys)  # before anything starts: a refused start does nothing

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            built = await run_in_threadpool(Pipeline.build, settings, metrics)
            built.on_fatal = on_fatal
            await run_in_threadpool(built.start)
            app.state.pipeline = built
            if on_started is not None:
                on_started()
        try:
            yield
        finally:
            if owned and app.state.pipeline is not None:
                running: Pipeline = app.state.pipeline
                app.state.pipeline = None  # new requests get 503 while we stop
                await run_in_threadpool(running.stop)

    app = FastAPI(
        title="sensorcast",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Replaced by _add_offline_docs: FastAPI's own pages load their scripts from a CDN,
        # so /docs was blank on an offline gateway.
        docs_url=None,
        redoc_url=None,
        # Every error, ours or pydantic's, has the one shape {"detail": ...}.
        responses={
            401: {"model": ErrorOut, "description": "No or unknown API key."},
            403: {"model": ErrorOut, "description": "The API key lacks the scope."},
            413: {"model": ErrorOut, "description": "Request body too large."},
            422: {"model": ErrorOut, "description": "The request is not valid: what and where."},
            503: {"model": ErrorOut, "description": "A part of the service is not available."},
        },
    )
    app.state.settings = settings
    app.state.pipeline = pipeline
    app.state.api_keys = keys
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    # points last: the OpenAPI document keeps the order it had when the dashboard added it.
    for module in (streams, predict, readings, alerts, models, health, points):
        app.include_router(module.router)
    _log_access(app, keys, settings.api.host)
    _add_error_handlers(app)
    _honest_security_in_openapi(app, app.state.api_keys)
    _add_offline_docs(app)
    mount_dashboard(app)
    return app


def _add_offline_docs(app: FastAPI) -> None:
    """``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` as FastAPI serves them, with every
    asset from ``DOCS_ASSETS_URL``. Open like the OpenAPI document they render, as before:
    the keys guard the API routes, which the pages call with the key the user enters."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    openapi_url, redirect_url = str(app.openapi_url), str(app.swagger_ui_oauth2_redirect_url)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + redirect_url,
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            # No "valid" badge fetched from the public swagger.io validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # fonts.googleapis.com: unreachable offline
        )


def _routes_by_scope(app: FastAPI) -> dict[str, list[str]]:
    """"read"/"write" -> the routes that check that scope ("METHOD /path").

    Read from the OpenAPI security requirements (the scheme names in deps.py), computed
    apart from ``app.openapi()`` so the served document's cache is left alone.
    """
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    out: dict[str, list[str]] = {"read": [], "write": []}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            schemes = {name for req in op.get("security", []) for name in req} if isinstance(op, dict) else set()
            if "WriteKey" in schemes:
                out["write"].append(f"{method.upper()} {path}")
            elif "ReadKey" in schemes:
                out["read"].append(f"{method.upper()} {path}")
    return out


def _log_access(app: FastAPI, keys: ApiKeys, host: str) -> None:
    """One line per scope at start-up: which routes need which key, and which are open."""
    scopes = _routes_by_scope(app)
    for scope in ("write", "read"):
        routes = ", ".join(scopes[scope]) or "none"
        if scope in keys.open_scopes():
            # Beyond loopback (open writes got there only with api.allow_open) it is a warning.
            level = logging.INFO if is_loopback(host) else logging.WARNING
            log.log(level, "API on %s: %s routes are OPEN (no key configured): %s", host, scope, routes)
        else:
            if scope == "write":
                which = "write key" if keys.write is not None else "read key (no write key is set)"
            else:
                which = "read or write key" if keys.write is not None else "read key"
            log.info("API on %s: %s routes need the %s: %s", host, scope, which, routes)


def _honest_security_in_openapi(app: FastAPI, keys: ApiKeys) -> None:
    """List a key requirement only where that scope's key is configured."""
    generate = app.openapi
    unused = {name for name, key in (("ReadKey", keys.read), ("WriteKey", keys.write)) if key is None}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            for item in doc.get("paths", {}).values():
                for op in item.values():
                    if not isinstance(op, dict) or "security" not in op:
                        continue
                    op["security"] = [req for req in op["security"] if not set(req) & unused]
                    if not op["security"]:
                        del op["security"]
            schemes = doc.get("components", {}).get("securitySchemes", {})
            for name in unused:
                schemes.pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    # Messages say what was wrong with the request; they never include keys, secrets or
    # paths (AuthError texts are fixed strings, store errors get a fixed reason).
    def handler(status: int) -> object:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handle

    async def store_failed(request: Request, exc: Exception) -> JSONResponse:
        # The store's text may hold URLs, spool paths or the database's own message: logged,
        # not returned.
        log.warning("%s %s: store error: %s", request.method, request.url.path, exc)
        reason = "spool full" if isinstance(exc, SpoolFullError) else "the store is not available"
        return JSONResponse({"detail": f"{reason}; retry later (details in the service log)"}, status_code=503)

    async def auth(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        # Only where and what: echoing the input would leak it back (and a NaN in it
        # cannot even be written as JSON).
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(AuthError, auth)
    app.add_exception_handler(ModelError, handler(404))  # type: ignore[arg-type]
    app.add_exception_handler(DecodeError, handler(422))  # type: ignore[arg-type]
    app.add_exception_handler(SpoolFullError, store_failed)
    app.add_exception_handler(StoreError, store_failed)
    app.add_exception_handler(Exception, internal)
