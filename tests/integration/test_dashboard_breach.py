"""The dashboard shows a predicted breach: its ETA in the table and on the stream's chart.

A real headless chromium against the real API app and pipeline, fed by the engine twin
(tests/apitwin.py) whose stream status carries a predicted breach.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.apitwin import TwinStatus
from tests.integration.chromium import twin_dashboard
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@dataclass
class BreachStatus(TwinStatus):
    breach_eta_s: float | None = None
    breach_probability: float | None = None
    breach_limit: float | None = None
    breach_side: str | None = None
    breach_feature: str | None = None
    checks_firing: tuple[str, ...] = ()


def test_the_dashboard_shows_the_eta_of_a_predicted_breach(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from service.metrics import Metrics
    from service.records import Reading, StreamKey
    from service.store.memory import MemoryStore
    from tests.apiharness import T0, populated_twin, settings_for

    settings = settings_for(tmp_path)
    store, metrics, engine = MemoryStore(), Metrics(), populated_twin()
    engine.statuses["pump-1/temperature"] = BreachStatus(
        "pump-1/temperature", "pump-1", "temperature", "twin", "1", "ok", 5, 5, T0, 21.0, 0.5, 20.8, 19.0, 22.6,
        breach_eta_s=150.0, breach_probability=0.93, breach_limit=23.0, breach_side="upper",
        breach_feature="temperature", checks_firing=("predicted_breach",),
    )
    key = StreamKey("pump-1", "temperature")
    store.write([Reading(key, T0 - (50 - i) * 60 * 10**9, 20.0 + (i % 7) * 0.3) for i in range(50)])
    with twin_dashboard(tmp_path / "profile", settings, store, metrics, engine) as browser:
        rows = '#streams tbody tr[data-stream="pump-1/temperature"] td.breach'
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, rows), 15, what="the breach cell")
        assert browser.find_element(By.CSS_SELECTOR, rows).text == "above 23.00 in 3 min (93%)"
        # This pipeline keeps no alert history (GET /v1/alerts: 503): the streams still
        # update, and the alert list says why it is empty.
        empty = browser.find_element(By.CSS_SELECTOR, "#alerts tbody td").text
        assert empty.startswith("no alert history"), empty
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
        # The other stream has none.
        other = browser.find_elements(By.CSS_SELECTOR, '#streams tbody tr[data-stream^="pump-2"] td')
        assert other[5].text == "–"
        # The chart: a note in its header and the limit drawn as a line (series 9).
        head = '.chart[data-stream="pump-1/temperature"] h3 .breach'
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, head), 15, what="the chart's breach note")
        assert browser.find_element(By.CSS_SELECTOR, head).text.startswith("breach above 23.00 in 3 min")
        limit: Any = "const u = window.sensorcast.charts[arguments[0]]; return u ? u.data[9].filter(v => v === 23).length : 0"
        wait_until(lambda: browser.execute_script(limit, "pump-1/temperature") > 50, 15, what="the limit line")
        # No script errors; the browser logs the expected 503 of /v1/alerts as a network one.
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                  and not (e["source"] == "network" and "/v1/alerts?" in e["message"] and " 503 " in e["message"])]
        assert not errors, errors
