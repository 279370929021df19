"""The shipped deploy/nats configuration, run with the real nats-server (issue #15).

No container engine runs here, so the compose file's NATS cluster is exercised directly:
the same nats1..3.conf and cluster.conf, with the listen addresses moved to free loopback
ports, the routes pointed at them and the JetStream store in a temp directory. Then a
gateway's leaf node from leaf.conf joins that cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tools.localservers import free_ports

nats = pytest.importorskip("nats")

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "nats"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
# The secret files start.sh reads (the compose secrets' names).
SECRETS = {
    "mqtt_service_password": "service-pw-1",
    "mqtt_device_password": "device-pw-2",
    "nats_route_password": "route-pw-3",
    "nats_leaf_password": "leaf-pw-4",
}
DEVICE_PW = SECRETS["mqtt_device_password"]
SUBJECT = re.compile(r"^p\.(\d+)\.sensors\.(\w+)\.(\w+)$")


@dataclass
class Node:
    name: str
    dir: Path
    ports: dict[str, int]
    conf: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://sensorcast:{SECRETS['mqtt_service_password']}@127.0.0.1:{self.ports['client']}"

    def start(self) -> None:
        # Through the shipped start.sh, as the containers do: it turns the secrets into the
        # variables the conf reads, then execs nats-server (so the pid is the server's).
        with (self.dir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(["sh", str(DEPLOY / "start.sh")], stdout=log, stderr=subprocess.STDOUT,
                                         env={**self.env, "NATS_CONF": str(self.conf)}, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def jsz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/jsz", timeout=2) as r:
            data: dict[str, Any] = json.load(r)
        return data

    def log(self) -> str:
        return (self.dir / "server.log").read_text()[-3000:]


def _sub(text: str, old: str, new: str) -> str:
    # Every address the test moves must be in the shipped file: a renamed one fails here.
    assert old in text, f"{old!r} is no longer in the shipped conf"
    return text.replace(old, new)


def secrets_dir(tmp: Path) -> Path:
    d = tmp / "secrets"
    d.mkdir(exist_ok=True)
    for name, value in SECRETS.items():
        (d / name).write_text(value)
    return d


def cluster_layout(tmp: Path) -> list[Node]:
    """The three nodes' confs as shipped, with loopback ports and a temp store."""
    env = {**os.environ, "SECRETS_DIR": str(secrets_dir(tmp)), "NATS_SERVER": NATS_SERVER}
    keys = ("client", "http", "route", "mqtt", "leaf")
    pool = iter(free_ports(len(keys) * 3))  # distinct: two equal route ports stop the cluster
    ports = [{k: next(pool) for k in keys} for _ in range(3)]
    common = (DEPLOY / "cluster.conf").read_text()
    nodes = []
    for i, p in enumerate(ports, start=1):
        d = tmp / f"nats{i}"
        d.mkdir()
        text = common
        for key, port in (("client", 4222), ("http", 8222), ("route", 6222), ("mqtt", 1883), ("leaf", 7422)):
            text = _sub(text, f"0.0.0.0:{port}", f"127.0.0.1:{p[key]}")
        text = _sub(text, "/data/jetstream", str(d / "jetstream"))
        (d / "cluster.conf").write_text(text)
        shutil.copy(DEPLOY / f"nats{i}.conf", d / f"nats{i}.conf")
        routes = " ".join(f"127.0.0.1:{q['route']}" for q in ports)
        nodes.append(Node(f"nats{i}", d, p, d / f"nats{i}.conf", {**env, "NATS_ROUTE_HOSTS": routes}))
    return nodes


def leaf_layout(tmp: Path, hub: Node, name: str = "gw1") -> Node:
    p = dict(zip(("client", "http", "mqtt"), free_ports(3), strict=True))
    d = tmp / name
    d.mkdir()
    text = (DEPLOY / "leaf.conf").read_text()
    text = _sub(text, "127.0.0.1:4222", f"127.0.0.1:{p['client']}")
    text = _sub(text, "127.0.0.1:8222", f"127.0.0.1:{p['http']}")
    text = _sub(text, "0.0.0.0:1883", f"127.0.0.1:{p['mqtt']}")
    text = _sub(text, "/data/jetstream", str(d / "jetstream"))
    (d / "leaf.conf").write_text(text)
    env = {**os.environ, "SECRETS_DIR": str(secrets_dir(tmp)), "NATS_SERVER": NATS_SERVER,
           "NATS_GATEWAY_NAME": name, "NATS_HUB": f"127.0.0.1:{hub.ports['leaf']}"}
    return Node(name, d, p, d / "leaf.conf", env)


