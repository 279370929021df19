"""Line protocol escaping and name checks (the real-server round trip is in integration)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.ingest.lineparse import parse_line
from service.records import Reading, StreamKey
from service.store.lineproto import LineFormatter, name_problem, stream_problem

safe_names = st.text(min_size=1, max_size=30).filter(lambda s: name_problem(s) is None)


@given(safe_names, safe_names, st.lists(st.tuples(safe_names, safe_names), max_size=3, unique_by=lambda t: t[0]),
       st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2**62))
def test_formatted_line_parses_back_to_the_same_point(device: str, quantity: str,
                                                      tags: list[tuple[str, str]], value: float, ts: int) -> None:
    tags = [(k, v) for k, v in tags if stream_problem(StreamKey("d", "q", ((k, v),))) is None]
    s = StreamKey(device, quantity, tuple(sorted(tags)))
    line = LineFormatter("readings").lines([Reading(s, ts, value)]).decode()
    assert "\n" not in line
    p = parse_line(line)
    assert p.measurement == "readings"
    assert p.tags == {"device": device, "quantity": quantity, **dict(tags)}
    assert list(p.fields) == ["value"] and float(p.fields["value"]) == value
    assert p.ts == ts


@pytest.mark.parametrize("name", ["", "a\nb", "a\rb", "nul\x00", "ends\\", " lead", "x" * 257])
def test_unrepresentable_names_refused(name: str) -> None:
    assert name_problem(name) is not None


def test_reserved_tag_keys_refused() -> None:
    assert stream_problem(StreamKey("d", "q", (("time", "x"),)))
    assert stream_problem(StreamKey("d", "q", (("device", "x"),)))


def test_formatter_rejects_bad_measurement() -> None:
    with pytest.raises(ValueError):
        LineFormatter("bad\n")


def test_numpy_scalars_format_as_plain_floats() -> None:
    import numpy as np

    line = LineFormatter("readings").lines([Reading(StreamKey("d", "q"), 5, np.float64(20.0))]).decode()  # type: ignore[arg-type]
    assert line == "readings,device=d,quantity=q value=20.0 5"
