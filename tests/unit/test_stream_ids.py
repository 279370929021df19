"""Stream identity: escaped, injective ids that ``StreamKey.parse`` inverts exactly; alert
topics built from them without collisions; format-1 checkpoints migrated or refused; and
an id-collision payload that cannot reach another stream's state in the engine."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.alerts.payload import topic_for, topic_level
from service.config import IngestSettings, Settings
from service.ingest.decode import Decoder
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.records import Forecast, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams import checkpoint
from service.streams.engine import Engine
from tests.modelkit import KitSpec, settings_for, write_model

# Names rich in what carries structure (ids, topics, line protocol) plus ordinary text.
NAME_CHARS = st.sampled_from(list("ab1-_. %/;=+#\\,\"'\n\t\x00\x7f\x85é😀\ufffe\ufdd0"))
NAMES = st.one_of(st.text(NAME_CHARS, max_size=8), st.text(max_size=8))
KEYS = st.builds(
    lambda d, q, tags: StreamKey(d, q, tuple(sorted(tags.items()))),
    NAMES, NAMES, st.dictionaries(NAMES, NAMES, max_size=3),
)


# --- ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "text"),
    [
        (StreamKey("pump-1", "temperature"), "pump-1/temperature"),
        (StreamKey("pump-1", "temperature", (("line", "A"), ("site", "north"))), "pump-1/temperature;line=A;site=north"),
        (StreamKey("pump-1", "temperature;site=hq"), "pump-1/temperature%3Bsite%3Dhq"),
        (StreamKey("site/a", "100%"), "site%2Fa/100%25"),
        (StreamKey("dév 1", "t", (("k", "a=b;c"),)), "dév 1/t;k=a%3Db%3Bc"),
        (StreamKey("d\n", "\x85"), "d%0A/%C2%85"),
    ],
)
def test_id_keeps_ordinary_names_and_escapes_structure(key: StreamKey, text: str) -> None:
    assert key.id == text
    assert StreamKey.parse(text) == key


def test_tags_are_sorted_in_the_id() -> None:
    assert StreamKey("d", "q", (("z", "1"), ("a", "2"))).id == "d/q;a=2;z=1"


@settings(max_examples=300, deadline=None, database=None)
@given(KEYS)
def test_parse_inverts_id(key: StreamKey) -> None:
    assert StreamKey.parse(key.id) == key
    device, tags = StreamKey.parse_device_id(key.device_id)
    assert (device, tags) == (key.device, key.tags)
    assert "/" not in key.device_id and key.id.count("/") == 1  # device ids never equal stream ids


@settings(max_examples=300, deadline=None, database=None)
@given(KEYS, KEYS)
def test_id_is_injective(a: StreamKey, b: StreamKey) -> None:
    assert (a.id == b.id) == (a == b)
    assert (a.device_id == b.device_id) == ((a.device, a.tags) == (b.device, b.tags))


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("ab", "0 unescaped '/'"),
        ("site/a/b", "2 unescaped '/'"),
        ("a/b;novalue", "has 0 unescaped '='"),
        ("a/b;k=v=w", "has 2 unescaped '='"),
        ("a/b;z=1;k=v", "sorted by key"),
        ("a/b;k=1;k=2", "sorted by key"),
        ("a%2f/b", "two uppercase hex"),
        ("a%/b", "two uppercase hex"),
        ("a%41/b", "escape '%41'"),
        ("a%C2/b", "escape '%C2'"),
        ("a\n/b", "unescaped"),
    ],
)
def test_parse_refuses_malformed_ids(text: str, found: str) -> None:
    with pytest.raises(ValueError, match="expected") as e:
        StreamKey.parse(text)
    assert found in str(e.value)


def test_forecast_topics_come_from_the_forecast_key() -> None:
    got: list[tuple[str, str, str]] = []

    class Publisher:
        def publish_forecast(self, fc: Forecast, device: str, quantity: str) -> None:
            got.append((device, quantity, fc.stream_id))

    pipe = Pipeline(Settings(roles="inference"), Metrics(), publisher=Publisher())  # type: ignore[arg-type,call-arg]

    def forecast(key: StreamKey | None, multivariate: bool = False) -> Forecast:
        return Forecast(key, 0, 60.0, ("v",), ((1.0,),), None, "m", "1", multivariate=multivariate)

    pipe.on_forecast(forecast(StreamKey("site/a", "t;x", (("k", "v"),))))
    pipe.on_forecast(forecast(StreamKey("pump/1", "*", (("k", "v"),)), multivariate=True))
    pipe.on_forecast(forecast(None))  # not a stream's: nothing to publish
    assert got == [("site/a", "t;x", "site%2Fa/t%3Bx;k=v"), ("pump/1", "*", "pump%2F1;k=v")]


# --- alert topics --------------------------------------------------------------------------
def test_topics_of_look_alike_names_differ() -> None:
    # Before: '/', '+' and '#' all became '_', so these four were one topic.
    names = ["a+b", "a_b", "a#b", "a/b", "a%2Bb"]
    topics = {topic_for("s/{device}/{quantity}", n, "q", "") for n in names}
    assert len(topics) == len(names)
    assert topic_for("s/{device}/{quantity}", "a_b", "q", "") == "s/a_b/q"  # ordinary names unchanged


@settings(max_examples=300, deadline=None, database=None)
@given(KEYS, KEYS)
def test_stream_topics_are_injective_and_valid(a: StreamKey, b: StreamKey) -> None:
    ta = topic_for("sensorcast/alerts/{stream}", a.device, a.quantity, a.id)
    tb = topic_for("sensorcast/alerts/{stream}", b.device, b.quantity, b.id)
    assert (ta == tb) == (a == b)
    for t in (ta, tb):
        assert "+" not in t and "#" not in t and t.count("/") == 3
        # Everything mosquitto refuses in a topic (it would drop the alert publisher).
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or (ord(c) & 0xFFFE) == 0xFFFE
                       or 0xFDD0 <= ord(c) <= 0xFDEF for c in t)
    if not a.tags:  # one topic per stream, whichever template spells it
        assert ta == topic_for("sensorcast/alerts/{device}/{quantity}", a.device, a.quantity, a.id)


def test_topic_level_escapes_wildcards_after_id_escapes() -> None:
    assert topic_level("x/y+#%") == "x%2Fy%2B%23%25"


# --- checkpoints ---------------------------------------------------------------------------
def _v1(directory: Path, streams: list[dict[str, object]]) -> Path:
    """A format-1 checkpoint (no ``format`` key) with one row per stream: state = row number."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"model": "m", "version": "1", "sha256": "x", "saved_ns": 0, "streams": streams}
    path = directory / f"m@1{checkpoint.SUFFIX}"
    state = np.arange(len(streams), dtype=np.float32).reshape(-1, 1)
    np.savez(path, meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8), state=state)
    return path


