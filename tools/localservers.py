"""Throwaway local servers for tests and benchmarks: mosquitto, influxd and nats-server.

Each runs on a free 127.0.0.1 port with its own temporary data directory and is
stopped (and its directory removed) on ``stop()``. Nothing here is used in production;
the deploy/ configuration is the production one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: each socket stays bound until all are chosen, so the kernel
    cannot hand the same port out twice (``free_port`` called n times can: a cluster's two
    route ports once collided, "Duplicate route entry detected")."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not open port {port} within {timeout}s: {log.read_text()[-2000:]}")


@dataclass
class LocalServer:
    """A server process we own; ``restart()`` keeps its data directory."""

    argv: list[str]
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_ports: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def start(self) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        logf.close()
        _wait_port(self.port, self.proc, self.log)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL by default: a crash); the data directory stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill(signal.SIGTERM)
        self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Mosquitto(LocalServer):
    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@dataclass
class Influxd(LocalServer):
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        # The port opens before the HTTP handler is ready; wait for /ping.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.status == 204:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"influxd /ping not ready: {self.log.read_text()[-2000:]}")

    def create_db(self, name: str) -> None:
        data = f"q=CREATE DATABASE \"{name}\"".encode()
        urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10).read()


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {dir}/
autosave_interval {autosave}
# Keep every QoS 1 message for offline persistent clients (default is 1,000: loses data).
max_queued_messages 0
max_inflight_messages 0
{extra}
"""


def start_mosquitto(extra_conf: str = "", autosave_s: int = 1) -> Mosquitto:
    """A mosquitto with persistence and unlimited queues, as deploy/ ships it."""
    workdir = Path(tempfile.mkdtemp(prefix="sc-mosq-"))
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        MOSQUITTO_CONF.format(port=port, dir=workdir, autosave=autosave_s, extra=extra_conf)
    )
    if os.geteuid() == 0:
        # mosquitto drops privileges to 'mosquitto' when started as root.
        shutil.chown(workdir, user="mosquitto") if _has_user("mosquitto") else None
    server = Mosquitto(argv=[MOSQUITTO, "-c", str(conf)], port=port, workdir=workdir)
    server.start()
    return server


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


INFLUXD_CONF = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
  index-version = "inmem"
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0
[continuous_queries]
  enabled = false
"""


def start_influxd(db: str | None = "sensorcast") -> Influxd:
    """An influxd 1.x on free loopback ports with a fresh data directory."""
    workdir = Path(tempfile.mkdtemp(prefix="sc-influx-"))
    port, rpc = free_port(), free_port()
    conf = workdir / "influxd.conf"
    conf.write_text(INFLUXD_CONF.format(port=port, rpc=rpc, dir=workdir))
    server = Influxd(argv=[INFLUXD, "-config", str(conf)], port=port, workdir=workdir, extra_ports=[rpc])
    server.start()
    if db:
        server.create_db(db)
    return server


NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"

NATS_CONF = """\
server_name: {name}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor}
jetstream {{ store_dir: "{dir}/js" }}
{mqtt}
{cluster}
{mapping}
"""


@dataclass
class NatsNode(LocalServer):
    """One nats-server with JetStream (and its MQTT listener when ``mqtt_port``)."""

    mqtt_port: int = 0
    monitor_port: int = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        if self.mqtt_port:  # MQTT opens once JetStream is up: wait for it too
            assert self.proc is not None
            _wait_port(self.mqtt_port, self.proc, self.log, timeout=30.0)


@dataclass
class NatsCluster:
    """One or three nats-server nodes on loopback, each with JetStream, an MQTT listener and the
    readings' partition mapping for ``topic`` (the ingest topic template)."""

    nodes: list[NatsNode]
    workdir: Path

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """The ``nats.url`` setting: every node, comma-separated."""
        return ",".join(self.urls)

    def mqtt_url(self, i: int = 0) -> str:
        return f"mqtt://127.0.0.1:{self.nodes[i].mqtt_port}"

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        self.nodes[i].kill(sig)

    def restart(self, i: int) -> None:
        self.nodes[i].kill(signal.SIGTERM)
        self.nodes[i].start()

    def stop(self) -> None:
        for n in self.nodes:
            n.kill(signal.SIGTERM)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_nats(nodes: int = 1, partitions: int = 4, topic: str = "sensors/{device}/{quantity}",
               mqtt: bool = True) -> NatsCluster:
    """``nodes`` nats-servers (1, or 3 as a cluster) with JetStream, MQTT and the partition mapping."""
    from service.nats.subjects import server_mapping_conf

    workdir = Path(tempfile.mkdtemp(prefix="sc-nats-"))
    names = [f"n{i + 1}" for i in range(nodes)]
    pool = iter(free_ports(4 * len(names)))
    ports = {n: (next(pool), next(pool), next(pool), next(pool) if mqtt else 0) for n in names}
    routes = ", ".join(f"nats-route://127.0.0.1:{ports[n][2]}" for n in names)
    mapping = server_mapping_conf(topic, partitions)
    cluster = NatsCluster([], workdir)
    try:
        for name in names:
            port, monitor, route, mqtt_port = ports[name]
            d = workdir / name
            d.mkdir()
            conf = d / "nats.conf"
            conf.write_text(NATS_CONF.format(
                name=name, port=port, monitor=monitor, dir=d, mapping=mapping,
                mqtt=f"mqtt {{ listen: 127.0.0.1:{mqtt_port} }}" if mqtt else "",
                cluster=(f"cluster {{ name: sc, listen: 127.0.0.1:{route}, routes: [{routes}] }}"
                         if nodes > 1 else ""),
            ))
            node = NatsNode(argv=[NATS_SERVER, "-c", str(conf)], port=port, workdir=d,
                            extra_ports=[monitor, route], mqtt_port=mqtt_port, monitor_port=monitor)
            cluster.nodes.append(node)
        # A clustered node's MQTT listener waits for JetStream, which waits for the others:
        # start every process first, then wait for them.
        for node in cluster.nodes:
            LocalServer.start(node) if nodes == 1 else _spawn(node)
        for node in cluster.nodes:
            assert node.proc is not None
            _wait_port(node.port, node.proc, node.log, timeout=30.0)
            if node.mqtt_port:
                _wait_port(node.mqtt_port, node.proc, node.log, timeout=60.0)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _spawn(server: LocalServer) -> None:
    logf = server.log.open("ab")
    server.proc = subprocess.Popen(
        server.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=server.workdir, start_new_session=True
    )
    logf.close()
