"""The lean paho client decodes exactly what stock paho decodes, reads ahead correctly and
writes batched PUBACKs byte for byte as MQTT wants them."""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.mqtt.leanclient import SUPPORTED, LeanClient, ReadAheadSocket, client_class

PROTOCOLS = {"3.1.1": paho.MQTTv311, "5": paho.MQTTv5}


def test_the_installed_paho_has_what_the_lean_client_needs() -> None:
    # If this fails after a paho upgrade, the ingester silently runs the slower stock client.
    assert SUPPORTED
    assert client_class() is LeanClient


def _outcome(cls: type[paho.Client], protocol: int, header: int, body: bytes) -> Any:
    client = cls(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol, manual_ack=True)
    got: list[paho.MQTTMessage] = []
    client.on_message = lambda _c, _u, m: got.append(m)
    client._in_packet = {"command": header, "packet": bytearray(body)}
    try:
        rc = client._handle_publish()
    except Exception as exc:  # the kind of failure must match too
        return ("raised", type(exc).__name__)
    return (int(rc), [(m._topic, m.payload, m.qos, m.mid, m.dup, m.retain) for m in got])


def _publish_body(topic: bytes, qos: int, mid: int, props: bytes | None, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += props
    return body + payload


def _props(expiry: int | None, user: tuple[str, str] | None) -> bytes:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry is not None:
        p.MessageExpiryInterval = expiry
    if user is not None:
        p.UserProperty = user
    return bytes(p.pack())  # type: ignore[no-untyped-call]


@settings(max_examples=300, deadline=None)
@given(
    proto=st.sampled_from(sorted(PROTOCOLS)),
    qos=st.integers(0, 2), dup=st.booleans(), retain=st.booleans(),
    topic=st.binary(min_size=0, max_size=40), mid=st.integers(1, 65535),
    expiry=st.none() | st.integers(0, 2**32 - 1),
    user=st.none() | st.tuples(st.text(max_size=8), st.text(max_size=8)),
    payload=st.binary(max_size=200),
)
def test_well_formed_publishes_decode_as_paho_decodes_them(
    proto: str, qos: int, dup: bool, retain: bool, topic: bytes, mid: int,
    expiry: int | None, user: tuple[str, str] | None, payload: bytes,
) -> None:
    header = 0x30 | (dup << 3) | (qos << 1) | retain
    props = _props(expiry, user) if proto == "5" else None
    body = _publish_body(topic, qos, mid, props, payload)
    lean = _outcome(LeanClient, PROTOCOLS[proto], header, body)
    assert lean == _outcome(paho.Client, PROTOCOLS[proto], header, body)


@settings(max_examples=500, deadline=None)
@given(proto=st.sampled_from(sorted(PROTOCOLS)), header=st.integers(0x30, 0x3F), body=st.binary(max_size=24))
def test_arbitrary_bytes_give_the_same_message_or_the_same_error(proto: str, header: int, body: bytes) -> None:
    if (header & 0x06) == 0x06:
        return  # QoS 3 is not a thing; both hand it to paho's packet handler
    lean = _outcome(LeanClient, PROTOCOLS[proto], header, body)
    assert lean == _outcome(paho.Client, PROTOCOLS[proto], header, body)


def test_read_ahead_serves_small_reads_from_one_recv_and_reports_pending() -> None:
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        wrapped = ReadAheadSocket(b)
        with pytest.raises(BlockingIOError):
            wrapped.recv(1)  # nothing sent yet: the socket's own error reaches paho
        a.sendall(b"\x30\x05abcde" * 3)
        assert wrapped.recv(1) == b"\x30"
        assert wrapped.pending() == 20
        assert wrapped.recv(1) == b"\x05"
        assert wrapped.recv(5) == b"abcde"
        assert wrapped.recv(100) == b"\x30\x05abcde\x30\x05abcde"  # never more than is buffered
        assert wrapped.pending() == 0
        a.sendall(b"xyz")
        assert wrapped.recv(10) == b"xyz"  # a read that fits is handed over whole
        assert wrapped.fileno() == b.fileno()  # everything else is the socket's
        a.close()
        assert wrapped.recv(1) == b""  # end of stream, as paho expects to see it
    finally:
        a.close()
        b.close()


def test_ack_many_writes_one_puback_per_message_in_one_send() -> None:
    broker, ours = socket.socketpair()
    try:
        client = LeanClient(CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True)
        client._sock = ReadAheadSocket(ours)
        assert client.ack_many([1, 2, 258, 65535]) == 0
        client.loop_write()
        broker.settimeout(2)
        assert broker.recv(100) == bytes.fromhex("40020001" "40020002" "40020102" "4002ffff")
        assert client.ack_many([]) == 0
    finally:
        broker.close()
        ours.close()


def test_one_loop_pass_handles_every_whole_packet_already_read() -> None:
    broker, ours = socket.socketpair()
    try:
        client = LeanClient(CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True)
        got: list[bytes] = []
        client.on_message = lambda _c, _u, m: got.append(m.payload)
        ours.setblocking(False)
        client._sock = ReadAheadSocket(ours)
        body = [_publish_body(b"s/d/q", 1, i, None, b"%d" % i) for i in range(1, 4)]
        wire = b"".join(bytes([0x32, len(b)]) + b for b in body)
        broker.sendall(wire + bytes([0x32, len(body[0])]) + body[0][:3])  # and a packet cut short
        assert client.loop_read() == 0
        assert got == [b"1", b"2", b"3"]  # stock paho would have handled one
        broker.sendall(body[0][3:])
        assert client.loop_read() == 0
        assert got == [b"1", b"2", b"3", b"1"]  # the cut packet completes on the next pass
    finally:
        broker.close()
        ours.close()
