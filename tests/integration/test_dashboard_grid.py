"""The dashboard draws a sensor-grid stream (its model's manifest declares grid [H, W]) as a
heat map of the latest frame, with a pixel that stopped reading (a dead one) greyed out.

A real headless chromium against the real API app and pipeline, fed by the engine twin
(tests/apitwin.py); the pixels' readings are in the store, as ingest writes them.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.integration.chromium import twin_dashboard
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_the_dashboard_draws_a_grid_stream_as_a_heat_map(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from service.metrics import Metrics
    from service.records import Reading, StreamKey
    from service.store.memory import MemoryStore
    from tests.apiharness import T0, populated_twin, settings_for
    from tests.apitwin import TwinStatus, twin_manifest

    pixels = ["r0c0", "r0c1", "r0c2", "r1c0", "r1c1", "r1c2"]  # 2 rows x 3 columns, row-major
    settings = settings_for(tmp_path)
    store, metrics, engine = MemoryStore(), Metrics(), populated_twin()
    grid_manifest = twin_manifest("irgrid").model_copy(
        update={"features": pixels, "output_features": pixels, "grid": [2, 3]})
    engine.manifests.append(grid_manifest)
    # The twin's registry knows no manifests; a device stream's units are looked up in its model's.
    engine.registry.get = lambda name, version: SimpleNamespace(manifest=grid_manifest)  # type: ignore[attr-defined]
    engine.statuses["ir01"] = TwinStatus("ir01", "ir01", "*", "irgrid", "1", "ok", 5, 5, T0, 30.0, 0.2, 30.1, 29.0, 31.0)
    minute = 60 * 10**9
    for k, name in enumerate(pixels):
        last = T0 - 20 * minute if name == "r1c2" else T0  # r1c2 died 20 cadences ago
        store.write([Reading(StreamKey("ir01", name), last - i * minute, 20.0 + 2 * k + 0.1 * i) for i in range(3)])
    with twin_dashboard(tmp_path / "profile", settings, store, metrics, engine) as browser:
        card = '.heatmap[data-stream="ir01"]'
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, card), 15, what="the grid's heat map")
        hm = browser.execute_script("return window.sensorcast.heatmaps['ir01']")
        assert hm["grid"] == [2, 3] and hm["features"] == pixels
        assert hm["values"] == [20.0, 22.0, 24.0, 26.0, 28.0, 30.0]
        assert hm["stale"] == [False] * 5 + [True] and (hm["min"], hm["max"]) == (20.0, 28.0)
        size = browser.execute_script(f"const c = document.querySelector('{card} canvas'); return [c.width, c.height]")
        assert size[0] > size[1] > 0  # 3 columns wide, 2 rows high
        text = browser.find_element(By.CSS_SELECTOR, f"{card} p").text
        assert "1 pixel without recent readings" in text, text
        # The hot corner is red, the cold one blue; the dead pixel grey.
        rgb = browser.execute_script(
            f"const x = document.querySelector('{card} canvas').getContext('2d');"
            "return [[14, 14], [14 + 28, 28 + 14], [14 + 56, 28 + 14]].map(([a, b]) => "
            "Array.from(x.getImageData(a, b, 1, 1).data.slice(0, 3)))"
        )
        cold, hot, dead = rgb
        assert cold[2] > cold[0] and hot[0] > hot[2] and dead[0] == dead[1] == dead[2], rgb
        assert not browser.find_element(By.CSS_SELECTOR, "#error").is_displayed()
        # Streams of models without a grid get no heat map.
        assert not browser.find_elements(By.CSS_SELECTOR, '.heatmap[data-stream^="pump"]')
