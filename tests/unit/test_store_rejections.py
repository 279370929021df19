"""Store answers classified, bisection isolating refused points, and the dead-letter file."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import orjson
import pytest
from urllib3 import HTTPResponse

from service.errors import StoreAuthError, StoreError, StoreRejected
from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.store.deadletter import DeadLetter
from service.store.memory import MemoryStore
from service.store.rejections import KINDS, Rejection, error_for_status, isolate, kind_of, summarize

S = StreamKey("dev", "q")
BAD = "points beyond retention policy"


def pts(n: int) -> list[Reading]:
    return [Reading(S, 1_000 + i, float(i)) for i in range(n)]


def refusing(*bad_ts: int) -> MemoryStore:
    store = MemoryStore()
    bad = set(bad_ts)
    store.reject = lambda r: BAD if r.ts_ns in bad else None
    return store


def first_error(store: MemoryStore, batch: list[Reading]) -> StoreRejected:
    with pytest.raises(StoreRejected) as e:
        store.write(batch)
    return e.value


# --- classification --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "cls", "kind"),
    [
        (400, '{"error":"partial write: points beyond retention policy dropped=1"}', StoreRejected, "retention"),
        (400, '{"error":"partial write: field type conflict: input field \\"value\\" dropped=3"}', StoreRejected,
         "field_type_conflict"),
        (400, '{"error":"partial write: max-series-per-database limit exceeded: (1000000) dropped=2"}',
         StoreRejected, "series_limit"),
        (413, '{"error":"Request Entity Too Large"}', StoreRejected, "too_large"),
        (422, '{"code":"unprocessable entity","message":"points beyond retention policy"}', StoreRejected,
         "retention"),
        (405, "method not allowed", StoreRejected, "refused"),
        (401, '{"error":"authorization failed"}', StoreAuthError, None),
        (403, '{"error":"forbidden"}', StoreAuthError, None),
        (404, '{"error":"database not found: \\"x\\""}', StoreError, None),
        (408, "timeout", StoreError, None),
        (429, "slow down", StoreError, None),
        (500, '{"error":"timeout"}', StoreError, None),
        (503, "unavailable", StoreError, None),
        (200, "", StoreError, None),
    ],
)
def test_store_answers_are_classified(status: int, body: str, cls: type[StoreError], kind: str | None) -> None:
    e = error_for_status(status, body, "influxdb write")
    assert type(e) is cls
    if isinstance(e, StoreRejected):
        assert (e.status, e.kind) == (status, kind) and kind in KINDS
    else:
        assert not isinstance(e, StoreRejected)  # transient: the writer spools and retries


def test_partial_write_reports_dropped_and_echoed_lines_are_elided() -> None:
    line = "m,device=d,quantity=q,t=" + "a\\\\," * 20_000 + " value=2 1796525722675072086"
    body = orjson.dumps({"error": f"partial write: unable to parse '{line}': max key length exceeded: "
                                  "66025 > 65535\nunable to parse 'm x=1 y': bad timestamp dropped=0"}).decode()
    e = error_for_status(400, body, "influxdb write")
    assert isinstance(e, StoreRejected) and e.kind == "series_key_too_long" and e.dropped == 0
    assert len(e.detail) <= 500 and "max key length exceeded: 66025 > 65535" in e.detail
    assert "a\\\\,a" not in e.detail  # the 80 KB line itself is not repeated
    assert summarize('{"error":"partial write: points beyond retention policy dropped=7"}') == (
        "partial write: points beyond retention policy dropped=7"
    )
    assert kind_of(400, "something new") == "refused"


def test_influx2_api_exception_is_classified_by_status(tmp_path: Path) -> None:
    from influxdb_client.rest import ApiException

    from service.store.influx2 import Influx2Store

    store = Influx2Store("http://127.0.0.1:9", "b", "o", "token", "readings", 1.0)  # never contacted

    class Raising:
        def __init__(self, status: int, body: bytes) -> None:
            self.exc = ApiException(http_resp=HTTPResponse(body=body, status=status, reason="x", headers={}))  # type: ignore[no-untyped-call]

        def write(self, **_: object) -> None:
            raise self.exc

    try:
        # What influxdb-client raises for a 2.x answer (its own exception, built from the response).
        store._write_api = Raising(422, b'{"code":"unprocessable entity","message":"partial write: points beyond '
                                        b'retention policy dropped=1"}')
        with pytest.raises(StoreRejected) as rej:
            store.write(pts(2))
        assert (rej.value.status, rej.value.kind, rej.value.dropped) == (422, "retention", 1)
        store._write_api = Raising(401, b'{"code":"unauthorized","message":"unauthorized access"}')
        with pytest.raises(StoreAuthError):
            store.write(pts(2))
        store._write_api = Raising(503, b'{"code":"unavailable","message":"busy"}')
        with pytest.raises(StoreError) as err:
            store.write(pts(2))
        assert not isinstance(err.value, StoreRejected)
    finally:
        store.close()


# --- bisection -------------------------------------------------------------------------
@pytest.mark.parametrize("partial", [False, True], ids=["all-or-nothing", "partial-writes"])
@pytest.mark.parametrize("n", [13, 16])
def test_one_bad_point_at_every_position_is_isolated(n: int, partial: bool) -> None:
    for pos in range(n):
        batch = pts(n)
        store = refusing(batch[pos].ts_ns)
        store.partial_writes = partial
        got = isolate(store.write, batch, first_error(store, batch))
        assert [r.reading for r in got] == [batch[pos]], pos
        assert got[0].kind == "retention" and BAD in got[0].detail
        assert store.read_range(S, 0, 2**62) == batch[:pos] + batch[pos + 1 :]
        # 1 first write + 2 per level of the bisection.
        assert store.attempts <= 1 + 2 * math.ceil(math.log2(n)), (pos, store.attempts)


@pytest.mark.parametrize("partial", [False, True], ids=["all-or-nothing", "partial-writes"])
def test_several_bad_points_are_all_isolated_and_the_rest_written(partial: bool) -> None:
    batch = pts(50)
    bad = [batch[i] for i in (0, 7, 8, 31, 49)]
    store = refusing(*(r.ts_ns for r in bad))
    store.partial_writes = partial
    got = isolate(store.write, batch, first_error(store, batch))
    assert [r.reading for r in got] == bad
    assert store.read_range(S, 0, 2**62) == [r for r in batch if r not in bad]


def test_all_bad_points_are_all_refused() -> None:
    batch = pts(20)
    store = refusing(*(r.ts_ns for r in batch))
    got = isolate(store.write, batch, first_error(store, batch))
    assert [r.reading for r in got] == batch and store.count() == 0
    assert store.attempts == 1 + 2 * 20 - 2  # the whole tree: every point alone in the end
    # A store that says it dropped every point (influxd's "dropped=N") needs no bisection.
    store = refusing(*(r.ts_ns for r in batch))
    store.partial_writes = True
    got = isolate(store.write, batch, first_error(store, batch))
    assert [r.reading for r in got] == batch and store.attempts == 1


def test_a_spent_bisection_budget_dead_letters_the_unresolved_rest_as_unisolated() -> None:
    batch = pts(64)
    store = refusing(*(r.ts_ns for r in batch[::2]))  # every other point: the worst case
    got = isolate(store.write, batch, first_error(store, batch), max_requests=10)
    assert store.attempts <= 1 + 10
    kinds = {r.kind for r in got}
    assert "unisolated" in kinds and kinds <= {"retention", "unisolated"}
    # Nothing is lost: every point is either stored or dead-lettered (all-or-nothing store).
    dead, stored = [r.reading for r in got], store.read_range(S, 0, 2**62)
    assert sorted(dead + stored, key=lambda r: r.ts_ns) == batch
    assert all(r.kind == "unisolated" or r.reading.ts_ns % 2 == 0 for r in got)


def test_a_transient_error_during_bisection_propagates() -> None:
    batch = pts(16)
    store = refusing(batch[9].ts_ns)
    err = first_error(store, batch)
    real = store.write

    def flaky(rs: object) -> None:
        if store.attempts == 3:
            raise StoreError("connection reset")
        real(rs)  # type: ignore[arg-type]

    with pytest.raises(StoreError) as e:
        isolate(flaky, batch, err)
    assert not isinstance(e.value, StoreRejected)


def test_bisection_keeps_the_last_value_of_a_repeated_point() -> None:
    a, b = StreamKey("a", "q"), StreamKey("b", "q")
    batch = [Reading(a, 5, 1.0), Reading(b, 1, 0.0), Reading(b, 2, 0.0), Reading(a, 5, 2.0)]
    store = refusing(2)
    store.partial_writes = True
    got = isolate(store.write, batch, first_error(store, batch))
    assert [r.reading for r in got] == [batch[2]]
    assert store.read_range(a, 0, 10) == [Reading(a, 5, 2.0)]


# --- dead-letter file ------------------------------------------------------------------
def test_dead_letter_lines_counts_rotation_and_a_disk_that_refuses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    dl = DeadLetter(tmp_path / "deadletter.jsonl", m, max_bytes=2_000)
    tagged = StreamKey("pump 1", "temp", (("site", "n,=\\ x"),))
    odd = StreamKey("d\udc80", "q")  # a lone surrogate: the line must still be written
    rejs = [Rejection(Reading(tagged, 7, 1.5), 400, "retention", "partial write: points beyond retention policy"),
            Rejection(Reading(odd, 8, float("nan")), 0, "invalid_value", "NOT NULL constraint failed")]
    dl.record(rejs)
    lines = [orjson.loads(x) for x in (tmp_path / "deadletter.jsonl").read_bytes().splitlines()]
    assert lines[0]["reason"] == "retention" and lines[0]["status"] == 400
    assert lines[0]["reading"] == {"device": "pump 1", "quantity": "temp", "tags": {"site": "n,=\\ x"},
                                   "ts_ns": 7, "value": 1.5}
    assert lines[1]["reading"]["value"] == "nan" and lines[1]["reason"] == "invalid_value"
    assert m.store_rejected.labels("retention")._value.get() == 1
    assert m.store_rejected.labels("invalid_value")._value.get() == 1
    for _ in range(10):
        dl.record(rejs[:1])
    assert (tmp_path / "deadletter.jsonl.1").exists()
    assert (tmp_path / "deadletter.jsonl").stat().st_size <= 2_000
    # A dead-letter file that cannot be written: logged with the points, never raised.
    broken = DeadLetter(tmp_path / "missing-dir" / "deadletter.jsonl", m)
    with caplog.at_level(logging.ERROR):
        broken.record(rejs[:1])
    assert "not writable" in caplog.text and "pump 1" in caplog.text
    assert m.store_rejected.labels("retention")._value.get() == 12
