"""The dashboard shows each stream's unit: beside its values in the table and in its chart's title.

A real headless chromium against the real API app and pipeline, fed by the engine twin
(tests/apitwin.py); the unit comes from the pipeline's unit book, as a payload would set it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.chromium import twin_dashboard
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_the_dashboard_shows_units(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from service.metrics import Metrics
    from service.records import Reading, StreamKey
    from service.store.memory import MemoryStore
    from tests.apiharness import T0, populated_twin, settings_for

    settings = settings_for(tmp_path)
    store, metrics, engine = MemoryStore(), Metrics(), populated_twin()
    key = StreamKey("pump-1", "temperature")
    store.write([Reading(key, T0 - (50 - i) * 60 * 10**9, 20.0 + (i % 7) * 0.3) for i in range(50)])
    with twin_dashboard(tmp_path / "profile", settings, store, metrics, engine, lambda pipe: pipe.units.seen(key, "°C")) as browser:
        cells = '#streams tbody tr[data-stream="pump-1/temperature"] td'
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, cells), 15, what="the stream's row")
        row = [td.text for td in browser.find_elements(By.CSS_SELECTOR, cells)]
        assert row[2].endswith(" °C") and row[3].endswith(" °C"), row  # last value, expected
        other = [td.text for td in browser.find_elements(By.CSS_SELECTOR, '#streams tbody tr[data-stream^="pump-2"] td')]
        assert "°C" not in " ".join(other), other  # no unit known: plain numbers
        title = '.chart[data-stream="pump-1/temperature"] h3 span:first-child'
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, title), 15, what="the chart")
        wait_until(lambda: browser.find_element(By.CSS_SELECTOR, title).text == "pump-1/temperature (°C)", 15,
                   what="the unit in the chart's title")
