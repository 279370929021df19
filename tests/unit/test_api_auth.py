"""API key scopes: read routes need read or write key, mutating routes the write key (or,
with no write key, the read key); no key at all is refused beyond loopback unless allowed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.app import create_app
from service.api.auth import ApiKeys, AuthError
from service.config import ApiSettings
from service.errors import ConfigError
from tests.apiharness import Harness, harness, settings_for

WRITE = "w-Secret-0123456789"
READ = "r-Secret-9876543210"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    (tmp_path / "write.key").write_text(WRITE + "\n")
    (tmp_path / "read.key").write_text(READ)
    with harness(tmp_path, api_key_file=tmp_path / "write.key", read_key_file=tmp_path / "read.key") as hh:
        yield hh


READS = [("GET", "/v1/streams"), ("GET", "/v1/streams/pump-1/temperature"), ("GET", "/v1/alerts"),
         ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/v1/streams/pump-1/temperature/forecast"),
         ("GET", "/v1/streams/pump-1/temperature/settings")]
WRITES = [("POST", "/v1/models/reload"), ("POST", "/v1/readings"), ("PUT", "/v1/streams/pump-1/temperature/settings"),
          ("DELETE", "/v1/streams/pump-1/temperature/settings")]
WRITE_ROUTES = ("PUT /v1/streams/{stream_id}/settings, DELETE /v1/streams/{stream_id}/settings, "
                "PUT /v1/streams/{stream_id}/silence, DELETE /v1/streams/{stream_id}/silence, "
                "DELETE /v1/streams/{stream_id}, POST /v1/readings, POST /v1/alerts/{alert_id}/ack, "
                "POST /v1/models/reload")
READING = {"messages": [{"topic": "sensors/a/b", "payload": 1.0}]}
BODIES = {"POST": READING, "PUT": {"threshold": 0.99}}


@pytest.mark.parametrize(("method", "path"), READS + WRITES)
def test_no_key_is_401(h: Harness, method: str, path: str) -> None:
    r = h.client.request(method, path, json=BODIES.get(method))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "ApiKey"


@pytest.mark.parametrize(("method", "path"), READS)
def test_read_and_write_keys_open_reads(h: Harness, method: str, path: str) -> None:
    for key in (READ, WRITE):
        assert h.client.request(method, path, headers={"X-API-Key": key}).status_code == 200


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_read_key_on_write_route_is_403(h: Harness, method: str, path: str) -> None:
    r = h.client.request(method, path, json=BODIES.get(method), headers={"X-API-Key": READ})
    assert r.status_code == 403 and "write scope" in r.json()["detail"]
    ok = h.client.request(method, path, json=BODIES.get(method), headers={"X-API-Key": WRITE})
    assert ok.status_code in (200, 202)


def test_wrong_key_is_401_and_never_echoed(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    r = h.client.get("/v1/streams", headers={"X-API-Key": "guess-" + WRITE})
    assert r.status_code == 401
    assert WRITE not in r.text and READ not in r.text
    assert WRITE not in caplog.text and READ not in caplog.text
    assert WRITE not in h.client.get("/metrics", headers={"X-API-Key": WRITE}).text


def test_health_is_open(h: Harness) -> None:
    assert h.client.get("/healthz").status_code == 200
    assert h.client.get("/readyz").status_code == 200


def test_write_only_key_leaves_reads_open(tmp_path: Path) -> None:
    (tmp_path / "w").write_text(WRITE)
    keys = ApiKeys.from_settings(ApiSettings(api_key_file=tmp_path / "w"))  # type: ignore[call-arg]
    keys.check(None, "read")  # open
    with pytest.raises(AuthError) as e:
        keys.check(None, "write")
    assert e.value.status == 401


def test_no_files_no_auth() -> None:
    keys = ApiKeys.from_settings(ApiSettings())  # type: ignore[call-arg]
    keys.check(None, "write")
    assert not keys.enabled


def test_empty_or_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        ApiKeys.from_settings(ApiSettings(api_key_file=tmp_path / "empty"))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="cannot read"):
        ApiKeys.from_settings(ApiSettings(read_key_file=tmp_path / "missing"))  # type: ignore[call-arg]


def test_read_key_alone_guards_writes_too(tmp_path: Path) -> None:
    (tmp_path / "read.key").write_text(READ)
    with harness(tmp_path, read_key_file=tmp_path / "read.key") as hh:
        for method, path in WRITES:
            assert hh.client.request(method, path, json=BODIES.get(method)).status_code == 401
            assert hh.client.request(method, path, json=BODIES.get(method), headers={"X-API-Key": "x" + READ}).status_code == 401
            ok = hh.client.request(method, path, json=BODIES.get(method), headers={"X-API-Key": READ})
            assert ok.status_code in (200, 202), ok.text
        assert hh.client.get("/v1/streams", headers={"X-API-Key": READ}).status_code == 200
        assert hh.client.get("/v1/streams").status_code == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "gateway.local", ""])
def test_open_write_routes_beyond_loopback_refuse_to_start(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match=r"not loopback.*SENSORCAST_API__ALLOW_OPEN=true"):
        create_app(settings_for(tmp_path, host=host))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"])
def test_loopback_needs_no_key(tmp_path: Path, host: str) -> None:
    create_app(settings_for(tmp_path, host=host))


def test_a_key_or_allow_open_lets_a_public_bind_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.api.app")
    (tmp_path / "w").write_text(WRITE)
    (tmp_path / "r").write_text(READ)
    create_app(settings_for(tmp_path, host="0.0.0.0", api_key_file=tmp_path / "w"))
    assert f"API on 0.0.0.0: write routes need the write key: {WRITE_ROUTES}" in caplog.text
    assert "API on 0.0.0.0: read routes are OPEN (no key configured): GET /v1/streams" in caplog.text
    caplog.clear()
    create_app(settings_for(tmp_path, host="0.0.0.0", read_key_file=tmp_path / "r"))
    assert f"write routes need the read key (no write key is set): {WRITE_ROUTES}" in caplog.text
    caplog.clear()
    create_app(settings_for(tmp_path, host="0.0.0.0", allow_open=True))
    opened = [r for r in caplog.records if r.levelname == "WARNING" and "write routes are OPEN" in r.getMessage()]
    assert opened and WRITE_ROUTES in opened[0].getMessage()
