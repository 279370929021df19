"""The alert history's acks and silenced flag (service/store/alertlog.py) and the stream
settings' silences (service/store/streamsettings.py), on real SQLite files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from service.records import Alert, StreamKey
from service.store.alertlog import AlertLog, Query, encode
from service.store.streamsettings import StreamSettings

T0 = 1_700_000_000_000_000_000
NS = 1_000_000_000
STREAM = "pump-1/temperature"


def _alert(ts_ns: int = T0) -> Alert:
    return Alert(StreamKey("pump-1", "temperature"), "temperature", "firing", ts_ns, 90.0, 20.0, 18.0, 22.0,
                 9.5, "twin", "1", True)


def test_acks_survive_a_reopen_and_a_schema_1_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # the schema-1 layout, as an earlier version wrote it
    db.execute("CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, stream TEXT NOT NULL, "
               "state TEXT NOT NULL, chk TEXT NOT NULL, kind TEXT NOT NULL, logged_ns INTEGER NOT NULL, body BLOB NOT NULL)")
    db.execute("INSERT INTO alerts (ts_ns, stream, state, chk, kind, logged_ns, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (T0, STREAM, "firing", "anomaly", "spike", time.time_ns(), encode(_alert())))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    log = AlertLog(path)
    try:
        (row,), _ = log.rows(10)
        assert row.id == 1 and row.alert.stream_id == STREAM and not row.silenced and row.acked_ns is None
        log.append(_alert(T0 + NS), silenced=True)
        assert log.flush()
        acked = log.ack(1, "me", None, now_ns=T0 + 5 * NS)
        assert acked is not None and acked.acked_ns == T0 + 5 * NS
        assert log.ack(42, "me", None) is None
    finally:
        log.close()
    log = AlertLog(path)
    try:
        rows, _ = log.rows(10)
        assert [(r.id, r.silenced, r.acked_by) for r in rows] == [(2, True, None), (1, False, "me")]
        assert [r.id for r in log.rows(10, Query(acked=False))[0]] == [2]
    finally:
        log.close()

def test_silences_persist_and_expire_by_themselves(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = StreamSettings(path)
    now = time.time_ns()
    store.silence(STREAM, now + 3600 * NS, "maintenance")
    store.silence("short/x", now + 2 * NS)
    assert store.silenced_until(STREAM) == now + 3600 * NS
    assert store.silenced_until("short/x", now_ns=now + 3 * NS) is None  # run out: no action needed
    assert store.silence_of("short/x", now_ns=now + 3 * NS) is None
    store.close()
    again = StreamSettings(path)
    try:
        s = again.silence_of(STREAM)
        assert s is not None and s.reason == "maintenance" and s.until_ns == now + 3600 * NS
        assert set(again.silences()) == {STREAM, "short/x"}
        assert again.unsilence(STREAM) is not None and again.silenced_until(STREAM) is None
    finally:
        again.close()
