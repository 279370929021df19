"""Dashboard mount and the /v1/points history route, on the API harness (memory store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.records import Reading, StreamKey
from tests.apiharness import T0, harness

SEC = 1_000_000_000


def test_root_redirects_to_the_dashboard_and_assets_are_local(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        r = h.client.get("/", follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"] == "/dashboard/"
        page = h.client.get("/dashboard/")
        assert page.status_code == 200 and "<title>sensorcast</title>" in page.text
        # Everything the page loads comes from this service: no CDN on an offline gateway.
        assert "http://" not in page.text and "https://" not in page.text
        for asset in ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "app.js", "actions.js", "heatmap.js",
                      "style.css"):
            got = h.client.get(f"/dashboard/{asset}")
            assert got.status_code == 200 and len(got.content) > 500, asset


def test_points_returns_stored_history_oldest_first(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        key = StreamKey("pump-1", "temperature")
        other = StreamKey("pump-1", "pressure")
        h.store.write([Reading(key, T0 + i * SEC, 20.0 + i) for i in range(10)] + [Reading(other, T0, 1.0)])
        r = h.client.get("/v1/points/pump-1/temperature", params={"last": 3})
        assert r.status_code == 200
        body = r.json()
        assert body["stream_id"] == "pump-1/temperature"
        assert body["values"] == [27.0, 28.0, 29.0]
        assert body["times_ms"] == [(T0 + i * SEC) // 1_000_000 for i in (7, 8, 9)]
        # since: strictly after the given time (what the page already has).
        r = h.client.get("/v1/points/pump-1/temperature", params={"since": "2023-11-14T22:13:27Z"})
        assert r.json()["values"] == [28.0, 29.0]


def test_points_with_tags_and_bad_requests(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        key = StreamKey("pump-2", "temperature", (("site", "north"),))
        h.store.write([Reading(key, T0, 5.0), Reading(key, T0 + SEC, float("nan"))])
        r = h.client.get("/v1/points/pump-2/temperature;site=north")
        assert r.status_code == 200 and r.json()["values"] == [5.0]  # NaN is not JSON: left out
        assert h.client.get("/v1/points/no-quantity").status_code == 422
        assert h.client.get("/v1/points/a/b", params={"last": 0}).status_code == 422
        assert h.client.get("/v1/points/a/b", params={"since": "2024-01-01T00:00:00"}).status_code == 422
        assert h.client.get("/v1/points/unknown/stream").json()["values"] == []


def test_points_needs_the_read_key_when_one_is_set(tmp_path: Path) -> None:
    keyfile = tmp_path / "read.key"
    keyfile.write_text("s3cret\n")
    with harness(tmp_path, read_key_file=keyfile) as h:
        assert h.client.get("/v1/points/pump-1/temperature").status_code == 401
        ok = h.client.get("/v1/points/pump-1/temperature", headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("a/b", StreamKey("a", "b")),
        ("site%2Fa/b", StreamKey("site/a", "b")),
        ("a/b;k=v;z=1", StreamKey("a", "b", (("k", "v"), ("z", "1")))),
        ("a/b%3Bk%3Dv", StreamKey("a", "b;k=v")),
    ],
)
def test_points_parse_stream_ids(text: str, key: StreamKey) -> None:
    assert StreamKey.parse(text) == key and key.id == text


def test_points_refuse_malformed_ids() -> None:
    for bad in ("ab", "site/a/b", "a/b;novalue", "a/b;z=1;k=v", "a%2f/b", "a%41/b"):
        with pytest.raises(ValueError):
            StreamKey.parse(bad)
