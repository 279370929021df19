"""The hostile corpus (tests/data/hostile/cases.jsonl, also run over MQTT by
tests/integration/test_ingest_hostile.py) sent over REST to the real ``sensorcast serve``,
each case between two good readings in one request; then REST-only abuse: bodies of the
wrong shape, size, encoding or depth, and names with control characters (which MQTT
cannot even carry). Every case is refused with a clear answer or counted; no 5xx; the
good readings around them all land; the process lives; and influxd holds nothing but the
expected series in one measurement with one field (no line-protocol injection)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.records import Reading, StreamKey
from service.store import open_store
from service.store.influx1 import Influx1Store
from tests.faults.serve_helpers import kit_models, serve
from tests.integration.ingest_helpers import BASE_NS, make_settings, stored
from tests.integration.test_ingest_hostile import load_corpus
from tools.bench.serveproc import ServeProcess
from tools.localservers import Influxd, Mosquitto

pytestmark = pytest.mark.integration
TOPIC = "hostile/{device}/{quantity}"


@pytest.fixture(scope="module")
def svc(mosquitto: Mosquitto, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("resthostile")
    url = f"influxdb://127.0.0.1:{influxd.port}/resthostile"
    with serve(tmp / "svc", mosquitto.url, url, kit_models(tmp / "models"),
               SENSORCAST_MQTT__CLIENT_ID="rest-hostile", SENSORCAST_INGEST__TOPIC=TOPIC) as sp:
        yield sp


def good_msg(r: Reading) -> dict[str, Any]:
    return {"topic": f"hostile/{r.stream.device}/{r.stream.quantity}", "payload": {"ts": r.ts_ns, "value": r.value}}


# Bodies no client should send: each gets a 4xx with a JSON {"detail": ...}, or (when it
# parses) a 202 in which every message is refused with its reason.
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("empty body", b"", "application/json"),
    ("null", b"null", "application/json"),
    ("a list", b"[1, 2, 3]", "application/json"),
    ("a string", b'"messages"', "application/json"),
    ("no messages key", b'{"readings": []}', "application/json"),
    ("messages an object", b'{"messages": {"topic": "hostile/a/b", "payload": 1}}', "application/json"),
    ("messages of numbers", b'{"messages": [1, 2]}', "application/json"),
    ("topic a number", b'{"messages": [{"topic": 5, "payload": 1}]}', "application/json"),
    ("no payload", b'{"messages": [{"topic": "hostile/a/b"}]}', "application/json"),
    ("empty messages", b'{"messages": []}', "application/json"),
    ("malformed json", b'{"messages": [', "application/json"),
    ("NaN literal", b'{"messages": [{"topic": "hostile/a/b", "payload": NaN}]}', "application/json"),
    ("deeply nested body", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json"),
    ("invalid utf-8", b'{"messages": [{"topic": "hostile/\xff\xfe/q", "payload": 1}]}', "application/json"),
    ("binary garbage", bytes(range(256)) * 8, "application/octet-stream"),
    ("form encoded", b"messages=1", "application/x-www-form-urlencoded"),
    ("huge integer", b'{"messages": [{"topic": "hostile/a/b", "payload": ' + b"9" * 5000 + b"}]}", "application/json"),
]


def test_rest_hostile_corpus_and_bad_bodies(svc: ServeProcess, influxd: Influxd, tmp_path: Path) -> None:
    cases = load_corpus()
    good: list[Reading] = []
    refused_total: Counter[str] = Counter()
    expected_streams: set[StreamKey] = set()
    statuses: Counter[int] = Counter()
    n_tried = 0
    for i, case in enumerate(cases):
        before = Reading(StreamKey(f"rgood{i % 7}", "q"), BASE_NS + (2 * i) * 1000, float(i))
        after = Reading(StreamKey(f"rgood{i % 7}", "q"), BASE_NS + (2 * i + 1) * 1000, float(-i))
        try:
            text = case["bytes"].decode("utf-8")
        except UnicodeDecodeError:
            text = None
        n_tried += 1
        if text is None:
            # Not representable in a JSON string: sent as the raw request body instead.
            r = svc.http.post("/v1/readings", content=case["bytes"], headers={"content-type": "application/json"})
            statuses[r.status_code] += 1
            assert r.status_code in (400, 422) and "detail" in r.json(), (case["name"], r.status_code, r.text[:200])
            r = svc.http.post("/v1/readings", json={"messages": [good_msg(before), good_msg(after)]})
            assert r.status_code == 202 and r.json()["accepted"] == 2
            good += [before, after]
            continue
        body = {"messages": [good_msg(before), {"topic": case["topic"], "payload": text}, good_msg(after)]}
        r = svc.http.post("/v1/readings", json=body)
        statuses[r.status_code] += 1
        if len(r.request.content) > 1024 * 1024:
            assert r.status_code == 413, (case["name"], r.status_code)
            r = svc.http.post("/v1/readings", json={"messages": [good_msg(before), good_msg(after)]})
            assert r.status_code == 202
            good += [before, after]
            continue
        assert r.status_code == 202, (case["name"], r.status_code, r.text[:300])
        out = r.json()
        got_refused = Counter(x["reason"] for x in out["refused"])
        assert got_refused == Counter(case["refused"]), (case["name"], out["refused"])
        assert all(x["index"] == 1 and x["detail"] for x in out["refused"]), case["name"]
        assert out["accepted"] == case["good"] + 2, (case["name"], out)
        refused_total.update(got_refused)
        good += [before, after]
        for device, quantity, tags in case.get("streams", []):
            expected_streams.add(StreamKey(device, quantity, tuple((k, v) for k, v in tags)))

    # Names with control characters: MQTT cannot carry them in a topic, REST can.
    for topic in ["hostile/dev\nice/q", "hostile/d\tx/q", "hostile/d\rx/q", "hostile/x\x00y/q",
                  "hostile/readings,evil=1 value=666/q", "hostile/a\n readings value=1 1/q"]:
        r = svc.http.post("/v1/readings", json={"messages": [{"topic": topic, "payload": 1.0}]})
        statuses[r.status_code] += 1
        n_tried += 1
        assert r.status_code == 202, r.text
        out = r.json()
        if out["accepted"]:  # accepted only as a literal, escaped name (checked below)
            assert "\n" not in topic and "\r" not in topic and "\x00" not in topic and "\t" not in topic, topic
            device = topic.split("/")[1]
            expected_streams.add(StreamKey(device, "q"))
        else:
            assert out["refused"] and out["refused"][0]["reason"], out

    # Bodies of the wrong shape, size, encoding or depth.
    for name, raw, ctype in BAD_BODIES:
        r = svc.http.post("/v1/readings", content=raw, headers={"content-type": ctype})
        statuses[r.status_code] += 1
        n_tried += 1
        if r.status_code == 202:  # parsed, but nothing in it is a reading: every message refused
            assert r.json()["accepted"] == 0 and r.json()["refused"], (name, r.text[:200])
        else:
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
            assert "detail" in r.json(), name
    # A huge batch within the body limit lands whole; one beyond it is refused whole.
    big = [Reading(StreamKey(f"rbig{k % 50}", "q"), BASE_NS + k * 1000, float(k)) for k in range(5000)]
    r = svc.http.post("/v1/readings", json={"messages": [good_msg(x) for x in big]})
    assert r.status_code == 202 and r.json()["accepted"] == len(big), r.text[:300]
    good += big
    r = svc.http.post("/v1/readings", json={"messages": [good_msg(big[0])] * 20_000})
    assert r.status_code == 413, r.status_code
    n_tried += 2
    # Unknown routes, methods and huge headers: still no 5xx.
    for method, path in (("PUT", "/v1/readings"), ("GET", "/v1/readings"), ("DELETE", "/v1/models"),
                         ("GET", "/v1/streams/" + "x" * 10_000), ("GET", "/v1/streams/%00%ff")):
        r = svc.http.request(method, path)
        statuses[r.status_code] += 1
        n_tried += 1
        assert r.status_code < 500, (method, path[:40], r.status_code)

    assert svc.proc is not None and svc.proc.poll() is None, "the service died"
    assert svc.http.get("/healthz").status_code == 200
    assert not [s for s in statuses if s >= 500], statuses
    print(f"REST hostile: {n_tried} inputs, statuses {dict(statuses)}, refusals {dict(refused_total)}")

    store = open_store(make_settings(1, f"influxdb://127.0.0.1:{influxd.port}/resthostile", tmp_path / "s").store)
    assert isinstance(store, Influx1Store)
    deadline = time.monotonic() + 20
    want = sorted(good, key=lambda x: (x.stream, x.ts_ns))
    while stored(store, {x.stream for x in good}) != want and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stored(store, {x.stream for x in good}) == want  # every good reading, exactly
    body = store.query("SHOW MEASUREMENTS; SHOW FIELD KEYS")
    assert body["results"][0]["series"][0]["values"] == [["readings"]]
    assert body["results"][1]["series"][0]["values"] == [["value", "float"]]
    expected_streams |= {x.stream for x in good}
    assert set(store.streams()) == expected_streams
    store.close()
    # The metrics count what was refused, by reason.
    metrics = svc.http.get("/metrics").text
    for reason, n in refused_total.items():
        line = next(x for x in metrics.splitlines()
                    if x.startswith("sensorcast_readings_refused_total") and f'reason="{reason}"' in x)
        assert float(line.rsplit(" ", 1)[1]) >= n, (reason, line)
