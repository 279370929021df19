"""Units: decoded from payloads and topics without costing readings, and the precedence of their sources."""

from __future__ import annotations

import orjson
import pytest

from service.alerts.payload import alert_dict
from service.config import IngestSettings, ModelBinding, StreamRules
from service.ingest.decode import Decoder
from service.metrics import Metrics
from service.records import NS_PER_S, Alert, StreamKey
from service.units import MAX_UNIT_CHARS, UnitBook, unit_problem

NOW = 1_700_000_000 * NS_PER_S


def wired(topic: str = "sensors/{device}/{quantity}", **kw: object) -> tuple[Decoder, UnitBook, list[tuple[str, object]]]:
    """A decoder feeding a book, and the list of what reached the book."""
    d = Decoder(IngestSettings(topic=topic, **kw))  # type: ignore[arg-type]
    book = UnitBook(metrics=Metrics())
    calls: list[tuple[str, object]] = []

    def seen(key: StreamKey, unit: object) -> None:
        calls.append((key.id, unit))
        book.seen(key, unit)

    d.on_unit = seen
    return d, book, calls


def refused(book: UnitBook) -> dict[str, int]:
    return dict(book.refused)


# --- decoding ----------------------------------------------------------------------------
def test_json_value_with_unit_keeps_the_reading_and_reports_the_unit_once() -> None:
    d, book, calls = wired()
    for _ in range(3):
        r = d.decode("sensors/pump-1/temperature", b'{"value": 21.5, "unit": "\xc2\xb0C"}', NOW)
        assert not r.refusals
        assert [(x.stream.id, x.value, x.stream.tags) for x in r.readings] == [("pump-1/temperature", 21.5, ())]
    assert calls == [("pump-1/temperature", "°C")]  # repeated: not passed on again
    d.decode("sensors/pump-1/temperature", b'{"value": 70.7, "unit": "\xc2\xb0F"}', NOW)
    assert calls[-1] == ("pump-1/temperature", "°F")
    assert book.unit_of("pump-1/temperature") == "°F"  # the latest seen


def test_named_fields_unit_is_no_quantity_and_applies_per_field() -> None:
    d, book, _ = wired("sensors/{device}")
    r = d.decode("sensors/env-1", b'{"temperature": 21.5, "humidity": 40, "unit": {"temperature": "C", "humidity": "%"}}',
                 NOW)
    assert not r.refusals
    assert sorted(x.stream.quantity for x in r.readings) == ["humidity", "temperature"]
    assert book.unit_of("env-1/temperature") == "C" and book.unit_of("env-1/humidity") == "%"
    r = d.decode("sensors/env-2", b'{"power": 3.5, "unit": "kW"}', NOW)  # one unit for every field
    assert [x.stream.id for x in r.readings] == ["env-2/power"] and not r.refusals
    assert book.unit_of("env-2/power") == "kW"


def test_value_and_quantity_objects_and_arrays_carry_units() -> None:
    d, book, _ = wired("sensors/{device}")
    body = orjson.dumps([{"quantity": "flow", "value": 2.0, "unit": "m3/h"}, {"quantity": "head", "value": 9.0}])
    r = d.decode("sensors/p1", body, NOW)
    assert len(r.readings) == 2 and not r.refusals
    assert book.unit_of("p1/flow") == "m3/h" and book.unit_of("p1/head") is None


def test_line_protocol_unit_tag_is_the_unit_not_a_tag() -> None:
    d, book, _ = wired("sensors/{device}")
    r = d.decode("sensors/boiler", b"boiler,unit=bar,site=hq pressure=1.7", NOW)
    assert not r.refusals
    assert [x.stream.id for x in r.readings] == ["boiler/pressure;site=hq"]
    assert book.unit_of("boiler/pressure;site=hq") == "bar"


def test_topic_template_unit_level() -> None:
    d, book, _ = wired("sensors/{device}/{quantity}/{unit}")
    assert d.template.subscription == "sensors/+/+/+"
    r = d.decode("sensors/meter-1/energy/kWh", b"12.5", NOW)
    assert [x.stream.id for x in r.readings] == ["meter-1/energy"] and not r.refusals
    assert book.unit_of("meter-1/energy") == "kWh"
    # The payload's unit is more specific than the topic's within one message.
    d.decode("sensors/meter-1/energy/kWh", b'{"value": 12.6, "unit": "Wh"}', NOW)
    assert book.unit_of("meter-1/energy") == "Wh"


@pytest.mark.parametrize("unit", [b'"' + b"x" * (MAX_UNIT_CHARS + 1) + b'"', b'"a\\u0007b"', b'""', b"5", b"[1]"])
def test_bad_unit_is_a_counted_drop_of_the_unit_only(unit: bytes) -> None:
    d, book, _ = wired()
    r = d.decode("sensors/p/t", b'{"value": 1.0, "unit": ' + unit + b"}", NOW)
    assert [x.value for x in r.readings] == [1.0] and not r.refusals
    assert book.unit_of("p/t") is None
    assert sum(refused(book).values()) == 1
    d.decode("sensors/p/t", b'{"value": 2.0, "unit": ' + unit + b"}", NOW)
    assert sum(refused(book).values()) == 1  # the same bad unit again: not passed on again


