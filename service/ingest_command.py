"""``sensorcast ingest``: run the MQTT -> store ingester until SIGINT/SIGTERM.

It is the pipeline (service/pipeline.py) with the ``ingest`` role alone, whatever
``SENSORCAST_ROLES`` says: the same wiring, watchdog and orderly stop as ``serve``.
Configuration comes from the settings (env ``SENSORCAST_MQTT__URL``,
``SENSORCAST_STORE__URL``, ``SENSORCAST_INGEST__TOPIC``, ...); the flags override them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from types import FrameType

from service.config import Settings
from service.gcpolicy import GcPolicy
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.watchdog import FatalExit

log = logging.getLogger("sensorcast.ingest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-url", help="Broker URL (overrides SENSORCAST_MQTT__URL).")
    parser.add_argument("--store-url", help="Store URL (overrides SENSORCAST_STORE__URL).")
    parser.add_argument("--topic", help="Topic template (overrides SENSORCAST_INGEST__TOPIC).")
    parser.add_argument("--status-every", type=float, default=60.0, help="Seconds between status log lines.")


def run(args: argparse.Namespace) -> int:
    settings = Settings(roles=frozenset({"ingest"}))  # the rest from the environment
    if args.mqtt_url:
        settings.mqtt.url = args.mqtt_url
    if args.store_url:
        settings.store.url = args.store_url
    if args.topic:
        settings.ingest.topic = args.topic
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per batch otherwise
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: flushing and stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    metrics = Metrics()
    pipeline = Pipeline.build(settings, metrics)
    ingester = pipeline.ingester
    assert ingester is not None  # the ingest role builds it
    # A dead intake or writer thread: orderly stop, then exit 70 for the supervisor to restart us.
    fatal = FatalExit(settings.watchdog.exit_grace_s, stop.set)
    pipeline.on_fatal = fatal
    pipeline.start()  # starts the watchdog over the pipeline's threads
    gc_policy = GcPolicy.from_settings(settings.gc, metrics)
    gc_policy.start()
    log.info("ingesting %r into %s", settings.ingest.topic, settings.store.url.split("@")[-1])
    next_status = time.monotonic() + args.status_every
    try:
        while not stop.wait(0.5):
            if time.monotonic() >= next_status:
                log.info("status: %s", ingester.status())
                next_status += args.status_every
    finally:
        gc_policy.stop()
        pipeline.stop()  # watchdog, then intake, flush, acks, disconnect, store
        log.info("stopped: %s", ingester.status())
    return fatal.code
