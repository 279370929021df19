"""A real ``serve``: a model copied into the models folder takes over the streams its manifest
declares without a binding or a restart, and they re-warm from the store at once; a stream no
model matches says so; DELETE /v1/streams/{id} forgets a stream (write scope)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.records import NS_PER_S, Reading, StreamKey
from tests.integration.ingest_helpers import Publisher
from tests.integration.serving import ServeProcess
from tests.modelkit import KitSpec, write_model
from tools.localservers import Mosquitto

pytestmark = pytest.mark.integration

KEY = "w-Secret-0123456789"
WARM = 6


def kit(models: Path, name: str, streams: list[str]) -> None:
    write_model(models, KitSpec(name=name, version="1", cadence_s=1.0, warmup_steps=WARM, horizon=5,
                                mean=(20.0,), std=(3.0,)), streams=streams)


def until(what: str, check: Callable[[], bool], svc: ServeProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s; log:\n{svc.log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def served(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[ServeProcess, Publisher]]:
    models = tmp_path / "models"
    kit(models, "sim", ["dev[0-9]*/*"])
    (tmp_path / "write.key").write_text(KEY)
    svc = ServeProcess(tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'readings.db'}", models,
                       extra_env={"SENSORCAST_MODELS__WATCH": "true",
                                  "SENSORCAST_API__API_KEY_FILE": str(tmp_path / "write.key")})
    svc.start()
    pub = Publisher(mosquitto.port, client_id=f"takeover-{svc.tag}")
    yield svc, pub
    pub.close()
    svc.kill()


@contextmanager
def live(pub: Publisher, devices: list[str]) -> Iterator[None]:
    """Sensors sending ``<device>/value`` once a second, stamped now, while the block runs."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.wait(1.0 if i else 0.0):
            now = time.time_ns() // NS_PER_S * NS_PER_S
            pub.publish([Reading(StreamKey(d, "value"), now, 20.0 + (i % 7) * 0.3) for d in devices])
            i += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=10)


def stream(svc: ServeProcess, sid: str) -> dict[str, object] | None:
    r = svc.get(f"/v1/streams/{sid}")
    return r.json() if r.status_code == 200 else None


def test_a_hot_loaded_model_takes_over_its_streams_and_delete_forgets_one(
    served: tuple[ServeProcess, Publisher], tmp_path: Path
) -> None:
    svc, pub = served
    with live(pub, ["dev01", "machine2"]):
        until("dev01/value served by the sim model",
              lambda: (stream(svc, "dev01/value") or {}).get("status") == "ok", svc)
        until("machine2/value listed with no model",
              lambda: (stream(svc, "machine2/value") or {}).get("status") == "no_model", svc)
        s = stream(svc, "machine2/value") or {}
        assert s["model"] is None and s["warm_up"]["message"] == "no model matches"  # type: ignore[index]
        r = svc.get("/v1/streams/machine2/value/forecast")
        assert r.status_code == 404 and "no model matches" in r.json()["detail"]
        log = svc.log.read_text()
        assert "stream machine2/value: no model matches" in log
        assert "stream dev01/value: served by model sim/1 (its manifest's streams)" in log

        # A trained model appears in the folder (written aside, then moved in, as training does).
        aside = tmp_path / "aside"
        kit(aside, "machine", ["machine*/value"])
        shutil.move(str(aside / "machine"), str(Path(svc.models_dir) / "machine"))
        until("machine2/value taken over by machine/1",
              lambda: (s := stream(svc, "machine2/value")) is not None and s["model"] == "machine"
              and s["status"] == "ok", svc)
        assert svc.get("/v1/streams/machine2/value/forecast").status_code == 200
        assert (stream(svc, "dev01/value") or {}).get("model") == "sim"  # the other model keeps its streams
        log = svc.log.read_text()
        assert "models: machine/1 serves machine2/value (machine*/value); sim/1 serves dev01/value (dev[0-9]*/*)" in log
        listed = {s["id"]: s["model"] for s in svc.get("/v1/streams").json()}
        assert listed == {"dev01/value": "sim", "machine2/value": "machine"}

        # DELETE needs the write key and forgets the stream; its next reading re-creates it,
        # warmed from the store (its history stayed).
        url = svc.url + "/v1/streams/machine2/value"
        assert httpx.delete(url, timeout=10).status_code == 401
        assert httpx.delete(url, headers={"X-API-Key": KEY}, timeout=10).status_code == 204
        assert "stream machine2/value deleted (served by machine/1)" in svc.log.read_text()
        assert httpx.delete(svc.url + "/v1/streams/nope/value", headers={"X-API-Key": KEY}, timeout=10).status_code == 404
        until("machine2/value back and warm", lambda: (stream(svc, "machine2/value") or {}).get("status") == "ok", svc)
