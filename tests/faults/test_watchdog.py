"""A dead pipeline thread fails ``/readyz`` and ends the process (exit 70) for its supervisor.

In-process: a real pipeline (mosquitto, SQLite store, the kit ONNX model) whose threads
are ended one at a time by making a call inside their loop raise a ``BaseException`` (no
guard in the service catches those): ``/readyz`` names the dead thread, the others stay
alive, and the watchdog reports it once. Out of process: the real ``sensorcast serve``
whose MQTT network thread is ended (tests/faults/threadfault.py) fails ``/readyz`` and
exits with code 70 after logging CRITICAL; so does ``sensorcast ingest``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.watchdog import EXIT_THREAD_DIED
from tests.faults.serve_helpers import kit_models, serve
from tests.faults.threadfault import TRIGGER_ENV, ThreadKilled
from tests.integration.ingest_helpers import REPO, IngestProcess
from tests.waiting import poll
from tools.localservers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")]

THREADS = ("mqtt intake", "store writer", "engine tick on arrival", "engine runner", "alert history writer")


def _boom(*args: object, **kwargs: object) -> Any:
    raise ThreadKilled("test fault")


class _ExplodingEngine:
    """The engine, except that ``tick`` ends the calling thread."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def tick(self, now_ns: int | None = None) -> int:
        raise ThreadKilled("test fault")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _kill(pipe: Pipeline, name: str) -> Callable[[], None]:
    """End thread ``name``; returns what undoes the injection (so ``stop`` runs normally)."""
    if name == "mqtt intake":
        assert pipe.ingester is not None
        client = pipe.ingester.source.client  # type: ignore[attr-defined]
        client.loop_misc = _boom  # paho's loop calls it on every pass
        return lambda: None
    if name == "store writer":
        writer = pipe.ingester.writer  # type: ignore[union-attr]
        writer._collect = _boom  # called every 0.1 s by the writer's loop
        return lambda: None
    if name == "engine tick on arrival":
        ticker = pipe.ticker
        assert ticker is not None
        real = ticker._engine
        ticker._engine = _ExplodingEngine(real)
        ticker._arrived.set()  # wake it now

        def undo() -> None:
            ticker._engine = real
        return undo
    if name == "alert history writer":
        history: Any = pipe.alert_log
        history._write = _boom  # the writer's loop guards Exception, not this
        history.append(object())  # wake it with something to write
        return lambda: None
    runner: Any = pipe.runner
    real = runner.engine
    runner.engine = _ExplodingEngine(real)

    def restore() -> None:
        runner.engine = real  # stop() ticks and checkpoints through it
    return restore


@pytest.fixture
def pipeline(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[Pipeline, list[list[str]]]]:
    settings = Settings(  # type: ignore[call-arg]
        roles="ingest,inference",
        mqtt={"url": mosquitto.url, "client_id": f"wd-{tmp_path.name}"},
        store={"url": f"sqlite:///{tmp_path / 'db.sqlite'}", "spool_dir": tmp_path / "spool"},
        models={"dir": kit_models(tmp_path / "models"), "watch": False},
        streams={"checkpoint_dir": tmp_path / "state", "settings_path": tmp_path / "stream_settings.sqlite"},
        alerts={"enabled": False, "history_path": tmp_path / "alerts.sqlite"},
        ingest={"topic": "wd/{device}/{quantity}"},
        watchdog={"interval_s": 0.2},
    )
    pipe = Pipeline.build(settings, Metrics())
    fired: list[list[str]] = []
    pipe.on_fatal = fired.append
    pipe.start()
    assert pipe.ingester is not None and pipe.ingester.source.subscribed.wait(10)  # type: ignore[attr-defined]
    yield pipe, fired
    pipe.stop()


@pytest.mark.parametrize("name", THREADS)
def test_a_dead_pipeline_thread_fails_readyz_and_is_reported_once(
    pipeline: tuple[Pipeline, list[list[str]]], name: str
) -> None:
    pipe, fired = pipeline
    with TestClient(create_app(pipe.settings, pipeline=pipe)) as client:
        before = client.get("/readyz")
        assert before.status_code == 200, before.text
        assert before.json()["checks"]["threads"] == {"ok": True, "detail": f"alive: {', '.join(sorted(THREADS))}",
                                                       "degraded": False}
        undo = _kill(pipe, name)
        try:
            assert poll(lambda: not pipe.liveness()[name], 10), f"{name} did not die"
            r = client.get("/readyz")
            assert poll(lambda: fired, 5), "the watchdog did not report the dead thread"
        finally:
            undo()
    assert r.status_code == 503
    check = r.json()["checks"]["threads"]
    assert check["ok"] is False and check["detail"].startswith(f"dead: {name};")
    assert fired == [[name]]  # once, naming only the dead one
    assert all(alive for other, alive in pipe.liveness().items() if other != name)