def wait_for(what: str, check: Any, timeout: float, nodes: list[Node]) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for n in nodes:
            assert n.proc is not None and n.proc.poll() is None, f"{n.name} exited:\n{n.log()}"
        try:
            last = check()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.2)
    logs = "\n".join(f"--- {n.name}\n{n.log()}" for n in nodes)
    raise AssertionError(f"{what} not within {timeout} s (last: {last!r})\n{logs}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server not installed (apt-get install nats-server)")
    nodes = cluster_layout(tmp_path_factory.mktemp("natscluster"))
    try:
        for n in nodes:
            n.start()

        def formed() -> bool:
            metas = [n.jsz().get("meta_cluster", {}) for n in nodes]
            return all(m.get("leader") and m.get("cluster_size") == 3 for m in metas)

        wait_for("the JetStream meta group (3 peers, a leader)", formed, 30, nodes)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def mqtt_publish(port: int, user: str, password: str, messages: list[tuple[str, bytes]]) -> None:
    """QoS 1 publishes, each acknowledged (NATS's MQTT listener speaks MQTT 3.1.1)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{port}-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if rc == 0 else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "MQTT connect to NATS refused"
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def _collect(url: str, subject: str, n: int, publish: Any, timeout: float = 10) -> list[tuple[str, bytes]]:
    """Subscribe on ``url``, run ``publish`` (blocking, in a thread), collect ``n`` messages."""
    nc = await nats.connect(url, connect_timeout=5)
    got: list[tuple[str, bytes]] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        got.append((msg.subject, msg.data))
        if len(got) >= n:
            done.set()

    try:
        await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        await asyncio.sleep(0.5)  # the interest travels over the routes
        await asyncio.to_thread(publish)
        with contextlib.suppress(TimeoutError):  # the caller asserts on what arrived
            await asyncio.wait_for(done.wait(), timeout)
        await asyncio.sleep(0.3)  # nothing extra (no duplicate) arrives after
    finally:
        await nc.close()
    return got


def test_cluster_forms_and_maps_mqtt_into_partitions(cluster: list[Node]) -> None:
    n1, n2, n3 = cluster
    assert {n.jsz()["meta_cluster"]["leader"] for n in cluster} <= {"nats1", "nats2", "nats3"}
    devices = [f"dev{i}" for i in range(20)]
    msgs = [(f"sensors/{d}/temp", b'{"ts": 1, "value": 1.5}') for d in devices]
    msgs += [(f"sensors/{d}/hum", b'{"ts": 1, "value": 40}') for d in devices]
    # Devices publish MQTT into node 2; a service client on node 3 sees the mapped subjects.
    got = run(_collect(n3.url, "p.>", len(msgs),
                       lambda: mqtt_publish(n2.ports["mqtt"], "device", DEVICE_PW, msgs)))
    assert len(got) == len(msgs), got
    part: dict[str, set[int]] = {}
    for subject, data in got:
        m = SUBJECT.match(subject)
        assert m, subject
        assert 0 <= int(m.group(1)) < 16 and data.startswith(b'{"ts"')
        part.setdefault(m.group(2), set()).add(int(m.group(1)))
    assert sorted(part) == sorted(devices)
    assert all(len(p) == 1 for p in part.values()), part  # both quantities of a device: one partition
    assert len({p for ps in part.values() for p in ps}) > 1  # 20 devices spread over partitions
    # The same device through another node lands in the same partition.
    again = run(_collect(n1.url, "p.*.sensors.dev7.temp", 1,
                         lambda: mqtt_publish(n3.ports["mqtt"], "device", DEVICE_PW,
                                              [("sensors/dev7/temp", b"{}")])))
    assert [SUBJECT.match(s).group(1) for s, _ in again] == [str(min(part["dev7"]))]  # type: ignore[union-attr]


def test_devices_may_only_publish_readings(cluster: list[Node]) -> None:
    n1, n2, _ = cluster
    # A device cannot forge alerts, nor pick its partition: p/<n>/sensors/... is mapped again
    # onto the partition of its device level, where sensors/x/y lands.
    forged = [("sensorcast/alerts/dev1", b"{}"), ("p/0/sensors/x/y", b"{}"), ("sensors/x/y", b"{}")]
    got = run(_collect(n1.url, ">", 100, lambda: mqtt_publish(n2.ports["mqtt"], "device", DEVICE_PW, forged),
                       timeout=2))
    seen = [s for s, _ in got if s.startswith(("sensorcast.", "p."))]
    assert len(seen) == 2 and seen[0] == seen[1] and SUBJECT.match(seen[0]), got
    with pytest.raises(AssertionError, match="refused"):
        mqtt_publish(n2.ports["mqtt"], "device", "wrong", [("sensors/a/b", b"{}")])


def test_alerts_published_on_nats_reach_mqtt_subscribers_on_another_node(cluster: list[Node]) -> None:
    """What the replicas publish on sensorcast.alerts.<stream> reaches an MQTT subscriber
    (the service user, as Home Assistant or a dashboard would log in) on another node."""
    n1, _, n3 = cluster
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alert-reader", protocol=mqtt.MQTTv311)
    client.username_pw_set("sensorcast", SECRETS["mqtt_service_password"])
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("sensorcast/alerts/#", qos=1)
    client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.connect("127.0.0.1", n1.ports["mqtt"])
    client.loop_start()
    try:
        assert subscribed.wait(10)

        async def publish() -> None:
            nc = await nats.connect(n3.url, connect_timeout=5)
            await asyncio.sleep(0.5)  # the MQTT subscription's interest reaches node 3
            await nc.publish("sensorcast.alerts.dev1%2Ftemp", b'{"state": "firing"}')
            await nc.flush()
            await nc.close()

        run(publish())
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [("sensorcast/alerts/dev1%2Ftemp", b'{"state": "firing"}')]
    finally:
        client.disconnect()
        client.loop_stop()


def test_replicated_stream_stores_mqtt_readings(cluster: list[Node]) -> None:
    """The production flow: an R3 stream over p.> keeps what devices publish to any node."""
    n1, n2, n3 = cluster

    async def go() -> tuple[int, list[str], int]:
        nc = await nats.connect(n1.url, connect_timeout=5)
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(name="DEPLOYTEST", subjects=["p.>"], num_replicas=3)
            msgs = [(f"sensors/s{i}/v", b"{}") for i in range(50)]
            await asyncio.to_thread(mqtt_publish, n2.ports["mqtt"], "device", DEVICE_PW, msgs)
            await asyncio.to_thread(mqtt_publish, n3.ports["mqtt"], "device", DEVICE_PW, msgs)
            info = await js.stream_info("DEPLOYTEST")
            for _ in range(50):
                if info.state.messages >= 100:
                    break
                await asyncio.sleep(0.1)
                info = await js.stream_info("DEPLOYTEST")
            sub = await js.pull_subscribe("p.>", durable="check", stream="DEPLOYTEST")
            batch = await sub.fetch(10, timeout=5)
            replicas = len(info.cluster.replicas or []) + 1 if info.cluster else 0
            await js.delete_stream("DEPLOYTEST")
            return info.state.messages, [m.subject for m in batch], replicas
        finally:
            await nc.close()

    stored, subjects, replicas = run(go())
    assert stored == 100 and replicas == 3
    assert all(SUBJECT.match(s) for s in subjects), subjects


async def _stream_count(url: str, publish: Any) -> int:
    """Messages an R3 stream over p.> holds after ``publish`` (blocking, in a thread)."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(name="LEAFTEST", subjects=["p.>"], num_replicas=3)
        try:
            await asyncio.sleep(0.5)  # the stream's interest reaches the leaf
            await asyncio.to_thread(publish)
            for _ in range(30):
                n = int((await js.stream_info("LEAFTEST")).state.messages)
                if n:
                    await asyncio.sleep(0.3)
                    return int((await js.stream_info("LEAFTEST")).state.messages)
                await asyncio.sleep(0.1)
            return 0
        finally:
            await js.delete_stream("LEAFTEST")
    finally:
        await nc.close()


