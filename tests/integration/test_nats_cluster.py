"""The JetStream set-up on a real 3-node nats-server cluster: provisioning, the partition
mapping behind the MQTT listener, and losing a node."""

from __future__ import annotations

import asyncio
import time

import paho.mqtt.client as mqtt

from service.config import NatsSettings
from service.nats import provision
from service.nats.link import NatsLink
from tools.localservers import NatsCluster


def _link(cluster: NatsCluster, stream: str) -> tuple[NatsLink, NatsSettings]:
    settings = NatsSettings(url=cluster.url, replicas=3, stream=stream, partitions=4)
    link = NatsLink(settings, "test")
    link.start()
    return link, settings


def test_provisioning_is_idempotent_and_replicated(nats_cluster: NatsCluster) -> None:
    link, settings = _link(nats_cluster, "PROV")
    try:
        names = link.run(provision.ensure_all(link.js, settings), 90)
        assert link.run(provision.ensure_all(link.js, settings), 90) == names
        info = link.run(link.js.stream_info(names.readings))
        assert info.config.subjects == ["p.>"] and info.config.num_replicas == 3
        kv = link.run(link.js.key_value(names.leases))
        assert link.run(kv.status()).ttl == settings.lease_ttl_s
        # the shared cluster takes one readings stream (p.>) at a time: leave none behind
        assert len(link.run(provision.remove_all(link.js, names), 60)) == 6
        assert link.run(provision.remove_all(link.js, names), 60) == []
    finally:
        link.close()


def test_mqtt_publish_lands_in_its_device_partition(nats_cluster: NatsCluster) -> None:
    link, _settings = _link(nats_cluster, "MAP")
    got: list[str] = []
    try:
        async def on_msg(msg: object) -> None:
            got.append(msg.subject)  # type: ignore[attr-defined]

        link.run(link.nc.subscribe("p.>", cb=on_msg))
        link.run(link.nc.flush())
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="map-test")
        client.connect("127.0.0.1", nats_cluster.nodes[1].mqtt_port)
        client.loop_start()
        for _ in range(2):
            for dev in ("dev1", "dev2", "dev3"):
                for q in ("temp", "rpm"):
                    client.publish(f"sensors/{dev}/{q}", b"1.0", qos=1).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
        deadline = time.monotonic() + 10
        while len(got) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) == 12
        partition = {s.split(".", 2)[2].rsplit(".", 1)[0]: set() for s in got}
        for s in got:
            partition[s.split(".", 2)[2].rsplit(".", 1)[0]].add(int(s.split(".")[1]))
        # every quantity of a device, every time, in one partition among the 4
        assert all(len(p) == 1 and next(iter(p)) in range(4) for p in partition.values()), partition
    finally:
        link.close()


def test_a_killed_node_loses_nothing_acknowledged(fresh_nats) -> None:  # type: ignore[no-untyped-def]
    cluster = fresh_nats(nodes=3, partitions=4, mqtt=False)
    link, settings = _link(cluster, "KILL")
    try:
        names = link.run(provision.ensure_all(link.js, settings), 90)

        async def publish(i: int) -> bool:
            async def once() -> object:
                return await link.js.publish(f"p.{i % 4}.sensors.dev{i % 7}.temp", str(i).encode())
            try:
                await provision.retrying(f"publish {i}", once, timeout_s=30)
                return True
            except Exception:
                return False

        async def first_half() -> list[bool]:
            return await asyncio.gather(*(publish(i) for i in range(500)))

        acked = sum(link.run(first_half(), 60))
        cluster.kill(0)
        acked += sum(link.run(publish(i), 60) for i in range(500, 1000))
        assert acked == 1000

        async def count() -> int:
            return (await link.js.stream_info(names.readings)).state.messages

        n = link.run(provision.retrying("stream info", count, 60), 70)
        assert n == 1000
    finally:
        link.close()