def _entry(old_id: str, device: str, quantity: str, tags: list[list[str]], key_q: str | None = None) -> dict[str, object]:
    return {"id": old_id, "device": device, "quantity": quantity, "tags": tags, "key": [device, key_q or quantity]}


def test_v1_checkpoint_ids_are_migrated_or_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _v1(tmp_path, [
        _entry("pump-1/temperature;site=hq", "pump-1", "temperature", [["site", "hq"]]),  # same id in format 2
        _entry("a%b/q", "a%b", "q", []),  # decodes to its names: renamed a%25b/q
        _entry("pump-1/temperature;site=hq", "pump-1", "temperature;site=hq", []),  # the collision: dropped
        _entry("dev;k=v", "dev", "*", [["k", "v"]], key_q="t"),  # multivariate device id
        _entry("d;x=1", "d;x=1", "*", [], key_q="t"),  # multivariate, ambiguous: dropped
    ])
    with caplog.at_level(logging.INFO, logger="service.streams.checkpoint"):
        [(_, meta, arrays)] = checkpoint.read_all(tmp_path)
    assert meta["format"] == checkpoint.FORMAT
    assert [s["id"] for s in meta["streams"]] == ["pump-1/temperature;site=hq", "a%25b/q", "dev;k=v"]
    assert arrays["state"][:, 0].tolist() == [0.0, 1.0, 3.0]  # the dropped rows went with their entries
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("warms from the store" in m for m in errors)
    assert any("'pump-1/temperature;site=hq' does not decode to its own names" in m for m in errors)


def test_newer_checkpoint_format_is_refused_clearly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint.write(tmp_path, "m@1", {"streams": []}, {})
    path = tmp_path / f"m@1{checkpoint.SUFFIX}"
    with np.load(path) as z:
        meta = orjson.loads(z["meta"].tobytes())
    assert meta["format"] == checkpoint.FORMAT  # written with the current format
    meta["format"] = checkpoint.FORMAT + 1
    np.savez(path, meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8))
    with caplog.at_level(logging.ERROR):
        assert checkpoint.read_all(tmp_path) == []
    assert "has format 3, this version reads 2" in caplog.text


C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
STEP = KitSpec(name="m", layers=2, hidden=8, warmup_steps=6, mean=(20.0,), std=(3.0,))


def test_v1_checkpoint_restores_migrated_streams_in_the_engine(tmp_path: Path) -> None:
    """End to end: an engine checkpoint rewritten as format 1 (old ids) restores through the migration."""
    models = tmp_path / "models"
    write_model(models, STEP)
    eng = Engine(settings_for(tmp_path, models), ModelRegistry(models), None, Metrics())
    odd = StreamKey("a%b", "q")  # its id changed between formats
    for i in range(10):
        eng.accept([Reading(odd, T0 + i * C, 20.0 + i % 3)])
        eng.tick(T0 + i * C)
    eng.checkpoint()
    directory = eng.settings.streams.checkpoint_dir
    [(path, meta, arrays)] = checkpoint.read_all(directory)
    assert [s["id"] for s in meta["streams"]] == ["a%25b/q"]
    meta = {k: v for k, v in meta.items() if k != "format"}
    meta["streams"] = [{**s, "id": "a%b/q"} for s in meta["streams"]]  # how format 1 wrote it
    np.savez(path, meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8), **arrays)  # type: ignore[arg-type]
    again = Engine(eng.settings, ModelRegistry(models), None, Metrics())
    assert again.restore() == 1
    s = again.stream("a%25b/q")
    assert s is not None and s.last_ts_ns == T0 + 9 * C


