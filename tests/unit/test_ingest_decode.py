"""Decoding payloads and topics into readings, and refusing what cannot be stored."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import IngestSettings
from service.errors import ConfigError, DecodeError
from service.ingest.decode import Decoder
from service.ingest.timestamps import iso_to_ns, to_ns
from service.ingest.topics import TopicTemplate
from service.records import NS_PER_S, StreamKey

NOW = 1_700_000_000 * NS_PER_S


def dec(topic: str = "sensors/{device}/{quantity}", **kw: object) -> Decoder:
    return Decoder(IngestSettings(topic=topic, **kw))  # type: ignore[arg-type]


def reasons(result: object) -> list[str]:
    return [r.reason for r in result.refusals]  # type: ignore[attr-defined]


# --- timestamps ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [
        (1_700_000_000, 1_700_000_000 * NS_PER_S),
        (1_700_000_000_123, 1_700_000_000_123_000_000),
        (1_700_000_000_123_456, 1_700_000_000_123_456_000),
        (1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        (1_700_000_000.5, 1_700_000_000_500_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000 * NS_PER_S),
        ("2023-11-14T23:13:20.25+01:00", 1_700_000_000_250_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000 * NS_PER_S),  # naive = UTC
    ],
)
def test_timestamp_units_inferred_by_magnitude(value: object, expected: int) -> None:
    assert to_ns(value) == expected


@pytest.mark.parametrize("value", [True, None, "yesterday", float("nan"), float("inf"), [1], {}])
def test_bad_timestamps_refused(value: object) -> None:
    with pytest.raises(DecodeError) as e:
        to_ns(value)
    assert e.value.reason == "bad_timestamp"


@given(st.integers(min_value=0, max_value=4_000_000_000 * NS_PER_S))
def test_iso_round_trip_microseconds(ns: int) -> None:
    from datetime import UTC, datetime

    us = ns // 1000
    dt = datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)
    assert iso_to_ns(dt.isoformat()) == us * 1000


# --- topics ----------------------------------------------------------------------------
def test_topic_template_fields_and_subscription() -> None:
    t = TopicTemplate("site/{tag_site}/+/{device}/{quantity}")
    assert t.subscription == "site/+/+/+/+"
    f = t.match("site/north/x/pump 1/temp")
    assert (f.device, f.quantity, f.tags) == ("pump 1", "temp", (("site", "north"),))
    with pytest.raises(DecodeError):
        t.match("site/north/x/pump")
    with pytest.raises(DecodeError):
        t.match("other/north/x/pump/temp")


def test_topic_template_rest_wildcard() -> None:
    t = TopicTemplate("sensors/{device}/#")
    assert t.subscription == "sensors/+/#"
    assert t.match("sensors/a/b/c").device == "a"
    assert not t.has_quantity


@pytest.mark.parametrize("bad", ["a/#/b", "a/{dev}", "a/{device}/{device}", "a//b", "a/x+y"])
def test_bad_templates_rejected(bad: str) -> None:
    with pytest.raises(ConfigError):
        TopicTemplate(bad)


# --- payloads --------------------------------------------------------------------------
def test_bare_number_uses_receive_time() -> None:
    r = dec().decode("sensors/d1/temp", b" 21.5\n", NOW)
    assert not r.refusals
    assert [(x.stream, x.ts_ns, x.value) for x in r.readings] == [(StreamKey("d1", "temp"), NOW, 21.5)]


def test_json_object_with_value_and_tags() -> None:
    body = orjson.dumps({"ts": 1_700_000_000.5, "value": 3, "tags": {"site": "n"}})
    r = dec().decode("sensors/d1/temp", body, NOW)
    assert [(x.stream, x.ts_ns, x.value) for x in r.readings] == [
        (StreamKey("d1", "temp", (("site", "n"),)), 1_700_000_000_500_000_000, 3.0)
    ]


def test_named_fields_give_quantities_without_quantity_in_topic() -> None:
    body = b'{"ts": 1700000000.5, "temperature": 21.5, "humidity": 40, "status": "ok"}'
    r = dec("sensors/{device}").decode("sensors/d1", body, NOW)
    got = sorted((x.stream.quantity, x.value) for x in r.readings)
    assert got == [("humidity", 40.0), ("temperature", 21.5)]
    assert reasons(r) == ["non_numeric"]


def test_batch_array_keeps_good_elements() -> None:
    body = orjson.dumps(
        [
            {"ts": 1_700_000_000, "value": 1.0},
            {"ts": 1_700_000_001, "value": "x"},
            {"ts": 1_700_000_002, "value": None},
            {"ts": 1_700_000_003, "value": True},
            7,
            {"ts": 1_700_000_004, "value": 2.0},
            {"ts": 100, "value": 3.0},
        ]
    )
    r = dec().decode("sensors/d/q", body, NOW)
    assert [x.value for x in r.readings] == [1.0, 2.0]
    assert sorted(reasons(r)) == sorted(["non_numeric"] * 3 + ["bad_shape", "too_old"])


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"nan", "not_finite"),
        (b"-inf", "not_finite"),
        (b"1e999", "not_finite"),
        (b"hello", "non_numeric"),
        (b"true", "non_numeric"),
        (b"null", "non_numeric"),
        (b'"21.5"', "non_numeric"),
        (b'{"value": NaN}', "bad_json"),
        (b'{"value": 1', "bad_json"),
        (b"[" * 5000 + b"]" * 5000, "bad_json"),
        (b'{"ts": 1700000000}', "no_value"),
        (b'{"value": 1, "ts": 4102444800}', "too_far_future"),
        (b'{"value": 1, "ts": -5}', "too_old"),
        (b'{"value": 1, "ts": "soon"}', "bad_timestamp"),
        (b'{"value": 1e400}', "bad_json"),
        (b"\xff\xfe\x00garbage", "non_numeric"),
        (b'{"\xff": 1}', "bad_encoding"),
    ],
)
def test_refusals_by_reason(payload: bytes, reason: str) -> None:
    r = dec().decode("sensors/d/q", payload, NOW)
    assert not r.readings
    assert reasons(r) == [reason]


def test_size_cap() -> None:
    r = dec(max_payload_bytes=100).decode("sensors/d/q", b"1" * 101, NOW)
    assert reasons(r) == ["too_large"]


@pytest.mark.parametrize(
    "topic", ["sensors/with\nnewline/q", "sensors/trailing\\/q", "sensors/ pad/q", "sensors/" + "x" * 300 + "/q"]
)
def test_unsafe_names_refused(topic: str) -> None:
    r = dec().decode(topic, b"1", NOW)
    assert reasons(r) == ["bad_name"]


def test_names_with_separators_are_accepted() -> None:
    r = dec().decode('sensors/a b,c=d"e\'f\\g/q', b"1", NOW)
    assert r.readings and r.readings[0].stream.device == 'a b,c=d"e\'f\\g'


def test_topic_mismatch_counted() -> None:
    assert reasons(dec().decode("sensors/only", b"1", NOW)) == ["topic_mismatch"]


# --- line protocol ---------------------------------------------------------------------
def test_line_protocol_payload() -> None:
    body = (
        b"env,device=pump\\ 1,site=n temperature=21.5,humidity=40i,state=\"on\" 1700000000000000000\n"
        b"# comment\n"
        b"env,device=p2 value=1.5 1700000001\n"
        b"garbage line here\n"
    )
    r = dec("sensors/#").decode("sensors/x", body, NOW)
    got = sorted((x.stream.device, x.stream.quantity, x.stream.tags, x.ts_ns, x.value) for x in r.readings)
    assert got == [
        ("p2", "env", (), 1_700_000_001 * NS_PER_S, 1.5),
        ("pump 1", "humidity", (("site", "n"),), 1_700_000_000 * NS_PER_S, 40.0),
        ("pump 1", "temperature", (("site", "n"),), 1_700_000_000 * NS_PER_S, 21.5),
    ]
    assert sorted(reasons(r)) == ["bad_line_protocol", "non_numeric"]


def test_line_protocol_injection_via_topic_is_one_point() -> None:
    # A device name that looks like line protocol is just a (strange) name.
    r = dec().decode("sensors/x value=666 1,evil=1/q", b"1", NOW)
    assert len(r.readings) == 1 and r.readings[0].stream.device == "x value=666 1,evil=1"


@given(st.binary(max_size=300))
def test_decoder_never_raises(payload: bytes) -> None:
    r = dec().decode("sensors/d/q", payload, NOW)
    for x in r.readings:
        assert math.isfinite(x.value)
    assert r.readings or r.refusals


@given(
    st.lists(
        st.fixed_dictionaries(
            {"ts": st.integers(1_600_000_000, 1_700_000_000), "value": st.floats(allow_nan=False, allow_infinity=False)}
        ),
        max_size=20,
    )
)
def test_json_batch_round_trip(items: list[dict[str, float]]) -> None:
    r = dec().decode("sensors/d/q", orjson.dumps(items), NOW)
    assert [(x.ts_ns, x.value) for x in r.readings] == [(i["ts"] * NS_PER_S, i["value"]) for i in items]
