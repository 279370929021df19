"""Poison end to end: the real ``sensorcast serve`` on real mosquitto and influxd.

20,000 good QoS 1 readings, with the issue's hostile payloads interleaved (the first set
right after the first good reading, as in the report that stored 1 reading of 20,000):
a line-protocol integer of 400 nines, a huge exponent, invalid UTF-8, 30,000-deep JSON,
a 10,000-field line, a 62 KB JSON reading with 240 comma-filled tags. Every good reading
is stored exactly once with its exact value, the hostile ones are counted refusals and
store nothing, the process keeps ingesting, and after a SIGKILL and restart on the same
persistent session nothing is redelivered: no refusal, no reading comes back.
"""

from __future__ import annotations

import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import MQTTErrorCode

from service.records import Reading
from service.store import open_store
from tests.faults.serve_helpers import kit_models, serve
from tests.integration.ingest_helpers import (
    Publisher,
    acked,
    make_settings,
    payload,
    readings,
    wait_stored,
)
from tests.waiting import poll
from tools.localservers import Influxd, Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB = "fpoison"
GOOD = 20_000
STREAMS = 100


def _b36(i: int) -> bytes:
    digits = b"0123456789abcdefghijklmnopqrstuvwxyz"
    out = b""
    while True:
        i, r = divmod(i, 36)
        out = digits[r : r + 1] + out
        if not i:
            return out


def hostile(ts_ns: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of each hostile message; devices ``poison*`` so nothing of theirs hides."""
    tags = {f"t{i:03d}": ("a,b,c," * 42)[:250] for i in range(240)}
    return [
        ("fpoison/poison-nines/temp", b"m x=" + b"9" * 400 + b"i"),  # the payload, verbatim
        ("fpoison/poison-nines/temp", b"m temp=" + b"9" * 400 + b"i"),  # the same, on the topic's field
        ("fpoison/poison-exp/temp", b"m temp=1e999999 %d" % ts_ns),
        ("fpoison/poison-exp/temp", b'{"ts": %d, "value": 1e999999}' % ts_ns),
        ("fpoison/poison-exp/temp", b"1" + b"0" * 400 + b"e-1"),
        ("fpoison/poison-utf8/temp", b'\xff\xfe{"value": \xc3\x28}'),
        ("fpoison/poison-utf8/temp", b'{"ts": %d, "value": 1.0, "tags": {"k": "\xed\xa0\x80"}}' % ts_ns),
        ("fpoison/poison-deep/temp", b"[" * 30_000 + b"]" * 30_000),
        ("fpoison/poison-fields/temp", b"m " + b",".join(_b36(i) + b"=1" for i in range(10_000))),
        ("fpoison/poison-tags/temp", orjson.dumps({"ts": ts_ns, "value": 1.0, "tags": tags})),
    ]


def _publish(pub: Publisher, messages: list[tuple[str, bytes]]) -> list[paho.MQTTMessageInfo]:
    infos: list[paho.MQTTMessageInfo] = []
    for k, (topic, body) in enumerate(messages):
        info = pub.client.publish(topic, body, qos=1)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, info.rc
        infos.append(info)
        if k % 500 == 499:  # a bounded window of unacknowledged publishes
            assert poll(lambda: all(acked(i) for i in infos[:-1000]), 60, every=0.01)
    assert poll(lambda: all(acked(i) for i in infos), 60, every=0.05), "the broker did not take every message"
    return infos


def _poison_series(influxd: Influxd) -> list[object]:
    q = urllib.parse.urlencode({"db": DB, "q": 'SHOW SERIES FROM "readings" WHERE "device" =~ /^poison/'})
    with urllib.request.urlopen(f"{influxd.url}/query?{q}", timeout=10) as r:
        body = orjson.loads(r.read())
    return [s for res in body.get("results", []) for s in res.get("series", [])]


def _topic(r: Reading) -> str:
    return f"fpoison/{r.stream.device}/{r.stream.quantity}"


def test_poison_among_20000_good_readings_under_serve(mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path) -> None:
    url = f"influxdb://127.0.0.1:{influxd.port}/{DB}"
    influxd.create_db(DB)
    good = readings(GOOD, STREAMS)
    bad = hostile(good[0].ts_ns)
    messages: list[tuple[str, bytes]] = []
    for k, r in enumerate(good):
        messages.append((_topic(r), payload(r)))
        if k in (0, 5_000, 10_000, 15_000):
            messages.extend(bad)
    n_bad = len(messages) - GOOD
    after = readings(2 * STREAMS, STREAMS, start_ns=good[-1].ts_ns + 10**9)  # published once the poison is in
    store = open_store(make_settings(mosquitto.port, url, tmp_path / "unused").store)
    env = {"SENSORCAST_MQTT__CLIENT_ID": "f-poison", "SENSORCAST_INGEST__TOPIC": "fpoison/{device}/{quantity}"}
    pub = Publisher(mosquitto.port, client_id="f-poison-pub")
    try:
        with serve(tmp_path / "svc", mosquitto.url, url, kit_models(tmp_path / "models"), **env) as sp:
            assert sp.wait_ready()["status"] == "ready"
            _publish(pub, messages)
            got = wait_stored(store, good, timeout=60)
            refused = poll(lambda: sp.metric("sensorcast_readings_refused_total") >= n_bad and
                           sp.metric("sensorcast_readings_refused_total"), 20)
            internal = sp.metric("sensorcast_readings_refused_total", 'reason="internal"')
            # Still ingesting, still ready, every thread alive.
            _publish(pub, [(_topic(r), payload(r)) for r in after])
            got_after = wait_stored(store, good + after, timeout=30)
            ready = sp.ready()
            time.sleep(2)  # the last acknowledgements reach the broker
            refused_before_kill = sp.metric("sensorcast_readings_refused_total")
            sp.kill(signal.SIGKILL)
            # Same client id, same persistent session: whatever was not acknowledged comes back now.
            sp.start()
            assert sp.wait_ready()["status"] == "ready"
            time.sleep(3)
            replayed_refusals = sp.metric("sensorcast_readings_refused_total")
            replayed_readings = sp.metric("sensorcast_readings_in_total", 'source="mqtt"')
            last = readings(STREAMS, STREAMS, start_ns=after[-1].ts_ns + 10**9)
            _publish(pub, [(_topic(r), payload(r)) for r in last])
            got_last = wait_stored(store, good + after + last, timeout=30)
            log = sp.tail(10**7)
    finally:
        pub.close()

    def by_key(rs: list[Reading]) -> list[Reading]:
        return sorted(rs, key=lambda r: (r.stream, r.ts_ns))

    assert got == by_key(good)  # all 20,000, each once, values exact
    assert got_after == by_key(good + after) and got_last == by_key(good + after + last)
    assert refused >= n_bad and refused == refused_before_kill, (refused, n_bad)
    assert internal == 0, log[-3000:]  # the decoder refused them all by name; nothing raised
    assert _poison_series(influxd) == []  # no hostile payload left anything in the store
    assert ready["http_status"] == 200 and ready["checks"]["threads"]["ok"], ready
    assert replayed_refusals == 0 and replayed_readings == 0, (replayed_refusals, replayed_readings)
    assert "Traceback" not in log
    store.close()
