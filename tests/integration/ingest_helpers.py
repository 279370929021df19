"""Helpers for the ingest integration tests: a QoS 1 publisher that knows what the broker
acknowledged, an ingester run in-process or as a subprocess, and store queries."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from service.config import Settings
from service.records import Reading, StreamKey
from service.store.base import Store

REPO = Path(__file__).resolve().parents[2]
BASE_NS = (time.time_ns() // 10**9 - 3600) * 10**9  # an hour ago, whole seconds


def make_settings(mqtt_port: int, store_url: str, spool: Path, client_id: str = "it-ingest", **ingest: object) -> Settings:
    s = Settings()  # type: ignore[call-arg]
    s.mqtt.url = f"mqtt://127.0.0.1:{mqtt_port}"
    s.mqtt.client_id = client_id
    s.mqtt.reconnect_min_s = 1
    s.mqtt.reconnect_max_s = 2
    s.store.url = store_url
    s.store.spool_dir = spool
    for k, v in ingest.items():
        setattr(s.ingest, k, v)
    return s


def readings(n: int, streams: int, start_ns: int = BASE_NS) -> list[Reading]:
    """n readings spread round-robin over ``streams`` streams, distinct timestamps per stream."""
    return [
        Reading(StreamKey(f"dev{i % streams:04d}", "temp"), start_ns + (i // streams) * 1_000_000 + 7, i * 0.25 - 1000)
        for i in range(n)
    ]


def payload(r: Reading) -> bytes:
    return f'{{"ts": {r.ts_ns}, "value": {r.value!r}}}'.encode()


def acked(info: paho.MQTTMessageInfo) -> bool:
    # is_published() raises for a message queued while disconnected (rc NO_CONN) even after
    # paho resent it and the broker acknowledged it; the flag itself is what we need.
    return bool(info._published)


@dataclass
class Publisher:
    """A QoS 1 publisher that reconnects and resends what the broker has not acknowledged."""

    port: int
    client_id: str = "it-publisher"
    infos: list[tuple[Reading, paho.MQTTMessageInfo]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311,
                                  clean_session=False)
        # 0 = no paho limit (a limit makes paho rescan all in-flight messages per PUBACK);
        # publish() waits for acks every 500 messages, which bounds the window instead.
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", self.port)
        assert self.client.loop_start() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(self, rs: Iterable[Reading], rate: float | None = None, topic: str = "sensors/{d}/{q}",
                body: Callable[[Reading], bytes] = payload) -> None:
        t0 = time.monotonic()
        for k, r in enumerate(rs):
            info = self.client.publish(topic.format(d=r.stream.device, q=r.stream.quantity), body(r), qos=1)
            # NO_CONN is fine: paho queues QoS 1 messages and sends them after reconnecting.
            assert info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN), info.rc
            self.infos.append((r, info))
            if rate is not None:
                ahead = (k + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            elif k % 500 == 499:
                self.wait_acked(timeout=60, upto=len(self.infos) - 1000)

    def wait_acked(self, timeout: float = 60, upto: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = self.infos[: upto if upto is not None else len(self.infos)]
        for _, info in pending:
            while not acked(info):
                assert time.monotonic() < deadline, "broker did not acknowledge in time"
                time.sleep(0.01)

    def acked(self) -> list[Reading]:
        return [r for r, info in self.infos if acked(info)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stored(store: Store, streams: Iterable[StreamKey]) -> list[Reading]:
    got = store.read_last_many(sorted(set(streams)), 10**7)
    return sorted((r for rs in got.values() for r in rs), key=lambda r: (r.stream, r.ts_ns))


def wait_stored(store: Store, expected: list[Reading], timeout: float = 60) -> list[Reading]:
    """Poll the store until it holds ``expected`` (or the timeout); returns what it holds."""
    want = sorted(expected, key=lambda r: (r.stream, r.ts_ns))
    deadline = time.monotonic() + timeout
    while True:
        got = stored(store, {r.stream for r in expected})
        if len(got) >= len(want) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


class IngestProcess:
    """``python -m service.cli ingest`` with settings from the environment."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logpath = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_subscribed: bool = True) -> None:
        mark = self.logpath.read_text().count("MQTT subscribed") if self.logpath.exists() else 0
        with self.logpath.open("ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "ingest", "--status-every", "5"],
                                         cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while wait_subscribed and self.logpath.read_text().count("MQTT subscribed") <= mark:
            assert self.proc.poll() is None, self.logpath.read_text()[-3000:]
            assert time.monotonic() < deadline, "ingester did not subscribe: " + self.logpath.read_text()[-3000:]
            time.sleep(0.1)

    def kill(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_in_thread(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t
