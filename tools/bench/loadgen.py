"""Cheap load generators for the latency benchmark: MQTT 3.1.1 QoS 1 publisher, HTTP/1.1 GET.

Why not paho and httpx here: on the 2-core box the benchmark shares the CPU with the
service it measures, while in a real deployment that load comes from other machines.
Measured: at 10k messages/s a paho publisher took 0.35 cores, this one 0.07; one GET
took 1.05 ms of client-thread CPU with httpx and 0.15 ms with this client (against a
local http.server in the same process). These clients write pre-built packets on a
plain socket, so the measured latency is the service's, not the load generator's. They
speak only what the benchmark needs: no TLS, no reconnect, no QoS 2, no chunked
responses.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

_PUBACK = 0x40
_CONNACK = 0x20


def _varint(n: int) -> bytes:
    """MQTT remaining-length encoding (7 bits per byte, high bit = more)."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, keepalive_s: int = 0) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive_s) + _utf8(client_id)  # clean session
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, mid: int) -> bytes:
    """A QoS 1 PUBLISH (no retain, no dup)."""
    body = _utf8(topic) + struct.pack("!H", mid) + payload
    return b"\x32" + _varint(len(body)) + body


class RawPublisher:
    """QoS 1 publisher on one blocking socket; PUBACKs are read as they arrive."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id))
        ack = self._read_exact(4)
        if ack[0] != _CONNACK or ack[3] != 0:
            raise ConnectionError(f"broker refused the connection: CONNACK {ack.hex()}")
        self.sent = 0
        self.acked = 0
        self._mid = 0
        self._buf = b""

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def publish(self, topic: bytes, payload: bytes) -> None:
        self._mid = self._mid % 65535 + 1  # packet ids 1..65535
        self.sock.sendall(publish_packet(topic, payload, self._mid))
        self.sent += 1

    def read_acks(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for PUBACKs (0: only what has arrived); returns the count read."""
        self.sock.settimeout(timeout_s if timeout_s > 0 else 0.0)
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            return 0
        finally:
            self.sock.settimeout(10)
        if not data:
            raise ConnectionError("broker closed the connection")
        buf = self._buf + data
        whole = len(buf) // 4 * 4  # a PUBACK is 4 bytes, and the broker sends us nothing else
        if any(buf[i] != _PUBACK for i in range(0, whole, 4)):
            raise ConnectionError(f"unexpected packet from the broker: {buf[:8].hex()}")
        self._buf = buf[whole:]
        self.acked += whole // 4
        return whole // 4

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


class RawHttp:
    """Keep-alive HTTP/1.1 GET on one socket; returns (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self._buf:
            self._recv()
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self._recv_raw()
        self._buf = rest[length:]
        return status, rest[:length]

    def _recv(self) -> None:
        self._buf += self._recv_raw()

    def _recv_raw(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawHttp:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
