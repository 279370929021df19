"""Hypothesis over every decoder path (bare numbers, JSON objects and arrays, named
fields, line protocol, binary) and every topic template shape, extending the ingest
engineer's ``test_decoder_never_raises`` (one template, binary payloads only).

Properties: decoding never raises; every message yields readings or a refusal with a
reason; accepted readings are finite and storable; and each accepted reading becomes
exactly one line of line protocol that parses back to one point in the one measurement
with the one field and the same names (no injection, whatever the names hold)."""

from __future__ import annotations

import json
import math
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import IngestSettings
from service.ingest.decode import Decoder
from service.ingest.lineparse import parse_line
from service.store.lineproto import LineFormatter, stream_problem

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


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(template=st.sampled_from(TEMPLATES), parts=st.lists(NAMES, min_size=0, max_size=4), payload=PAYLOADS)
def test_every_decoder_path_is_total_and_injection_free(template: str, parts: list[str], payload: bytes) -> None:
    result = DECODERS[template].decode(topic_for(template, parts), payload, NOW)
    # Every message is accounted for; an empty batch ("[]") or line protocol made only of
    # comments holds nothing to account for.
    only_comments = all(x.strip().startswith(b"#") for x in payload.split(b"\n") if x.strip())
    assert result.readings or result.refusals or payload.strip() == b"[]" or only_comments
    for refusal in result.refusals:
        assert refusal.reason and refusal.reason.isidentifier() and isinstance(refusal.detail, str)
    if not result.readings:
        return
    for r in result.readings:
        assert math.isfinite(r.value)
        assert stream_problem(r.stream) is None, (r.stream, stream_problem(r.stream))
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
