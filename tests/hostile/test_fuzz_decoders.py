"""Hypothesis over every decoder path (bare numbers, JSON objects and arrays, named
fields, line protocol, binary) and every topic template shape, extending the ingest
engineer's ``test_decoder_never_raises`` (one template, binary payloads only).

Properties: decoding never raises; every message yields readings or a refusal with a
reason; accepted readings are finite and storable (within the tag and series-key caps);
and each accepted reading becomes exactly one line of line protocol that parses back to
one point in the one measurement with the one field and the same names (no injection,
whatever the names hold). ``NEAR_MISSES`` adds payloads built to sit just past the edges
(huge integers and exponents, deep nesting, every escape character, invalid UTF-8, 10k
fields) and checks the topic's device, quantity and tags are never overridden."""

from __future__ import annotations

import json
import math
import time

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.config import IngestSettings
from service.ingest.decode import Decoder, DecodeResult
from service.ingest.lineparse import parse_line
from service.ingest.topics import TopicTemplate
from service.store.lineproto import LineFormatter, series_key_bytes, stream_problem

NOW = time.time_ns()
TEMPLATES = ["sensors/{device}/{quantity}", "sensors/#", "plant/{tag_site}/{device}", "s/{device}/{quantity}/{tag_x}"]
DECODERS = {t: Decoder(IngestSettings(topic=t)) for t in TEMPLATES}  # type: ignore[call-arg]
FMT = LineFormatter("readings")

