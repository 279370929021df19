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


# --- nothing escapes: exceptions of any type become refusals ------------------------------
def test_line_protocol_integer_beyond_a_float_is_not_finite() -> None:
    # The poison message of issue #12: OverflowError used to escape and end the MQTT loop.
    for digits in (400, 5000):  # 5000: also past int()'s 4300-digit limit
        r = dec("sensors/{device}").decode("sensors/d", b"m x=" + b"9" * digits + b"i", NOW)
        assert not r.readings and reasons(r) == ["not_finite"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"m x=1e99999999", "not_finite"),
        (b"m x=-9" + b"9" * 400 + b"u", "bad_line_protocol"),  # unsigned cannot be negative
        (b"m x=" + b"0" * 1000 + b"7i", None),  # leading zeros: just 7
        (b"m x=1_000", "bad_line_protocol"),  # Python's float() would take it, influxd does not
        ("m x=١٢٣".encode(), "bad_line_protocol"),  # other scripts' digits
        (b"m x=NaN", "not_finite"),
        (b"m x=1 " + b"9" * 400, "bad_line_protocol"),  # timestamp beyond int64
        (b'{"value": 1, "ts": "' + b"9" * 5000 + b'"}', "bad_timestamp"),
        (b'{"value": 1e308, "ts": 1e308}', "too_far_future"),
        (b'{"value": ' + b"9" * 400 + b"}", "bad_json"),  # orjson: a number beyond a double
    ],
)
def test_near_miss_numbers(payload: bytes, reason: str | None) -> None:
    r = dec("sensors/{device}").decode("sensors/d", payload, NOW)
    if reason is None:
        assert [x.value for x in r.readings] == [7.0] and not r.refusals
    else:
        assert not r.readings and reasons(r) == [reason]


def test_an_unexpected_exception_is_an_internal_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    d = dec()

    def boom(*a: object) -> None:
        raise ZeroDivisionError("x" * 1000)

    monkeypatch.setattr(d, "_check", boom)
    r = d.decode("sensors/d/q", b"1", NOW)
    assert not r.readings and reasons(r) == ["internal"]
    assert r.refusals[0].detail.startswith("ZeroDivisionError: xxx") and len(r.refusals[0].detail) < 250


