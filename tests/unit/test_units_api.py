"""Units where the API shows them: StreamOut (single and multivariate streams) and AlertOut."""

from __future__ import annotations

import math

from service.api.schemas import AlertOut, StreamOut, with_units
from service.records import NS_PER_S, Alert, StreamKey
from service.units import UnitBook

NOW = 1_700_000_000 * NS_PER_S


def _alert(**kw: object) -> Alert:
    return Alert(StreamKey("p", "t"), "t", "firing", NOW, 9.0, 1.0, 0.0, 2.0, 0.99, "m", "1", True, **kw)  # type: ignore[arg-type]


def test_rest_alert_carries_the_unit() -> None:
    a = _alert(unit="°C")
    assert AlertOut.from_alert(a).unit == "°C"
    assert AlertOut.from_alert(_alert()).unit is None


def test_stream_out_units() -> None:
    book = UnitBook()
    book.seen(StreamKey("p", "t"), "°C")
    book.seen(StreamKey("press7", "pressure"), "bar")

    def out(id_: str, quantity: str, feature: str | None) -> StreamOut:
        return StreamOut(id=id_, device="x", quantity=quantity, feature=feature, model="m", model_version="1",
                         status="ok", warm_up={"have": 1, "need": 1, "message": "ready"}, last_time=None,
                         last_value=math.nan, score=None, expected=None, lower=None, upper=None)

    single = with_units(out("p/t", "t", None), book)
    assert single.unit == "°C" and single.units is None
    multi = with_units(out("press7", "*", "pressure"), book, ["pressure", "temperature"])
    assert multi.unit == "bar" and multi.units == {"pressure": "bar"}
