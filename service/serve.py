"""``sensorcast serve``: ingest + inference + REST API in one process (uvicorn).

Which parts run is ``settings.roles`` (``SENSORCAST_ROLES``, or ``--roles``): with
``api`` the pipeline lives in the app's lifespan and uvicorn serves it; without, the
pipeline runs until a signal. SIGTERM/SIGINT stop intake, flush what was taken to the
store or spool, tick and checkpoint the engine, give the broker a moment to acknowledge
queued alerts (the rest stay in the outbox), then exit.

A pipeline thread that dies (see service/watchdog.py) fails ``/readyz`` at once; at the
watchdog's next check the same orderly stop runs and the process exits with code 70, so
its supervisor (systemd ``Restart=``, compose ``restart:``) starts a fresh one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from service.config import Settings
from service.errors import ConfigError
from service.gcpolicy import GcPolicy
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.watchdog import FatalExit

log = logging.getLogger("sensorcast.serve")
SWITCH_INTERVAL_S = 0.001


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="Bind address (overrides SENSORCAST_API__HOST).")
    parser.add_argument("--port", type=int, help="Port (overrides SENSORCAST_API__PORT).")
    parser.add_argument("--models-dir", type=Path, help="Models directory (overrides SENSORCAST_MODELS__DIR).")
    parser.add_argument("--roles", help="Comma-separated roles: ingest,inference,api (overrides SENSORCAST_ROLES).")


def settings_from(args: argparse.Namespace) -> Settings:
    # --roles goes through the settings' validator (unknown roles refused with a clear message).
    settings = Settings(**({"roles": args.roles} if args.roles else {}))  # rest from the environment
    if args.host:
        settings.api.host = args.host
    if args.port is not None:
        settings.api.port = args.port
    if args.models_dir is not None:
        settings.models.dir = args.models_dir
    return settings


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    roles = settings.roles
    metrics = Metrics()
    # Several busy threads share the GIL (MQTT intake, store writer, engine, HTTP); with
    # the default 5 ms switch interval a short request can wait 5 ms per hand-over.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc_policy = GcPolicy.from_settings(settings.gc, metrics)
    fatal = FatalExit(settings.watchdog.exit_grace_s)
    if "api" in roles:
        import uvicorn

        from service.api.app import create_app

        app = StartupErrors(create_app(settings, metrics=metrics, on_started=gc_policy.start, on_fatal=fatal))
        config = uvicorn.Config(
            app, host=settings.api.host, port=settings.api.port, log_level=settings.log_level.lower(),
            access_log=False,  # one line per request would dwarf everything else at 200 req/s
            timeout_graceful_shutdown=10,
        )
        # uvicorn turns SIGTERM/SIGINT into a graceful shutdown, which runs the lifespan's
        # pipeline.stop() (stop intake, flush, checkpoint); a dead thread asks for the same.
        server = uvicorn.Server(config)
        fatal.request_stop = lambda: setattr(server, "should_exit", True)
        try:
            server.run()
        except SystemExit:
            if app.error is not None:  # the CLI turns it into one line and exit 2
                raise app.error from None
            raise
        finally:
            gc_policy.stop()
        return fatal.code
    return _run_headless(settings, metrics, gc_policy, fatal)


class StartupErrors:
    """The app, but a configuration error while its lifespan starts the pipeline (a topic
    template, an InfluxDB 2 store without org) is kept for the CLI's one-line message
    instead of being printed by uvicorn as a traceback; other failures pass unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.error: Exception | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Any] = []

        async def hold_failure(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent below, once we know what failed
                return
            await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except (ConfigError, ValidationError) as e:
            self.error = e
            await send({"type": "lifespan.startup.failed", "message": ""})  # uvicorn logs no traceback
            return
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)


def _run_headless(settings: Settings, metrics: Metrics, gc_policy: GcPolicy, fatal: FatalExit) -> int:
    stop = threading.Event()
    fatal.request_stop = stop.set

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping intake, flushing, checkpointing", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pipeline = Pipeline.build(settings, metrics)
    pipeline.on_fatal = fatal
    pipeline.start()
    gc_policy.start()
    try:
        stop.wait()
    finally:
        gc_policy.stop()
        pipeline.stop()
    return fatal.code