# Names with every character that means something to MQTT, line protocol or InfluxQL.
NAMES = st.text(alphabet=st.sampled_from(list("ab1 ,=\"'\\\n\t\r\x00#+/é😀:;{}[]")), min_size=0, max_size=12)
NUMBERS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True))
TIMES = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**64), st.floats(), NAMES,
                  st.sampled_from([NOW // 10**9, NOW // 10**6, NOW, "2024-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, NAMES)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(NAMES, inner, max_size=4)),
    max_leaves=12,
)
OBJECTS = st.fixed_dictionaries(
    {}, optional={"ts": TIMES, "value": SCALARS, "tags": st.dictionaries(NAMES, SCALARS, max_size=3),
                  "temp": NUMBERS, "device": NAMES, "quantity": NAMES},
)


def _line(m: str, tags: dict[str, str], fields: dict[str, str], ts: str) -> str:
    t = "".join(f",{k}={v}" for k, v in tags.items())
    f = ",".join(f"{k}={v}" for k, v in fields.items())
    return f"{m}{t} {f} {ts}".rstrip()


LINE_PROTOCOL = st.lists(
    st.builds(_line, NAMES, st.dictionaries(NAMES, NAMES, max_size=3),
              st.dictionaries(NAMES, st.one_of(NAMES, st.sampled_from(["1.5", "3i", "7u", "true", '"x"', "nan", "1e999"])),
                              max_size=3),
              st.one_of(st.just(""), st.integers(min_value=-(2**63), max_value=2**63).map(str), NAMES)),
    max_size=4,
).map(lambda ls: "\n".join(ls).encode())

PAYLOADS = st.one_of(
    st.binary(max_size=200),
    NUMBERS.map(lambda v: str(v).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    OBJECTS.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.lists(OBJECTS, max_size=5).map(lambda v: json.dumps(v, allow_nan=True).encode()),
    LINE_PROTOCOL,
)


def topic_for(template: str, parts: list[str]) -> str:
    head = template.split("/")[0]
    return "/".join([head, *parts])


# --- near misses: payloads built to sit just past the edges ------------------------------
ESCAPES = list(",= \\\"'\n\r\t#;/%+\x00\x7f\x85\ufffe")  # every character that means something somewhere
ESC_NAMES = st.text(alphabet=st.sampled_from([*ESCAPES, "a", "1"]), min_size=1, max_size=10)
HUGE_INTS = st.one_of(
    st.integers(min_value=300, max_value=320).map(lambda n: "9" * n),  # around float's limit
    st.sampled_from(["9" * 400, "9" * 4299, "9" * 4301, "1" + "0" * 5000, "0" * 5000 + "1", "-" + "9" * 400]),
)
EXPONENTS = st.one_of(st.integers(min_value=-(10**20), max_value=10**20), st.sampled_from([308, 309, -324, -325]))


def _lp_number(digits: str, suffix: str) -> bytes:
    return f"m x={digits}{suffix}".encode()


NEAR_MISSES = st.one_of(
    st.builds(_lp_number, HUGE_INTS, st.sampled_from(["i", "u", "", ".5", "e5"])),
    EXPONENTS.map(lambda e: f"m x=1.5e{e}".encode()),
    EXPONENTS.map(lambda e: f'{{"value": 1e{e}}}'.encode()),
    EXPONENTS.map(lambda e: f'{{"value": 1, "ts": 1e{e}}}'.encode()),
    HUGE_INTS.map(lambda d: f'{{"value": {d}}}'.encode()),
    HUGE_INTS.map(lambda d: f'{{"value": 1, "ts": {d}}}'.encode()),
    HUGE_INTS.map(lambda d: f"m value=1 {d}".encode()),
    HUGE_INTS.map(str.encode),
    st.integers(min_value=1000, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=500, max_value=1500).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(min_value=1000, max_value=3000).map(lambda n: b'{"value": 1, "tags": ' + b"[" * n + b"]" * n + b"}"),
    # Every escape character in every position of line protocol and JSON names.
    st.builds(lambda m, k, v, f: f"{m},{k}={v} {f}=1".encode(), ESC_NAMES, ESC_NAMES, ESC_NAMES, ESC_NAMES),
    st.builds(lambda k, v: orjson.dumps({"value": 1, "tags": {k: v}}), ESC_NAMES, ESC_NAMES),
    st.builds(lambda k: orjson.dumps({k: 1.5, "device": k}), ESC_NAMES),
    # Invalid UTF-8 in tags, fields, JSON keys and values.
    st.sampled_from([b"m,t=\xff\xfe value=1", b"m \xc3\x28=1", b'{"value": 1, "tags": {"k": "\xed\xa0\x80"}}',
                     b'{"\xf8\x88\x80\x80\x80": 1}', b"m,t=a value=1 \xff", b"\xc0\xaf value=1"]),
    # Many fields, tags and lines.
    st.integers(min_value=9_000, max_value=10_000).map(lambda n: b"m " + b",".join(b"f%d=%d" % (i, i) for i in range(n))),
    st.integers(min_value=30, max_value=300).map(lambda n: b"m," + b",".join(b"t%d=v" % i for i in range(n)) + b" value=1"),
    st.integers(min_value=1, max_value=2000).map(
        lambda n: orjson.dumps({"value": 1, "tags": {f"t{i}": "," * 60 for i in range(n)}})),
    st.integers(min_value=5_000, max_value=10_000).map(lambda n: orjson.dumps({f"f{i}": i for i in range(n)})),
    st.integers(min_value=1_000, max_value=5_000).map(lambda n: b"\n".join([b"m value=1"] * n)),
)
# A 1 MiB payload cap, so that 10k fields are decoded rather than refused as too_large.
BIG_DECODERS = {t: Decoder(IngestSettings(topic=t, max_payload_bytes=1 << 20)) for t in TEMPLATES}  # type: ignore[call-arg]
NEAR_MISS_TOPICS = {
    "sensors/{device}/{quantity}": "sensors/dev/q",
    "sensors/#": "sensors/x",
    "plant/{tag_site}/{device}": "plant/north/dev",
    "s/{device}/{quantity}/{tag_x}": "s/dev/q/y",
}


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(template=st.sampled_from(TEMPLATES), parts=st.lists(NAMES, min_size=0, max_size=4), payload=PAYLOADS)
def test_every_decoder_path_is_total_and_injection_free(template: str, parts: list[str], payload: bytes) -> None:
    result = DECODERS[template].decode(topic_for(template, parts), payload, NOW)
    _check_result(template, payload, result)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(template=st.sampled_from(TEMPLATES), payload=NEAR_MISSES)
@example(template="sensors/#", payload=b"m x=" + b"9" * 400 + b"i")  # the poison message of issue #12
@example(template="sensors/{device}/{quantity}", payload=b"m temperature;site\\=hq=99")  # the id collision
@example(template="sensors/{device}/{quantity}", payload=b"\xc2\x85#,1=1 1=1")  # U+0085 made a comment
def test_near_miss_payloads_never_escape(template: str, payload: bytes) -> None:
    topic = NEAR_MISS_TOPICS[template]
    result = BIG_DECODERS[template].decode(topic, payload, NOW)
    _check_result(template, payload, result)
    assert not any(r.reason == "internal" for r in result.refusals), result.refusals[:3]  # no bug hit either
    fields = TopicTemplate(template).match(topic)
    for r in result.readings:  # the topic's device, quantity and tags are never overridden
        assert fields.device is None or r.stream.device == fields.device
        assert fields.quantity is None or r.stream.quantity == fields.quantity
        assert set(fields.tags) <= set(r.stream.tags)


def _check_result(template: str, payload: bytes, result: DecodeResult) -> None:
    # Every message is accounted for; an empty batch ("[]") or line protocol made only of
    # comments holds nothing to account for.
    only_comments = all(x.strip().startswith(b"#") for x in payload.split(b"\n") if x.strip())
    assert result.readings or result.refusals or payload.strip() == b"[]" or only_comments
    for refusal in result.refusals:
        assert refusal.reason and refusal.reason.isidentifier() and isinstance(refusal.detail, str)
    if not result.readings:
        return
    settings_ = DECODERS[template].settings  # the caps are the same in BIG_DECODERS
    for r in result.readings:
        assert math.isfinite(r.value)
        assert stream_problem(r.stream) is None, (r.stream, stream_problem(r.stream))
        assert len(r.stream.tags) <= settings_.max_tags
        assert series_key_bytes(r.stream) <= settings_.max_series_key_bytes
    lines = FMT.lines(result.readings).decode().split("\n")
    lines = [x for x in lines if x]
    assert len(lines) == len(result.readings)  # one reading, one line: nothing smuggled in
    for line, r in zip(lines, result.readings, strict=True):
        point = parse_line(line)
        assert point.measurement == "readings"
        assert list(point.fields) == ["value"]
        assert point.tags.get("device") == r.stream.device and point.tags.get("quantity") == r.stream.quantity
        assert {k: v for k, v in point.tags.items() if k not in ("device", "quantity")} == dict(r.stream.tags)
        assert point.ts == r.ts_ns
