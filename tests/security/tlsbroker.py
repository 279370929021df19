"""A throwaway CA, server and client certificates (openssl) and a mosquitto that demands
TLS, a client certificate signed by that CA, and a username/password (mosquitto_passwd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.localservers import MOSQUITTO, Mosquitto, free_port

USER = "sensorcast"
PASSWORD = "tls-Pa55word-7f3c91"  # grepped for in logs, metrics and error bodies

CONF = """\
per_listener_settings false
listener {port} 127.0.0.1
cafile {dir}/ca.crt
certfile {dir}/server.crt
keyfile {dir}/server.key
require_certificate true
allow_anonymous false
password_file {dir}/passwd
persistence false
max_queued_messages 0
"""


@dataclass
class TlsBroker:
    server: Mosquitto
    dir: Path

    @property
    def port(self) -> int:
        return self.server.port

    def path(self, name: str) -> Path:
        return self.dir / name


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=sensorcast-test-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "sensorcast-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    # A second, unrelated CA and client: a certificate the broker must not trust.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.crt",
             "-days", "2", "-subj", "/CN=rogue", cwd=d)


def start_tls_broker() -> TlsBroker:
    d = Path(tempfile.mkdtemp(prefix="sc-mosq-tls-"))
    make_certs(d)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), USER, PASSWORD], check=True,
                   capture_output=True)
    port = free_port()
    (d / "mosquitto.conf").write_text(CONF.format(port=port, dir=d))
    if os.geteuid() == 0:  # mosquitto drops to its own user and must read the files
        import pwd

        try:
            pw = pwd.getpwnam("mosquitto")
        except KeyError:
            pass
        else:
            for p in [d, *d.iterdir()]:
                os.chown(p, pw.pw_uid, pw.pw_gid)
    server = Mosquitto(argv=[MOSQUITTO, "-c", str(d / "mosquitto.conf")], port=port, workdir=d)
    try:
        server.start()
    except Exception:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return TlsBroker(server, d)