def test_an_internal_error_in_one_element_keeps_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    d = dec()
    real = d._object

    def flaky(topic: str, fields: object, obj: dict[str, object], *rest: object) -> None:
        if obj.get("value") == 2:
            raise RecursionError("deep")
        real(topic, fields, obj, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(d, "_object", flaky)
    r = d.decode("sensors/d/q", orjson.dumps([{"value": 1}, {"value": 2}, {"value": 3}]), NOW)
    assert [x.value for x in r.readings] == [1.0, 3.0]
    assert [(x.reason, x.detail) for x in r.refusals] == [("internal", "[1] RecursionError: deep")]


# --- caps: what the store would refuse never reaches it --------------------------------------
def test_too_many_tags_refused() -> None:
    tags = {f"t{i}": "v" for i in range(33)}
    r = dec().decode("sensors/d/q", orjson.dumps({"value": 1, "tags": tags}), NOW)
    assert reasons(r) == ["too_many_tags"]
    del tags["t0"]
    assert len(dec().decode("sensors/d/q", orjson.dumps({"value": 1, "tags": tags}), NOW).readings) == 1
    lp = b"m," + b",".join(f"t{i}=v".encode() for i in range(3)) + b" value=1"
    assert reasons(dec("sensors/{device}", max_tags=2).decode("sensors/d", lp, NOW)) == ["too_many_tags"]


def test_series_key_too_long_refused() -> None:
    # The issue's reading: 240 tags full of commas, ~123 KB escaped; with 30 tags of 200
    # characters each, the key is past 4 KiB while every name is legal.
    tags = {f"k{i}": "," * 200 for i in range(30)}
    r = dec().decode("sensors/d/q", orjson.dumps({"value": 1, "tags": tags}), NOW)
    assert reasons(r) == ["key_too_long"] and "bytes > limit 4096" in r.refusals[0].detail
    r = dec(max_series_key_bytes=60_000).decode("sensors/d/q", orjson.dumps({"value": 1, "tags": tags}), NOW)
    assert len(r.readings) == 1


def test_long_device_in_topic_counts_towards_the_key() -> None:
    r = dec(max_series_key_bytes=100).decode("sensors/" + "d" * 120 + "/q", b"1", NOW)
    assert reasons(r) == ["key_too_long"]


# --- the topic wins: payloads add, never override -----------------------------------------
TAGGED = "site/{tag_site}/{device}/{quantity}"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"value": 1, "tags": {"line": "a"}}, ("d", "q", (("line", "a"), ("site", "n")))),  # adds a tag
        ({"value": 1, "tags": {"site": "n"}}, ("d", "q", (("site", "n"),))),  # repeats one: fine
        ({"value": 1, "device": "d", "quantity": "q"}, ("d", "q", (("site", "n"),))),  # repeats: fine
        ({"value": 1, "tags": {"site": "hq"}}, "topic_mismatch"),
        ({"value": 1, "device": "other"}, "topic_mismatch"),
        ({"value": 1, "quantity": "other"}, "topic_mismatch"),
        ({"value": 1, "device": 5}, "topic_mismatch"),
    ],
)
def test_json_cannot_override_the_topic(payload: dict[str, object], expected: object) -> None:
    r = dec(TAGGED).decode("site/n/d/q", orjson.dumps(payload), NOW)
    if isinstance(expected, str):
        assert not r.readings and reasons(r) == [expected]
    else:
        assert [(x.stream.device, x.stream.quantity, x.stream.tags) for x in r.readings] == [expected]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"m,line=a value=1", [("d", "q", (("line", "a"), ("site", "n")))]),
        (b"m,site=n,device=d,quantity=q value=1,q=2", [("d", "q", (("site", "n"),))] * 2),
        (b"other value=1", [("d", "q", (("site", "n"),))]),  # the measurement is only a fallback
        (b"m,site=hq value=1", "topic_mismatch"),
        (b"m,device=other value=1", "topic_mismatch"),
        (b"m,quantity=other value=1", "topic_mismatch"),
        (b"m temperature=1", "topic_mismatch"),  # a named field is a quantity the topic did not name
    ],
)
def test_line_protocol_cannot_override_the_topic(line: bytes, expected: object) -> None:
    r = dec(TAGGED).decode("site/n/d/q", line, NOW)
    if isinstance(expected, str):
        assert not r.readings and reasons(r) == [expected]
    else:
        assert [(x.stream.device, x.stream.quantity, x.stream.tags) for x in r.readings] == expected


def test_payload_names_what_the_topic_leaves_open() -> None:
    r = dec("plant/{tag_site}/#").decode("plant/n/x", b"env,device=p1,line=a temperature=1", NOW)
    assert [(x.stream.device, x.stream.quantity, x.stream.tags) for x in r.readings] == [
        ("p1", "temperature", (("line", "a"), ("site", "n")))
    ]
    r = dec("plant/{tag_site}/#").decode("plant/n/x", b'{"device": "p1", "value": 1, "quantity": "t"}', NOW)
    assert [(x.stream.device, x.stream.quantity) for x in r.readings] == [("p1", "t")]


def test_the_issue_collision_payload_is_refused_on_the_default_topic() -> None:
    r = dec().decode("sensors/pump-1/x", b"m temperature;site\\=hq=99", NOW)
    assert not r.readings and reasons(r) == ["topic_mismatch"]
    r = dec("sensors/{device}").decode("sensors/pump-1", b"m temperature;site\\=hq=99", NOW)
    assert [x.stream.id for x in r.readings] == ["pump-1/temperature%3Bsite%3Dhq"]
    assert r.readings[0].stream != StreamKey("pump-1", "temperature", (("site", "hq"),))


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc2\x85#,1=1 1=1",  # U+0085 is str.strip() whitespace; a hypothesis find in CI
        b"# only=a comment",
        b"# a=b c\n\n# d=e f",
    ],
)
def test_a_body_of_no_data_lines_is_refused_never_silently_dropped(payload: bytes) -> None:
    result = dec().decode("sensors/d1/temp", payload, 1_700_000_000 * NS_PER_S)
    assert result.readings or result.refusals, "a message must yield readings or a refusal"
    assert not result.readings


@pytest.mark.parametrize("payload", [b'\xef\xbb\xbf{"value": 21.5}', b"\xef\xbb\xbf21.5", b"\xef\xbb\xbfm value=21.5"])
def test_a_utf8_byte_order_mark_is_skipped(payload: bytes) -> None:
    result = dec().decode("sensors/d1/temp", payload, 1_700_000_000 * NS_PER_S)
    assert [r.value for r in result.readings] == [21.5], result.refusals