def test_watchdog_off_until_started_and_stop_does_not_fire(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Threads ending on purpose (stop) are not deaths; nothing is watched before start."""
    settings = Settings(  # type: ignore[call-arg]
        roles="ingest", mqtt={"url": mosquitto.url, "client_id": "wd-stop"},
        store={"url": f"sqlite:///{tmp_path / 'db.sqlite'}", "spool_dir": tmp_path / "spool"},
        watchdog={"interval_s": 0.05},
    )
    pipe = Pipeline.build(settings, Metrics())
    fired: list[list[str]] = []
    pipe.on_fatal = fired.append
    assert pipe.liveness() == {}
    pipe.start()
    assert poll(lambda: pipe.liveness() == {"mqtt intake": True, "store writer": True}, 10), pipe.liveness()
    pipe.stop()
    threading.Event().wait(0.3)
    assert fired == [] and pipe.liveness() == {}


@pytest.mark.slow
def test_serve_whose_intake_thread_dies_fails_readyz_and_exits_70(mosquitto: Mosquitto, tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import tests.faults.threadfault  # noqa: F401\n")
    trigger = tmp_path / "kill-intake"
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {"PYTHONPATH": f"{hook}:{REPO}", TRIGGER_ENV: str(trigger), "SENSORCAST_MQTT__CLIENT_ID": "wd-serve",
           "SENSORCAST_INGEST__TOPIC": "wdserve/{device}/{quantity}", "SENSORCAST_WATCHDOG__INTERVAL_S": "2"}
    with serve(tmp_path / "svc", mosquitto.url, store, kit_models(tmp_path / "models"), **env) as sp:
        ready = sp.wait_ready()
        assert ready["http_status"] == 200 and "mqtt intake" in ready["checks"]["threads"]["detail"], ready
        trigger.touch()

        def failing() -> dict[str, Any] | None:
            try:
                body = sp.ready()
            except Exception:  # the process may already be on its way out
                return None
            return body if body["http_status"] == 503 else None

        seen = poll(failing, 10, every=0.05)
        assert sp.proc is not None
        code = sp.proc.wait(60)
        log = sp.tail(10**6)
    assert seen is not None, log[-3000:]
    assert seen["checks"]["threads"] == {
        "ok": False, "degraded": False,
        "detail": "dead: mqtt intake; the process is exiting for its supervisor to restart it",
    }
    assert code == EXIT_THREAD_DIED, log[-3000:]
    assert "CRITICAL service.watchdog: pipeline thread(s) dead: mqtt intake" in log
    assert "pipeline stopped" in log  # the orderly stop ran before the exit


@pytest.mark.slow
def test_ingest_command_whose_intake_thread_dies_exits_70(mosquitto: Mosquitto, tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import tests.faults.threadfault  # noqa: F401\n")
    trigger = tmp_path / "kill-intake"
    env = {"PYTHONPATH": f"{hook}:{REPO}", TRIGGER_ENV: str(trigger), "SENSORCAST_MQTT__URL": mosquitto.url,
           "SENSORCAST_MQTT__CLIENT_ID": "wd-ingest", "SENSORCAST_STORE__URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "SENSORCAST_STORE__SPOOL_DIR": str(tmp_path / "spool"), "SENSORCAST_WATCHDOG__INTERVAL_S": "0.5"}
    proc = IngestProcess(env, tmp_path / "ingest.log")
    proc.start()
    try:
        trigger.touch()
        assert proc.proc is not None
        code = proc.proc.wait(60)
    finally:
        proc.stop()
    log = (tmp_path / "ingest.log").read_text()
    assert code == EXIT_THREAD_DIED, log[-3000:]
    assert "CRITICAL service.watchdog: pipeline thread(s) dead: mqtt intake" in log
    assert "stopped:" in log  # the orderly stop (flush, close) ran first