def test_bad_units_reasons_and_the_metric() -> None:
    m = Metrics()
    book = UnitBook(metrics=m)
    book.seen(StreamKey("d", "q"), "x" * 40)
    book.seen(StreamKey("d", "q"), "a\nb")
    assert book.refused == {"too_long": 1, "control_characters": 1}
    text = m.render().decode()
    assert 'sensorcast_units_refused_total{reason="too_long"} 1.0' in text
    assert unit_problem("°C") is None and unit_problem(" ") == "empty" and unit_problem(None) == "not_string"


def test_units_without_a_book_cost_nothing_and_change_nothing() -> None:
    d = Decoder(IngestSettings(topic="sensors/{device}/{quantity}"))
    r = d.decode("sensors/p/t", b'{"value": 1.0, "unit": "C"}', NOW)
    assert [x.value for x in r.readings] == [1.0] and not r.refusals


def test_a_failing_book_never_costs_the_reading() -> None:
    d = Decoder(IngestSettings(topic="sensors/{device}/{quantity}"))

    def broken(key: StreamKey, unit: object) -> None:
        raise RuntimeError("bug")

    d.on_unit = broken
    r = d.decode("sensors/p/t", b'{"value": 1.0, "unit": "C"}', NOW)
    assert [x.value for x in r.readings] == [1.0] and not r.refusals


def test_the_book_is_bounded() -> None:
    book = UnitBook(max_streams=2)
    for i in range(3):
        book.seen(StreamKey(f"d{i}", "q"), "C")
    assert len(book) == 2 and book.refused == {"full": 1} and book.unit_of("d2/q") is None
    book.seen(StreamKey("d0", "q"), "F")  # a known stream may still change its unit
    assert book.unit_of("d0/q") == "F"
    book.forget("d0/q")
    assert book.unit_of("d0/q") is None and len(book) == 1


# --- precedence ------------------------------------------------------------------------------
def test_precedence_own_settings_then_binding_then_readings() -> None:
    own: dict[str, StreamRules] = {}
    bindings = [ModelBinding(model="m", device="pump*", quantity="temp*", rules=StreamRules(unit="K")),
                ModelBinding(model="m", device="*", rules=StreamRules(max=5))]
    book = UnitBook(own=own.get, bindings=bindings)
    book.seen(StreamKey("pump-1", "temperature"), "°C")
    book.seen(StreamKey("fan-1", "temperature"), "°F")
    assert book.unit_of("pump-1/temperature") == "K"  # binding > readings
    assert book.unit_of("fan-1/temperature") == "°F"  # its first matching binding sets no unit
    own["pump-1/temperature"] = StreamRules(unit="mK")
    assert book.unit_of("pump-1/temperature") == "mK"  # own settings > binding
    assert book.unit_of("unknown/q") is None


def test_multivariate_units_per_feature() -> None:
    own = {"press7": StreamRules(features={"pressure": StreamRules(unit="bar")})}
    bindings = [ModelBinding(model="m", device="press*", rules=StreamRules(unit="?", features={"speed": StreamRules(unit="rpm")}))]
    book = UnitBook(own=own.get, bindings=bindings)
    for q, u in (("pressure", "Pa"), ("temperature", "°C"), ("speed", "1/s")):
        book.seen(StreamKey("press7", q), u)
    assert book.unit_of("press7", "pressure") == "bar"  # own feature entry
    assert book.unit_of("press7", "speed") == "rpm"  # binding feature entry > binding-wide
    assert book.unit_of("press7", "temperature") == "?"  # binding-wide > readings
    assert book.units_of("press7", ["pressure", "speed"]) == {"pressure": "bar", "speed": "rpm"}
    plain = UnitBook()
    plain.seen(StreamKey("press7", "t", (("site", "hq"),)), "°C")
    assert plain.unit_of("press7;site=hq", "t") == "°C" and plain.unit_of("press7;site=hq") is None


def test_a_device_quantitys_own_unit_serves_its_multivariate_stream() -> None:
    # `sensorcast import` stores units per quantity (press7/Temp); a model over the device
    # serves the stream press7, whose feature Temp must still show it.
    own = {"press7/Temp": StreamRules(unit="°C"), "press7/Druck": StreamRules(unit="bar"),
           "press9": StreamRules(unit="K")}
    bindings = [ModelBinding(model="m", device="press*", rules=StreamRules(unit="?"))]
    book = UnitBook(own=own.get, bindings=bindings)
    assert book.units_of("press7", ["Temp", "Druck", "rpm"]) == {"Temp": "°C", "Druck": "bar", "rpm": "?"}
    own["press9/Temp"] = StreamRules(unit="°F")
    assert book.unit_of("press9", "Temp") == "K"  # the device's own stream-wide unit wins


def test_alert_payload_carries_the_unit() -> None:
    a = Alert(StreamKey("p", "t"), "t", "firing", NOW, 9.0, 1.0, 0.0, 2.0, 0.99, "m", "1", True, unit="°C")
    assert alert_dict(a)["unit"] == "°C"
    assert alert_dict(Alert(StreamKey("p", "t"), "t", "resolved", NOW, 1.0, 1.0, 0.0, 2.0, 0.1, "m", "1", True))["unit"] is None
