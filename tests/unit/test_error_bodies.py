"""Error bodies say what failed in a few words; the store's own text (URLs, paths, the
database's message) goes to the log only."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import SpoolFullError, StoreError
from service.ingest.ingester import Ingester
from service.records import Reading, StreamKey
from tests.apiharness import T0, harness

SECRET_TEXT = "POST http://admin@influx.internal:8086/write: 500; spool /var/lib/sensorcast/spool/000123.batch"


@pytest.mark.parametrize(("exc", "reason"), [(StoreError(SECRET_TEXT), "the store is not available"),
                                             (SpoolFullError(SECRET_TEXT), "spool full")])
def test_store_errors_reach_the_log_not_the_body(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exc: Exception, reason: str
) -> None:
    with harness(tmp_path) as h:
        def fail() -> None:
            raise exc

        h.client.app.add_api_route("/fail", fail)  # type: ignore[attr-defined]
        r = h.client.get("/fail")
    assert r.status_code == 503
    assert r.json() == {"detail": f"{reason}; retry later (details in the service log)"}
    assert SECRET_TEXT in caplog.text  # the operator still gets the details


def test_readings_not_durable_say_so_without_the_store_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What POST /v1/readings answers with 503 (its detail is this message)."""
    with harness(tmp_path) as h:
        ingester = h.pipeline.ingester
        assert isinstance(ingester, Ingester)
        h.store.fail = StoreError(SECRET_TEXT)
        ingester.spool.max_bytes = 0  # nowhere to go: not durable
        with pytest.raises(StoreError) as err:
            ingester.submit([Reading(StreamKey("a", "b"), T0, 1.0)], timeout_s=0.5)
    assert str(err.value) in ("readings not yet durable: spool full", "readings not yet durable: store not answering")
    assert "influx.internal" in caplog.text  # logged for the operator
