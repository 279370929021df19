"""Persisted per-stream rules (service/store/streamsettings.py): round trip across a reopen,
stream ids checked, damaged or locked files a clear error, stored rules that no longer
validate are reported and skipped; and how the pipeline opens both alert stores."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from service.config import Settings, StreamRules
from service.errors import ConfigError
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.store.streamsettings import SettingsStoreError, StreamSettings, check_stream_id


def test_rules_survive_a_reopen_and_delete_goes_back_to_none(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = StreamSettings(path)
    rules = StreamRules(threshold=0.99, max=125.0, features={"temperature": StreamRules(upper=90.0)})
    assert store.put("pump-1/temperature", rules) is None
    assert store.put("pump-2;site=hq", StreamRules(stuck_steps=5)) is None  # a multivariate (device) stream
    assert store.put("pump-1/temperature", StreamRules(min=-40.0)) == rules  # replaces, returns the previous
    store.close()
    again = StreamSettings(path)
    try:
        assert again.all() == {"pump-1/temperature": StreamRules(min=-40.0), "pump-2;site=hq": StreamRules(stuck_steps=5)}
        assert again.get("pump-1/temperature") == StreamRules(min=-40.0) and again.get("other/x") is None
        assert again.put("pump-2;site=hq", None) == StreamRules(stuck_steps=5)
        assert again.get("pump-2;site=hq") is None and len(again) == 1
    finally:
        again.close()
    assert StreamSettings(path).all() == {"pump-1/temperature": StreamRules(min=-40.0)}


@pytest.mark.parametrize("bad", ["", "a/b/c", "a/b;z=1;a=2", "a/b;k", "dev%2x/t", "a%2Fb/c%41"])
def test_only_stream_ids_the_engine_writes_are_taken(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="stream id"):
        check_stream_id(bad)
    store = StreamSettings(tmp_path / "s.sqlite")
    with pytest.raises(ValueError):
        store.put(bad, StreamRules(max=1.0))
    assert store.all() == {}


def test_good_ids_pass() -> None:
    for ok in ("pump-1/temperature", "a%2Fb/c", "pump-1/t;site=hq", "pump-1", "pump-1;line=2;site=hq"):
        assert check_stream_id(ok) == ok


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(SettingsStoreError, match=r"cannot open the stream settings .*s\.sqlite.*moved aside"):
        StreamSettings(path)


def test_stored_rules_that_no_longer_validate_are_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite"
    StreamSettings(path).put("a/b", StreamRules(max=1.0))
    db = sqlite3.connect(path)
    db.execute("INSERT INTO stream_settings VALUES ('c/d', '{\"threshold\": 7, \"retired_field\": 1}', 0)")
    db.commit()
    db.close()
    with caplog.at_level(logging.ERROR):
        store = StreamSettings(path)
    assert store.all() == {"a/b": StreamRules(max=1.0)}
    assert "the rules of 'c/d' are not valid here and are ignored" in caplog.text and "threshold" in caplog.text


def test_a_locked_file_fails_the_write_clearly_and_keeps_the_old_rules(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = StreamSettings(path)
    store.put("a/b", StreamRules(max=1.0))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(SettingsStoreError, match=r"cannot write the stream settings .*locked"):
            store.put("a/b", StreamRules(max=2.0))
        assert store.get("a/b") == StreamRules(max=1.0)
    finally:
        other.close()
    store.put("a/b", StreamRules(max=3.0))
    assert StreamSettings(path).get("a/b") == StreamRules(max=3.0)


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        roles="inference", alerts={"history_path": tmp_path / "h.sqlite"},  # type: ignore[arg-type]
        streams={"settings_path": tmp_path / "s.sqlite"},  # type: ignore[arg-type]
    )


def test_the_pipeline_refuses_to_start_on_damaged_settings_but_runs_without_a_damaged_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "s.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="stream settings"):
        Pipeline(settings, Metrics())._open_alert_stores()
    (tmp_path / "s.sqlite").unlink()
    (tmp_path / "h.sqlite").write_bytes(b"not a database" * 100)
    pipe = Pipeline(settings, Metrics())
    with caplog.at_level(logging.ERROR):
        pipe._open_alert_stores()
    assert pipe.stream_settings is not None and pipe.alert_log is None
    assert pipe.history_error is not None and "h.sqlite" in pipe.history_error
    assert "running without alert history" in caplog.text
    pipe.stream_settings.close()
