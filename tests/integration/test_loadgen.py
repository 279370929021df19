"""The latency benchmark's raw load generators against a real broker and a real HTTP server."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tools.bench.loadgen import RawHttp, RawPublisher, publish_packet
from tools.localservers import Mosquitto


def test_publish_packet_encodes_long_remaining_lengths() -> None:
    packet = publish_packet(b"t", b"x" * 200, mid=7)
    assert packet[0] == 0x32
    assert packet[1:3] == bytes([0x80 | (205 % 128), 205 // 128])  # 2+1 topic, 2 mid, 200 payload
    assert packet[3:6] == b"\x00\x01t" and packet[6:8] == b"\x00\x07"


def test_raw_publisher_delivers_every_message_and_counts_acks(mosquitto: Mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    done = threading.Event()
    n = 3000  # enough that many PUBACKs arrive in one read

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        got.append((msg.topic, msg.payload))
        if len(got) == n:
            done.set()

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="loadgen-sub")
    subscribed = threading.Event()
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("lg/#", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        pub = RawPublisher("127.0.0.1", mosquitto.port, "loadgen-pub")
        for i in range(n):
            pub.publish(b"lg/%d" % (i % 10), b"%d" % i)
            if pub.unacked > 200:
                pub.read_acks(1.0)
        deadline = time.monotonic() + 10
        while pub.unacked and time.monotonic() < deadline:
            pub.read_acks(0.1)
        assert pub.acked == n
        pub.close()
        assert done.wait(10)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert sorted(int(p) for _, p in got) == list(range(n))
    assert got[0] == ("lg/0", b"0")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:  # the name http.server dispatches to
        body = self.path.encode() * 1000 if self.path == "/big" else self.path.encode()
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_raw_http_reuses_one_connection_and_reads_whole_bodies(http_server: int) -> None:
    with RawHttp("127.0.0.1", http_server) as http:
        assert http.get("/a") == (200, b"/a")
        assert http.get("/big") == (200, b"/big" * 1000)  # spans several reads
        assert http.get("/missing") == (404, b"/missing")
        assert http.get("/b") == (200, b"/b")  # same socket: nothing left over from before
