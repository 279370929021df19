"""Build the API around a twin engine and a real (HTTP-only) ingester on a memory store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.records import Alert, Forecast, StreamKey
from service.store.alertlog import AlertLog
from service.store.memory import MemoryStore
from service.store.streamsettings import StreamSettings
from service.wiring import build_ingester
from tests.apitwin import TwinEngine, TwinStatus

T0 = 1_700_000_000_000_000_000
MIN = 60_000_000_000


@dataclass
class Harness:
    client: TestClient
    engine: TwinEngine
    store: MemoryStore
    metrics: Metrics
    pipeline: Pipeline
    alert_log: AlertLog
    stream_settings: StreamSettings


def populated_twin() -> TwinEngine:
    e = TwinEngine()
    e.statuses["pump-1/temperature"] = TwinStatus(
        "pump-1/temperature", "pump-1", "temperature", "twin", "1", "ok", 5, 5, T0, 21.0, 0.5, 20.8, 19.0, 22.6
    )
    e.statuses["pump-2/temperature;site=north"] = TwinStatus(
        "pump-2/temperature;site=north", "pump-2", "temperature", "twin", "1", "warming", 2, 5, T0, float("nan"),
        None, None, None, None,
    )
    e.forecasts["pump-1/temperature"] = Forecast(
        StreamKey("pump-1", "temperature"), T0, 60.0, ("value",), ((21.0,), (21.5,), (22.0,)), ((1.0,), (2.0,), (3.0,)), "twin", "1"
    )
    for i, state in enumerate(("firing", "resolved")):
        e.alerts.append(Alert(
            StreamKey("pump-1", "temperature"), "temperature", state, T0 + i * MIN, 90.0, 20.0, 18.0, 22.0,  # type: ignore[arg-type]
            9.5, "twin", "1", True,
        ))
    return e


def settings_for(tmp: Path, **api: object) -> Settings:
    return Settings(
        roles="ingest,inference,api",
        store={"url": "memory://", "spool_dir": tmp / "spool"},  # type: ignore[arg-type]
        api={"max_body_bytes": 64 * 1024, **api},  # type: ignore[arg-type]
        ingest={"batch_interval_s": 0.01},  # type: ignore[arg-type]
    )


@contextmanager
def harness(tmp: Path, **api: object) -> Iterator[Harness]:
    settings = settings_for(tmp, **api)
    metrics = Metrics()
    engine = populated_twin()
    store = MemoryStore()
    ingester = build_ingester(settings, store, metrics, sinks=[engine.accept], mqtt=False)
    alert_log = AlertLog(tmp / "alerts.sqlite")
    for alert in engine.alerts:  # the history the alert routes read
        alert_log.append(alert)
    assert alert_log.flush()
    rules = StreamSettings(tmp / "stream_settings.sqlite")
    pipeline = Pipeline(settings, metrics, store=store, engine=engine, ingester=ingester, decoder=ingester.decoder,
                        alert_log=alert_log, stream_settings=rules, closers=[alert_log.close, rules.close])
    pipeline.start()
    try:
        with TestClient(create_app(settings, pipeline=pipeline), raise_server_exceptions=False) as client:
            yield Harness(client, engine, store, metrics, pipeline, alert_log, rules)
    finally:
        pipeline.stop()
