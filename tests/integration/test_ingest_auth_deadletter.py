"""Broker login from a password file, and refused payloads republished to a dead-letter topic."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from service.metrics import Metrics
from service.store.memory import MemoryStore
from service.wiring import build_ingester
from tests.integration.ingest_helpers import make_settings
from tools.localservers import Mosquitto

pytestmark = pytest.mark.integration


def test_password_file_login_and_dead_letters(fresh_mosquitto: Callable[..., Mosquitto], tmp_path: Path) -> None:
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not installed")
    conf_dir = Path(tempfile.mkdtemp(prefix="sc-auth-"))
    os.chmod(conf_dir, 0o755)  # mosquitto drops to its own user when started as root
    pwfile = conf_dir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "ingest", "s3cret pass"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "dev", "devpass"], check=True)
    os.chmod(pwfile, 0o644)
    broker = fresh_mosquitto(extra_conf=f"password_file {pwfile}")
    (tmp_path / "mqtt-pass").write_text("s3cret pass\n")
    try:
        # Wrong password: refused, and the ingester says so in its status.
        bad = make_settings(broker.port, "memory://", tmp_path / "spool-bad", client_id="auth-bad")
        bad.mqtt.url = f"mqtt://ingest:wrong@127.0.0.1:{broker.port}"
        ing_bad = build_ingester(bad, MemoryStore(), Metrics())
        ing_bad.start()
        time.sleep(1.5)
        assert not ing_bad.status().broker_connected
        ing_bad.stop()

        settings = make_settings(broker.port, "memory://", tmp_path / "spool", client_id="auth-ok",
                                 dead_letter_topic="sensorcast/deadletter")
        settings.mqtt.url = f"mqtt://ingest@127.0.0.1:{broker.port}"
        settings.mqtt.password_file = tmp_path / "mqtt-pass"
        store = MemoryStore()
        ing = build_ingester(settings, store, Metrics())
        ing.start()
        assert ing.source is not None and ing.source.subscribed.wait(10)

        dead: list[dict[str, object]] = []
        got_dead = threading.Event()
        watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="dl-watch")
        watcher.username_pw_set("dev", "devpass")
        subscribed = threading.Event()
        watcher.on_subscribe = lambda *a: subscribed.set()

        def on_message(c: object, u: object, m: paho.MQTTMessage) -> None:
            dead.append(orjson.loads(m.payload))
            got_dead.set()

        watcher.on_message = on_message
        watcher.connect("127.0.0.1", broker.port)
        watcher.subscribe("sensorcast/deadletter", qos=1)
        watcher.loop_start()
        assert subscribed.wait(5)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="dl-pub")
        pub.username_pw_set("dev", "devpass")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("sensors/d1/temp", b"21.5", qos=1).wait_for_publish(5)
        pub.publish("sensors/d1/temp", b"not a number", qos=1).wait_for_publish(5)
        assert got_dead.wait(10)
        deadline = time.monotonic() + 10
        while store.count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.loop_stop()
        watcher.loop_stop()
        ing.stop()
        assert store.count() == 1
        assert dead[0]["topic"] == "sensors/d1/temp"
        assert dead[0]["payload"] == "not a number"
        assert dead[0]["reasons"][0]["reason"] == "non_numeric"  # type: ignore[index]
    finally:
        shutil.rmtree(conf_dir, ignore_errors=True)
