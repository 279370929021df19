"""paho-mqtt's client with a cheaper receive path for the ingest hot path.

Measured on the 2-core box (``sensorcast bench ingest``), stock paho 2.2 spends ~25 us
(MQTT 3.1.1) to ~38 us (MQTT 5) of CPU per QoS 1 message. Most of it is not MQTT work:

* four ``recv`` system calls per message (1 byte command, 1+ byte length, body);
* an MQTT 5 ``Properties`` object built and cleared for every PUBLISH, even one with no
  properties at all (about a third of the MQTT 5 cost);
* one ``send`` plus one wake-up byte per PUBACK when acks come from the writer thread.

``LeanClient`` changes only those three things and leaves every other path (connect,
subscribe, reconnect, TLS, QoS 2, messages that do carry properties) to paho:

* the socket is read ahead in 64 KiB chunks and paho's small reads are served from
  memory; ``pending()`` tells paho's loop that buffered bytes remain (the hook paho
  already uses for TLS);
* a QoS 0/1 PUBLISH without properties is decoded here, the rest by paho;
* ``ack_many`` queues the PUBACKs of a whole batch as one write.

It relies on paho internals (``_create_socket``, ``_handle_publish``, ``_in_packet``,
``_handle_on_message``, ``_packet_queue``). ``SUPPORTED`` checks them at import; when a
future paho lacks one, ``make_client(lean=True)`` falls back to the stock client and the test
``tests/unit/test_leanclient.py`` fails so the gap is seen.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

_READ_AHEAD = 65_536
_BURST = 512  # packets per loop pass before paho gets to write (acks) and keepalive again
_PUBACK = 0x40
_PUBACK_PACK = struct.Struct("!BBH")

SUPPORTED = all(
    hasattr(paho.Client, name)
    for name in ("_create_socket", "_handle_publish", "_handle_on_message", "_packet_queue", "_send_puback")
)


class ReadAheadSocket:
    """A socket proxy that fills a buffer with one ``recv`` and hands it out piecemeal."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._data):
            data: bytes = self._sock.recv(max(bufsize, _READ_AHEAD))  # BlockingIOError etc. pass to paho
            if len(data) <= bufsize:
                self._data, self._pos = b"", 0
                return data
            self._data, self._pos = data, 0
        end = self._pos + bufsize
        out = self._data[self._pos:end]
        self._pos = min(end, len(self._data))
        return out

    def buffered(self) -> int:
        return len(self._data) - self._pos

    def pending(self) -> int:
        """Bytes paho can read without waiting for the socket (ours plus TLS's own)."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._data) - self._pos + inner

    def __getattr__(self, name: str) -> Any:  # send, close, fileno, setblocking, ...
        return getattr(self._sock, name)


class LeanClient(paho.Client):
    """paho.Client with read-ahead, a short PUBLISH decode and batched PUBACKs."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        return sock if self._transport == "websockets" else ReadAheadSocket(sock)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho handles one packet per select(); go on while whole packets sit in our buffer.
        rc = super().loop_read(max_packets)
        for _ in range(_BURST):
            sock = self._sock
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not isinstance(sock, ReadAheadSocket) or not sock.buffered():
                break
            rc = super().loop_read(1)
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        n = len(packet)
        if qos == 2 or n < 2:
            return super()._handle_publish()  # paho's full path (and its malformed-packet errors)
        topic_end = 2 + (packet[0] << 8 | packet[1])
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        if topic_end == 2 and not v5:
            return super()._handle_publish()  # an empty topic: paho refuses it on 3.1.1
        pos, mid = topic_end, 0
        if qos:
            mid = (packet[pos] << 8 | packet[pos + 1]) if pos + 2 <= n else -1
            pos += 2
        if v5:
            if pos >= n or packet[pos] != 0:
                return super()._handle_publish()  # has properties (or is malformed): paho decodes them
            pos += 1
        if pos > n or mid < 0:
            return super()._handle_publish()  # truncated: paho raises its malformed-packet error
        message = paho.MQTTMessage(mid=mid, topic=bytes(packet[2:topic_end]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = bytes(packet[pos:])
        message.timestamp = time.monotonic()
        # message.properties stays None: the ingest path never reads publish properties.
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages with one queued write (PUBACKs back to back)."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        packet = b"".join([_PUBACK_PACK.pack(_PUBACK, 2, mid) for mid in mids])
        return self._packet_queue(_PUBACK, packet, 0, 0)


def client_class() -> type[paho.Client]:
    return LeanClient if SUPPORTED else paho.Client
