"""NATS in and out on a real 3-node nats-server cluster: two writers in the consumer group store
every reading once in a real influxd; refused messages are counted and never redelivered;
alerts reach the alerts stream once per event (replays deduplicated) and MQTT subscribers."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from paho.mqtt.enums import CallbackAPIVersion

from service.alerts.payload import alert_payload, forecast_payload
from service.config import NatsSettings, Settings
from service.ingest.ingester import Ingester
from service.metrics import Metrics
from service.nats import outputs, provision
from service.nats.link import NatsLink
from service.nats.outputs import NatsAlertPublisher
from service.nats.writer_source import MAX_ACK_PENDING, NatsReadingsSource
from service.records import Alert, Forecast, Reading, StreamKey
from service.store import open_store
from service.wiring import build_ingester
from tests.integration.ingest_helpers import (
    IngestProcess,
    Publisher,
    make_settings,
    payload,
    readings,
    wait_stored,
)
from tools.localservers import NATS_SERVER, Influxd, NatsCluster, free_port, start_nats


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    """A 3-node cluster of this module's own: a cluster takes one readings stream (subjects p.>),
    and the session's shared one may hold another test's."""
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server not installed (make setup installs it)")
    with start_nats(3, partitions=4) as c:
        yield c


def _settings(cluster: NatsCluster, stream: str, store_url: str, spool: Path) -> Settings:
    s = make_settings(1, store_url, spool)  # the MQTT settings are not used with nats.url set
    s.nats.url = cluster.url
    s.nats.stream = stream
    s.nats.replicas = 3
    s.nats.partitions = 4
    s.nats.fetch_batch = 50  # small pulls: both writers get a share of 2,000 readings
    s.ingest.dead_letter_topic = "sensorcast/deadletter"
    return s


def _drop(cluster: NatsCluster, names: provision.Names) -> None:
    """Delete what provisioning created: the session's shared cluster takes one readings stream
    (subjects p.>) at a time, so the next test can create its own."""
    link = NatsLink(NatsSettings(url=cluster.url), "test-drop")
    link.start()
    try:
        link.run(provision.remove_all(link.js, names), 60)
    finally:
        link.close()


def _refused(m: Metrics) -> float:
    return sum(s.value for metric in m.readings_refused.collect() for s in metric.samples
               if s.name.endswith("_total"))


def test_two_writers_store_every_reading_once(cluster: NatsCluster, influxd: Influxd, tmp_path: Path) -> None:
    url = f"influxdb://127.0.0.1:{influxd.port}/natsingest"
    metrics = [Metrics(), Metrics()]
    ings: list[Ingester] = []
    for i in range(2):
        s = _settings(cluster, "WRITERS", url, tmp_path / f"spool{i}")
        ing = build_ingester(s, open_store(s.store), metrics[i])
        assert isinstance(ing.source, NatsReadingsSource)
        ing.start()
        ings.append(ing)
    for ing in ings:
        assert ing.source is not None and ing.source.subscribed.wait(60)
        assert ing.status().broker_connected
    expected = readings(2_000, 40)
    via_mqtt, via_js = expected[:1_000], expected[1_000:]
    # One message with a good and a bad line: the good reading is stored, the message acked.
    partial = Reading(StreamKey("partial", "temp"), expected[0].ts_ns, 1.5)
    expected.append(partial)
    link = NatsLink(_settings(cluster, "WRITERS", url, tmp_path / "x").nats, "test-pub")
    link.start()
    dead: list[bytes] = []

    async def watch_dead_letters() -> None:
        async def got_one(msg: Msg) -> None:
            dead.append(msg.data)

        await link.nc.subscribe("sensorcast.deadletter", cb=got_one)
        await link.nc.flush()

    link.run(watch_dead_letters())
    pub = Publisher(cluster.nodes[1].mqtt_port, client_id="nats-ingest-pub")
    store = open_store(make_settings(1, url, tmp_path / "unused").store)
    try:
        # Devices speak MQTT to NATS's listener; other clients publish to JetStream directly
        # (the servers' mapping puts both on the device's partition).
        pub.publish(via_mqtt)
        pub.publish([via_mqtt[0]], body=lambda r: b"not a reading")  # refused
        pub.wait_acked()

        async def js_publish() -> None:
            for r in via_js:
                await link.js.publish(f"sensors.{r.stream.device}.{r.stream.quantity}", payload(r))
            await link.js.publish("sensors.partial.temp",
                                  f"m value=1.5 {partial.ts_ns}\nm value=\"abc\" {partial.ts_ns + 1}".encode())

        link.run(js_publish(), 60)
        got = wait_stored(store, expected, timeout=120)
        deadline = time.monotonic() + 30
        while sum(_source(i).acked + _source(i).terminated for i in ings) < 2_002 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a redelivery would show up here

        async def consumer() -> tuple[int, int, int]:
            info = await link.js.consumer_info("WRITERS", "sensorcast-writers")
            return info.num_ack_pending, info.num_redelivered, info.num_pending

        ack_pending, redelivered, left = link.run(consumer())
    finally:
        pub.close()
        link.close()
        for ing in ings:
            ing.stop()
            ing.store.close()
        store.close()
        _drop(cluster, outputs.names_for(_settings(cluster, "WRITERS", url, tmp_path / "x")))
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))
    shares = [ing.status().stored for ing in ings]
    assert sum(shares) == 2_001, shares  # each reading written once: no message went to both writers
    assert min(shares) > 0, shares  # and both did part of the work
    assert sum(_source(i).acked for i in ings) == 2_001
    assert sum(_source(i).terminated for i in ings) == 1  # the bad payload, ended for good
    assert sum(_source(i).redelivered for i in ings) == 0  # and no message was delivered twice
    assert sum(_refused(m) for m in metrics) == 2  # it and the partial message's bad line
    # Each refused message reported on the dead-letter topic's subject, once.
    assert sorted(orjson.loads(d)["topic"] for d in dead) == ["sensors/dev0000/temp", "sensors/partial/temp"], dead
    assert (ack_pending, redelivered, left) == (0, 0, 0)


def test_a_killed_writers_messages_go_to_another_writer(cluster: NatsCluster, influxd: Influxd,
                                                         tmp_path: Path) -> None:
    """Writer A (a `sensorcast ingest` process) holds messages it cannot make durable (store
    down, spool full: nothing acknowledged) and is killed -9; writer B gets them all after the
    consumer's ack wait and stores each once."""
    url = f"influxdb://127.0.0.1:{influxd.port}/natskill"
    s = _settings(cluster, "KILLW", url, tmp_path / "spool-b")
    names = outputs.names_for(s)
    link = NatsLink(s.nats, "test-kill")
    link.start()
    a = IngestProcess({
        "SENSORCAST_NATS__URL": cluster.url, "SENSORCAST_NATS__STREAM": "KILLW", "SENSORCAST_NATS__REPLICAS": "3",
        "SENSORCAST_NATS__FETCH_BATCH": "50", "SENSORCAST_STORE__URL": f"influxdb://127.0.0.1:{free_port()}/x",
        "SENSORCAST_STORE__SPOOL_DIR": str(tmp_path / "spool-a"), "SENSORCAST_STORE__SPOOL_MAX_BYTES": "1",
    }, tmp_path / "writer-a.log")
    b: Ingester | None = None
    store = open_store(s.store)
    expected = readings(500, 10)
    try:
        link.run(provision.ensure_all(link.js, s.nats, names), 90)
        async def publish() -> None:
            for r in expected:
                await link.js.publish(f"sensors.{r.stream.device}.{r.stream.quantity}", payload(r))

        link.run(publish(), 60)

        async def consumer() -> tuple[int, int, int]:
            try:
                info = await link.js.consumer_info(names.readings, "sensorcast-writers")
            except NotFoundError:  # no writer has created it yet
                return 0, 0, 0
            return info.num_ack_pending, info.num_redelivered, info.ack_floor.stream_seq if info.ack_floor else 0

        a.start(wait_subscribed=False)
        deadline = time.monotonic() + 120  # a process start under load
        while link.run(consumer())[0] == 0:  # A has taken messages it cannot acknowledge
            assert a.proc is not None and a.proc.poll() is None, a.logpath.read_text()[-3000:]
            assert time.monotonic() < deadline, a.logpath.read_text()[-3000:]
            time.sleep(0.2)
        a.kill(signal.SIGKILL)
        b = build_ingester(s, open_store(s.store), Metrics())
        b.start()
        assert _source(b).subscribed.wait(60)
        # The writers' ack wait is 120 s; shortened here (a consumer update: every writer's
        # start sets it back) so A's messages come back within seconds.
        link.run(link.js.add_consumer(names.readings, ConsumerConfig(
            durable_name="sensorcast-writers", name="sensorcast-writers", ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, filter_subject="p.>", ack_wait=3.0, max_ack_pending=MAX_ACK_PENDING)))
        got = wait_stored(store, expected, timeout=120)
        deadline = time.monotonic() + 30
        while _source(b).acked < 500 and time.monotonic() < deadline:
            time.sleep(0.1)
        pending, redelivered, floor = link.run(consumer())
    finally:
        a.stop()
        if b is not None:
            b.stop()
            b.store.close()
        store.close()
        link.close()
        _drop(cluster, names)
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))
    assert _source(b).acked == 500 and b.status().stored == 500  # B stored each once, A acknowledged none
    assert _source(b).redelivered > 0  # A's share came back to B
    assert (pending, redelivered, floor) == (0, 0, 500)  # all acknowledged, none outstanding


