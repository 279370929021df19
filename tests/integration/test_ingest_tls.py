"""The ingester over mqtts:// with a CA and a client certificate (mutual TLS), real mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from service.metrics import Metrics
from service.store.memory import MemoryStore
from service.wiring import build_ingester
from tests.integration.ingest_helpers import make_settings
from tools.localservers import Mosquitto, free_port

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all 2048-bit RSA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=sensorcast test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    for p in d.iterdir():
        os.chmod(p, 0o644)  # mosquitto drops to its own user when started as root


def test_mutual_tls(fresh_mosquitto: Callable[..., Mosquitto], tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    pki = Path(tempfile.mkdtemp(prefix="sc-pki-"))
    os.chmod(pki, 0o755)
    try:
        make_pki(pki)
        tls_port = free_port()
        broker = fresh_mosquitto(extra_conf=(
            f"listener {tls_port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\n"
            f"keyfile {pki}/server.key\nrequire_certificate true\n"
        ))
        settings = make_settings(broker.port, "memory://", tmp_path / "spool", client_id="tls-ingest")
        settings.mqtt.url = f"mqtts://127.0.0.1:{tls_port}"
        settings.mqtt.ca_file = pki / "ca.crt"
        settings.mqtt.cert_file = pki / "client.crt"
        settings.mqtt.key_file = pki / "client.key"
        store = MemoryStore()
        ing = build_ingester(settings, store, Metrics())
        ing.start()
        try:
            assert ing.source is not None and ing.source.subscribed.wait(15), "no TLS session"
            pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-pub")
            pub.connect("127.0.0.1", broker.port)  # the plain listener: same broker
            pub.loop_start()
            pub.publish("sensors/tls/temp", b"42.5", qos=1).wait_for_publish(5)
            deadline = time.monotonic() + 10
            while store.count() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            pub.loop_stop()
            assert store.count() == 1
        finally:
            ing.stop()
        # Without the client certificate the broker refuses the handshake.
        settings.mqtt.client_id = "tls-no-cert"
        settings.mqtt.cert_file = settings.mqtt.key_file = None
        ing2 = build_ingester(settings, MemoryStore(), Metrics())
        ing2.start()
        time.sleep(2)
        assert not ing2.status().broker_connected
        ing2.stop()
    finally:
        shutil.rmtree(pki, ignore_errors=True)
