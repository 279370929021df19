"""``sensorcast bench ingest``: sustained readings/s from MQTT (QoS 1) into the store.

Starts its own mosquitto and influxd (tools/localservers.py), then for each target:

* ``ceiling``: a bare subscriber (QoS 1, automatic acks) that only counts messages, on the
  same paho client class as the ingester (service/mqtt/leanclient.py);
* ``ceiling-stock``: the same with stock ``paho.Client``, to show what the lean path saves;
* ``influxdb`` / ``sqlite``: the real ingester (decode, batch, write, manual ack after
  the write), verified at the end by counting the points in the store.

Publishers run in separate processes, each owning a disjoint set of the streams, with a
bounded number of unacknowledged messages. ``--mode live`` measures while publishing
(everything shares the 2 cores); ``--mode backlog`` publishes first into the persistent
session and then measures how fast the ingester drains it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from service.config import Settings
from service.metrics import Metrics
from service.mqtt.leanclient import client_class
from service.store import open_store
from tools.localservers import start_influxd, start_mosquitto

_MAX_UNACKED = 5_000  # well below paho's 65,535 message ids, enough to keep the pipe full


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--readings", type=int, default=200_000, help="Readings per target.")
    parser.add_argument("--streams", type=int, default=1_000, help="Distinct streams.")
    parser.add_argument("--publishers", type=int, default=2, help="Publisher processes.")
    parser.add_argument("--targets", default="ceiling-stock,ceiling,influxdb,sqlite",
                        help="Comma-separated: ceiling-stock, ceiling, influxdb, sqlite.")
    parser.add_argument("--mode", choices=("live", "backlog"), default="live",
                        help="live: measure while publishing; backlog: publish first, then drain the broker's queue.")
    parser.add_argument("--per-message", type=int, default=1,
                        help="Readings per message: 1 = one JSON object each; K > 1 = JSON arrays of K readings of one stream.")
    parser.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5",
                        help="MQTT version of the ingester under test (3.1.1 parses cheaper; 5 is the default).")
    parser.add_argument("--timeout", type=float, default=600.0, help="Give up a target after this many seconds.")


def _messages(prefix: str, part: int, parts: int, n: int, streams: int, base_ns: int, k: int) -> list[tuple[str, bytes]]:
    """This publisher's share: reading i belongs to stream i % streams at step i // streams."""
    if k <= 1:
        return [
            (f"{prefix}/dev{i % streams:05d}/temp", b'{"ts":%d,"value":%d.5}' % (base_ns + (i // streams) * 1_000_000, i))
            for i in range(part, n, parts)
        ]
    steps = n // streams
    out = []
    for j in range(0, steps, k):
        for s in range(part, streams, parts):
            items = b",".join(
                b'{"ts":%d,"value":%d.5}' % (base_ns + t * 1_000_000, t * streams + s) for t in range(j, min(j + k, steps))
            )
            out.append((f"{prefix}/dev{s:05d}/temp", b"[" + items + b"]"))
    return out


def _publisher(
    port: int, prefix: str, part: int, parts: int, n: int, streams: int, base_ns: int, k: int, ready: Any, go: Any,
    cpu: Any,
) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{prefix}-{part}", protocol=paho.MQTTv311)
    # 0 = no paho limit: with a limit paho rescans every in-flight message on each PUBACK
    # (quadratic); the loop below bounds the unacknowledged messages itself.
    c.max_inflight_messages_set(0)
    c.max_queued_messages_set(0)
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    # One thread drives paho (no loop_start): publish() then writes straight to the socket
    # instead of waking a network thread per message, which halves the publisher's CPU and
    # leaves the shared cores to the broker and the ingester under test.
    while not c.is_connected():
        c.loop(0.1)
    # Pre-build the messages so the timed part is publishing only.
    msgs = _messages(prefix, part, parts, n, streams, base_ns, k)
    ready.release()
    go.wait()
    cpu0 = time.process_time()
    sent = 0
    for topic, body in msgs:
        while sent - acked[0] >= _MAX_UNACKED:
            c.loop(0.01)
        info = c.publish(topic, body, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")
        sent += 1
        if sent % 64 == 0:
            c.loop(0)  # read the PUBACKs that have arrived
    while acked[0] < sent:
        c.loop(0.01)
    cpu[part] = time.process_time() - cpu0
    c.disconnect()


class _Publishers:
    """Publisher processes that connect and prepare, then start together on ``go()``."""

    def __init__(self, port: int, prefix: str, args: argparse.Namespace, base_ns: int) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Semaphore(0)
        self._go = ctx.Event()
        self._cpu = ctx.Array("d", args.publishers)  # CPU seconds per publisher, timed part only
        self.procs = [
            ctx.Process(
                target=_publisher,
                args=(port, prefix, p, args.publishers, args.readings, args.streams, base_ns, args.per_message,
                      self._ready, self._go, self._cpu),
            )
            for p in range(args.publishers)
        ]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            self._ready.acquire()

    def go(self) -> None:
        self._go.set()

    def join(self) -> float:
        """Wait for the publishers; returns the CPU seconds they spent publishing."""
        for p in self.procs:
            p.join()
        return float(sum(self._cpu[:]))


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _ceiling(port: int, args: argparse.Namespace, base_ns: int, cls: type[paho.Client]) -> dict[str, float]:
    count = [0]
    # Same MQTT version as the ingester under test: paho parses MQTT 5 messages dearer.
    v5 = args.mqtt_protocol == "5"
    sub = cls(CallbackAPIVersion.VERSION2, client_id="bench-ceiling", protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    subscribed = threading.Event()

    k = max(1, args.per_message)

    def on_message(*_: Any) -> None:
        count[0] += k  # readings carried (the ceiling does not decode)

    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("ceil/+/+", qos=1)
    sub.loop_start()
    subscribed.wait(10)
    pubs = _Publishers(port, "ceil", args, base_ns)
    cpu0, t0 = time.process_time(), time.monotonic()
    pubs.go()
    ok = _wait(lambda: count[0] >= args.readings, args.timeout)
    t1, cpu1 = time.monotonic(), time.process_time()
    pub_cpu = pubs.join()
    sub.disconnect()
    sub.loop_stop()
    return {"received": count[0], "seconds": t1 - t0, "rate": count[0] / (t1 - t0), "ok": float(ok),
            "cpu_us": (cpu1 - cpu0) / max(1, count[0] // k) * 1e6, "pub_cpu_us": pub_cpu / max(1, count[0] // k) * 1e6}


def _ingest(target: str, mqtt_port: int, influx_port: int, work: Path, args: argparse.Namespace, base_ns: int) -> dict[str, float]:
    from service.wiring import build_ingester

    s = Settings()
    s.mqtt.url = f"mqtt://127.0.0.1:{mqtt_port}"
    s.mqtt.client_id = f"bench-ingest-{target}"
    s.mqtt.protocol = args.mqtt_protocol
    s.ingest.topic = f"{target}/{{device}}/{{quantity}}"
    s.store.spool_dir = work / f"spool-{target}"
    s.store.url = (f"influxdb://127.0.0.1:{influx_port}/bench" if target == "influxdb" else f"sqlite:///{work}/bench.db")
    store = open_store(s.store)
    metrics = Metrics()
    ing = build_ingester(s, store, metrics)
    if args.mode == "backlog":
        # Create the persistent session, leave, let the broker queue everything, come back.
        ing.start()
        assert ing.source is not None and ing.source.subscribed.wait(10)
        ing.stop()
        pubs = _Publishers(mqtt_port, target, args, base_ns)
        pubs.go()
        pub_cpu = pubs.join()
        ing = build_ingester(s, store, metrics)
        cpu0, t0 = time.process_time(), time.monotonic()
        ing.start()
    else:
        ing.start()
        assert ing.source is not None and ing.source.subscribed.wait(10)
        pubs = _Publishers(mqtt_port, target, args, base_ns)
        cpu0, t0 = time.process_time(), time.monotonic()
        pubs.go()
    ok = _wait(lambda: ing.status().stored >= args.readings, args.timeout)
    t1, cpu1 = time.monotonic(), time.process_time()
    if args.mode == "live":
        pub_cpu = pubs.join()
    stored = ing.status().stored
    ing.stop()
    if target == "influxdb":
        body = store.query('SELECT count("value") FROM "readings"')  # type: ignore[attr-defined]
        series = body["results"][0].get("series") or [{"values": [[0, 0]]}]
        verified = int(series[0]["values"][0][1])
    else:
        verified = sum(len(v) for v in store.read_last_many(store.streams(), 10**9).values())
    store.close()
    return {"stored": stored, "verified": verified, "seconds": t1 - t0, "rate": stored / (t1 - t0), "ok": float(ok),
            "cpu_us": (cpu1 - cpu0) / max(1, stored) * 1e6, "pub_cpu_us": pub_cpu / max(1, stored // max(1, args.per_message)) * 1e6}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    work = Path(tempfile.mkdtemp(prefix="sc-bench-ingest-"))
    mosq = start_mosquitto(autosave_s=30)
    influx = start_influxd("bench")
    base_ns = (time.time_ns() // 10**9 - 86_400) * 10**9
    results: dict[str, dict[str, float]] = {}
    try:
        if args.per_message > 1 and args.readings % (args.streams * args.per_message):
            raise SystemExit("--readings must be a multiple of --streams x --per-message")
        print(f"ingest benchmark: {args.readings} readings over {args.streams} streams, QoS 1, "
              f"{args.per_message} reading(s) per message, {args.publishers} publisher processes, mode {args.mode}, "
              f"ingester MQTT {args.mqtt_protocol}")
        for t in targets:
            if t in ("ceiling", "ceiling-stock"):
                stock = t == "ceiling-stock"
                results[t] = r = _ceiling(mosq.port, args, base_ns, paho.Client if stock else client_class())
                label = "stock paho" if stock else "lean paho"
                print(f"  {t:<13} (bare {label} subscriber, count only): {r['rate']:>9,.0f} readings/s "
                      f"({r['received']:,.0f} in {r['seconds']:.2f} s, {r['cpu_us']:.1f} us CPU/msg; "
                      f"publishers {r['pub_cpu_us']:.1f} us CPU/msg)")
            else:
                results[t] = r = _ingest(t, mosq.port, influx.port, work, args, base_ns)
                lost = args.readings - r["verified"]
                print(f"  {t:<8} ingester: {r['rate']:>9,.0f} readings/s stored "
                      f"({r['stored']:,.0f} in {r['seconds']:.2f} s, {r['cpu_us']:.1f} us CPU/reading in this "
                      f"process, publishers {r['pub_cpu_us']:.1f} us CPU/msg); verified in store: {r['verified']:,.0f}, lost: {lost:,.0f}")
        for c in ("ceiling", "ceiling-stock"):
            for t in ("influxdb", "sqlite"):
                if c in results and t in results:
                    print(f"  ratio {t}/{c}: {results[t]['rate'] / results[c]['rate']:.2f}")
    finally:
        mosq.stop()
        influx.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.get("ok", 1.0) for r in results.values()) else 1
