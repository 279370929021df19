from datetime import UTC, datetime

from service.records import Reading, StreamKey


def test_stream_id_includes_sorted_tags() -> None:
    key = StreamKey("pump-1", "temperature", (("line", "A"), ("site", "north")))
    assert key.id == "pump-1/temperature;line=A;site=north"


def test_reading_time_keeps_microseconds() -> None:
    r = Reading(StreamKey("d", "q"), 1_700_000_000_123_456_789, 1.0)
    assert r.time == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
