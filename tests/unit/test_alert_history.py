"""The persisted alert history (service/store/alertlog.py): round trip, newest-first pages
with cursors, filters, retention, and files that are damaged, from a newer version or
locked by another process (a clear error or a retry, never a crash or a blocked engine)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.records import Alert, StreamKey
from service.store.alertlog import AlertLog, Cursor, HistoryError, Query, decode, encode

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def alert(i: int, stream: str = "pump-1", state: str = "firing", check: str = "anomaly", kind: str = "spike",
          ts_ns: int | None = None) -> Alert:
    return Alert(
        StreamKey(stream, "temperature"), "temperature", state, T0 + i * S if ts_ns is None else ts_ns,  # type: ignore[arg-type]
        90.0 + i, 20.0, 18.0, 22.0, 0.999, "m", "1", True, check=check, kind=kind,
    )


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AlertLog]:
    history = AlertLog(tmp_path / "alerts.sqlite")
    yield history
    history.close()


def everything(history: AlertLog, q: Query | None = None) -> list[Alert]:
    return history.page(10_000, q or Query())[0]


def test_every_field_survives_the_round_trip_and_a_reopen(tmp_path: Path) -> None:
    full = Alert(
        StreamKey("pump 1", "*", (("line", "a;b"), ("site", "hq"))), "pressure", "resolved", T0, math.nan, 20.5,
        18.0, 23.0, 0.25, "tep", "3", False, extra={"reason": "level_shift", "new_level": "31.2"},
        multivariate=True, check="anomaly", kind="multivariate", onset_ns=T0 - 5 * S, onset_value=33.0,
        onset_expected=20.0, contributors=(("pressure", 0.7), ("flow", 0.3)),
    )
    history = AlertLog(tmp_path / "a.sqlite")
    history.append(full)
    history.append(alert(1))
    assert history.flush()
    history.close()
    again = AlertLog(tmp_path / "a.sqlite")
    try:
        got = everything(again)
        assert [a.ts_ns for a in got] == [T0 + S, T0]
        assert got[1].stream_id == full.stream_id == "pump 1;line=a%3Bb;site=hq"
        assert _fields(got[1]) == _fields(full)  # NaN (JSON null) comes back as NaN
        assert got[0] == alert(1)
    finally:
        again.close()


def _fields(a: Alert) -> dict[str, object]:
    return {name: (None if isinstance(v, float) and math.isnan(v) else v)
            for name, v in ((name, getattr(a, name)) for name in Alert.__dataclass_fields__)}


def test_decode_inverts_encode_for_finite_numbers() -> None:
    a = alert(3)
    assert decode(encode(a)) == a


def test_pages_walk_newest_first_and_a_cursor_is_a_fixed_position(log: AlertLog) -> None:
    for i in range(25):
        log.append(alert(i // 2))  # pairs share a time: write order breaks the tie, newest first
    assert log.flush()
    full = everything(log)
    assert [a.ts_ns for a in full] == sorted((a.ts_ns for a in full), reverse=True) and len(full) == 25
    pages, cursor = [], None
    while True:
        page, cursor = log.page(10, Query(), cursor)
        pages.append(page)
        if len(pages) == 1:  # newer events written between pages do not shift the next page
            log.append(alert(100))
            assert log.flush()
        if cursor is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [a.value for p in pages for a in p] == [a.value for a in full]
    assert everything(log)[0].ts_ns == T0 + 100 * S
    assert Cursor.parse(Cursor(T0, 7).token()) == Cursor(T0, 7)
    for bad in ("", "%%", "bm90LWEtY3Vyc29y", Cursor(T0, 7).token() + "x"):
        with pytest.raises(ValueError, match="cursor is not one this API gave out"):
            Cursor.parse(bad)


def test_filters(log: AlertLog) -> None:
    log.append(alert(0, "a", "firing", "stuck", "stuck"))
    log.append(alert(1, "a", "resolved", "stuck", "stuck"))
    log.append(alert(2, "b", "firing", "anomaly", "level_shift"))
    log.append(alert(3, "b", "firing", "predicted_breach", "predicted_breach"))
    assert log.flush()

    def ids(**kw: object) -> list[int]:
        return [(a.ts_ns - T0) // S for a in everything(log, Query(**kw))]  # type: ignore[arg-type]

    assert ids() == [3, 2, 1, 0]
    assert ids(stream="a/temperature") == [1, 0]
    assert ids(state="firing") == [3, 2, 0]
    assert ids(check="stuck", state="resolved") == [1]
    assert ids(kind="level_shift") == [2]
    assert ids(since_ns=T0 + S, until_ns=T0 + 3 * S) == [2, 1]  # since inclusive, until exclusive
    assert ids(stream="nobody/x") == []


def test_retention_by_rows_keeps_the_newest(tmp_path: Path) -> None:
    history = AlertLog(tmp_path / "a.sqlite", max_rows=10, max_age_s=0)
    try:
        for i in range(25):
            history.append(alert(i))
        assert history.flush()
        history.prune()  # the writer also prunes on its own, about once a minute
        assert history.count() == 10
        assert [(a.ts_ns - T0) // S for a in everything(history)] == list(range(24, 14, -1))
    finally:
        history.close()


def test_retention_by_age_counts_from_when_written_not_the_alert_time(tmp_path: Path) -> None:
    import time

    history = AlertLog(tmp_path / "a.sqlite", max_rows=0, max_age_s=3600)
    try:
        history.append(alert(0, ts_ns=T0 - 400 * 86_400 * S))  # replayed history: an old event time
        assert history.flush()
        assert history.prune() == 0 and history.count() == 1
        assert history.prune(now_ns=time.time_ns() + 7200 * S) == 1 and history.count() == 0
    finally:
        history.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    path.write_bytes(b"this is not sqlite, just some text that someone put here\n" * 100)
    with pytest.raises(HistoryError, match=r"cannot open the alert history .*alerts\.sqlite.*moved aside"):
        AlertLog(path)


def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(HistoryError, match="schema 7, newer"):
        AlertLog(path)


def test_a_locked_file_delays_the_history_but_never_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    history = AlertLog(path, queue_max=5)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        for i in range(8):
            history.append(alert(i))  # returns at once: the writer thread waits, not the engine
        assert not history.flush(timeout=1.0) and history.pending() >= 5
        assert history.alive()
        other.execute("COMMIT")
        assert history.flush(timeout=10.0)
        got = [(a.ts_ns - T0) // S for a in everything(history)]
        # At most queue_max waited: the oldest beyond it were dropped and counted.
        assert history.dropped == 8 - len(got) and got == list(range(7, 7 - len(got), -1)) and len(got) >= 5
    finally:
        other.close()
        history.close()


def test_alerts_the_file_cannot_take_are_dropped_and_counted_not_retried_forever(log: AlertLog) -> None:
    log.append(alert(0))
    log.append(alert(1, ts_ns=2**64))  # beyond SQLite's 64-bit integers
    log.append(alert(2, stream="bad\ud800name"))  # not encodable as UTF-8
    log.append(alert(3))
    assert log.flush()
    assert [(a.ts_ns - T0) // S for a in everything(log)] == [3, 0]
    assert log.dropped == 2 and log.alive()


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    history = AlertLog(tmp_path / "a.sqlite")
    for i in range(100):
        history.append(alert(i))
    history.close()  # no flush first
    again = AlertLog(tmp_path / "a.sqlite")
    try:
        assert again.count() == 100
    finally:
        again.close()