# --- the collision attempt, end to end through decoder and engine ---------------------------
def _engine(tmp: Path) -> Engine:
    models = tmp / "models"
    write_model(models, STEP)
    return Engine(settings_for(tmp, models), ModelRegistry(models), None, Metrics())


@pytest.mark.parametrize("template", ["sensors/{device}/{quantity}", "sensors/{device}"])
def test_collision_payload_cannot_reach_the_tagged_streams_state(tmp_path: Path, template: str) -> None:
    """``m temperature;site\\=hq=99`` once named the stream ``pump-1/temperature;site=hq``.

    With the default template the topic's quantity ``x`` wins (``topic_mismatch``); with a
    template that leaves the quantity to the payload the reading is a stream of its own,
    ``pump-1/temperature%3Bsite%3Dhq``. Either way the real tagged stream's state, fed
    the same readings in both engines, ends exactly as in an engine that never saw it.
    """
    real = Decoder(IngestSettings())  # the real stream's publisher uses the default template
    hostile = Decoder(IngestSettings(topic=template))
    hostile_topic = "sensors/pump-1/x" if template.endswith("{quantity}") else "sensors/pump-1"
    tagged_id = "pump-1/temperature;site=hq"
    ref, eng = _engine(tmp_path / "ref"), _engine(tmp_path / "eng")
    rng = np.random.default_rng(3)
    for i in range(40):
        ts = T0 + i * C
        body = orjson.dumps({"ts": ts, "value": 20 + float(rng.normal()), "tags": {"site": "hq"}})
        good = real.decode("sensors/pump-1/temperature", body, ts)
        assert [r.stream.id for r in good.readings] == [tagged_id]
        bad = hostile.decode(hostile_topic, f"m temperature;site\\=hq=99 {ts}".encode(), ts)
        assert tagged_id not in {r.stream.id for r in bad.readings}
        if template.endswith("{quantity}"):
            assert not bad.readings and [x.reason for x in bad.refusals] == ["topic_mismatch"]
        else:
            assert [r.stream.id for r in bad.readings] == ["pump-1/temperature%3Bsite%3Dhq"]
        ref.accept(good.readings)
        eng.accept(good.readings + bad.readings)
        ref.tick(ts)
        eng.tick(ts)
    a, b = eng.forecast(tagged_id), ref.forecast(tagged_id)
    assert a is not None and b is not None and a.mean == b.mean and a.ts_ns == b.ts_ns
    sa, sb = eng.stream(tagged_id), ref.stream(tagged_id)
    assert sa is not None and sb is not None and sa.last_ts_ns == sb.last_ts_ns
    other = eng.stream("pump-1/temperature%3Bsite%3Dhq")
    assert (other is not None) == (template == "sensors/{device}")
    if other is not None:  # the hostile stream lives on its own, with its own values
        fc = eng.forecast("pump-1/temperature%3Bsite%3Dhq")
        assert fc is not None and fc.mean != a.mean


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("sensorcast/alerts/{stream}", "sensorcast/alerts/#"),
        ("sensorcast/alerts/{device}/{quantity}", "sensorcast/alerts/+/+"),
        ("a/{stream}/b", "a/#"),
    ],
)
def test_topic_filter_matches_every_topic_of_a_template(template: str, expected: str) -> None:
    from service.alerts.payload import topic_filter

    assert topic_filter(template) == expected


def test_points_route_reads_an_escaped_id_from_a_url_encoded_path(tmp_path: Path) -> None:
    import asyncio
    from urllib.parse import quote

    import httpx

    from tests.apiharness import T0 as H0
    from tests.apiharness import harness

    odd = StreamKey("pump/1", "temperature;site=hq")
    tagged = StreamKey("pump/1", "temperature", (("site", "hq"),))

    async def get(app: object, path: str) -> httpx.Response:
        # httpx's ASGI transport percent-decodes the path once, as uvicorn does; Starlette's
        # TestClient decodes it twice (it unquotes httpx's already decoded path).
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(path)

    with harness(tmp_path) as h:
        h.store.write([Reading(odd, H0, 1.0), Reading(tagged, H0, 2.0)])
        for key, value in ((odd, 1.0), (tagged, 2.0)):
            path = "/".join(quote(level, safe=";=") for level in key.id.split("/"))  # as the dashboard does
            r = asyncio.run(get(h.client.app, f"/v1/points/{path}"))
            assert r.status_code == 200 and r.json()["values"] == [value] and r.json()["stream_id"] == key.id
        r = asyncio.run(get(h.client.app, "/v1/points/pump/1/temperature"))  # a raw '/' is structure
        assert r.status_code == 422 and "2 unescaped '/'" in r.json()["detail"]