def test_leaf_node_forwards_a_gateways_devices_to_the_cluster(cluster: list[Node], tmp_path: Path) -> None:
    hub = cluster[0]
    leaf = leaf_layout(tmp_path, hub)
    leaf.start()
    try:
        def linked() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['http']}/leafz", timeout=2) as r:
                return int(json.load(r).get("leafnodes", 0)) == 1

        wait_for("the leaf's link to the cluster", linked, 30, [*cluster, leaf])
        # MQTT on the leaf needs its own JetStream (domain gw1): wait until it is up.
        wait_for("the leaf's JetStream", lambda: leaf.jsz().get("config", {}).get("domain") == "gw1", 30, [leaf])
        msgs = [("sensors/gwdev1/temp", b'{"value": 1}'), ("sensors/gwdev2/temp", b'{"value": 2}')]
        # The cluster's stream stores what the gateway's devices publish (no other subscriber).
        stored = run(_stream_count(hub.url, lambda: mqtt_publish(leaf.ports["mqtt"], "device", DEVICE_PW, msgs)))
        assert stored == len(msgs)
        got = run(_collect(cluster[2].url, "p.>", 2, lambda: mqtt_publish(
            leaf.ports["mqtt"], "device", DEVICE_PW, msgs)))
        assert sorted(SUBJECT.sub(r"\2.\3", s) for s, _ in got) == ["gwdev1.temp", "gwdev2.temp"], got
        # The leaf maps with the cluster's partition function: the same partition as a direct publish.
        direct = run(_collect(cluster[2].url, "p.*.sensors.gwdev1.temp", 1, lambda: mqtt_publish(
            cluster[1].ports["mqtt"], "device", DEVICE_PW, msgs[:1])))
        assert [s for s, _ in direct] == [s for s, _ in got if ".gwdev1." in s]
    finally:
        leaf.stop()