def _source(ing: Ingester) -> NatsReadingsSource:
    assert isinstance(ing.source, NatsReadingsSource)
    return ing.source


def _alert(state: str = "firing") -> Alert:
    return Alert(key=StreamKey("pump 1", "temp"), quantity="temp", state=state, ts_ns=1_700_000_000_000_000_000,  # type: ignore[arg-type]
                 value=9.5, expected=1.0, lower=0.0, upper=2.0, score=7.0, model="m", model_version="1",
                 warm=True)


class _MqttWatch:
    def __init__(self, port: int, client_id: str, topic: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, m.payload, m.retain))
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # A fresh cluster's first MQTT client waits for the MQTT streams to be created (replicated).
        assert self.subscribed.wait(90)

    def wait(self, n: int, timeout: float = 20) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_alerts_are_stored_once_and_reach_mqtt_subscribers(cluster: NatsCluster) -> None:
    s = Settings()  # type: ignore[call-arg]
    s.nats.url = cluster.url
    s.nats.stream = "ALERTOUT"
    s.nats.replicas = 3
    s.alerts.forecast_topic = "sensorcast/forecast/{stream}"
    names = outputs.names_for(s)
    first = NatsAlertPublisher(s.nats, s.alerts, names=names)
    first.start()
    watchers: list[_MqttWatch] = []
    try:
        # MQTT subscribers on the alerts stream leader's node and on another one (a message the
        # leader's JetStream sends itself is delivered differently from a routed one).
        leader = first.link.run(first.link.js.stream_info(names.alerts)).cluster.leader
        here = next(i for i, n in enumerate(cluster.nodes) if n.workdir.name == leader)
        mqtt_port = cluster.nodes[here].mqtt_port
        other_port = cluster.nodes[(here + 1) % 3].mqtt_port
        alerts = _MqttWatch(mqtt_port, "alert-watch", "sensorcast/alerts/#")
        alerts_other = _MqttWatch(other_port, "alert-watch-2", "sensorcast/alerts/#")
        states = _MqttWatch(mqtt_port, "state-watch", "sensorcast/state/#")
        forecasts = _MqttWatch(other_port, "fc-watch", "sensorcast/forecast/#")
        watchers += [alerts, alerts_other, states, forecasts]
        alert = _alert()
        first.publish_alert(alert)
        fc = Forecast(StreamKey("pump 1", "temp"), alert.ts_ns, 60.0, ("temp",), ((1.0,), (2.0,)), None, "m", "1")
        first.publish_forecast(fc, "pump 1", "temp")
        assert first.flush(30)
        # A new partition owner replaying the same readings fires the same alert again.
        second = NatsAlertPublisher(s.nats, s.alerts, names=names)
        second.publish_alert(alert)  # handed over before start: sent once started
        second.start()
        try:
            assert second.flush(30)
            second.publish_alert(_alert("resolved"))
            assert second.flush(30)
        finally:
            second.stop()
        assert (first.published, second.published, second.duplicates) == (1, 2, 1)
        link = NatsLink(s.nats, "test-read")
        link.start()
        try:
            async def read() -> tuple[int, bytes]:
                info = await link.js.stream_info(names.alerts)
                kv = await link.js.key_value(names.alert_state)
                entry = await kv.get(outputs.state_key(alert))
                return info.state.messages, entry.value or b""

            messages, state = link.run(read())
        finally:
            link.close()
        assert messages == 2  # firing once (the replay dropped by its message id), then resolved
        assert orjson.loads(state)["state"] == "resolved"  # the KV holds the check's current state
        for watch in (alerts, alerts_other):
            got = watch.wait(3, timeout=3)  # a third (the replayed firing) would be a double
            # The device name's space is escaped for NATS subjects ("pump%201"); the payload is the MQTT path's.
            assert [(t, p) for t, p, _ in got] == [
                ("sensorcast/alerts/pump%201/temp", alert_payload(alert)),
                ("sensorcast/alerts/pump%201/temp", alert_payload(_alert("resolved"))),
            ]
        assert [t for t, _, _ in states.wait(3)] == ["sensorcast/state/pump%201/temp/anomaly"] * 3
        assert forecasts.wait(1) == [("sensorcast/forecast/pump%201/temp", forecast_payload(fc), False)]
        # What nats-server 2.9 does for an MQTT client subscribing later: a core-NATS publish is
        # not an MQTT retained message, so it gets nothing (docs/scale.md: read the KV bucket).
        late = _MqttWatch(mqtt_port, "late-watch", "sensorcast/state/#")
        watchers.append(late)
        assert late.wait(1, timeout=2) == []
    finally:
        first.stop()
        for w in watchers:
            w.close()
        _drop(cluster, names)
