"""The dashboard in a real headless chromium, against a running `sensorcast demo`.

The page loads with its vendored assets only, the charts draw points, and the anomaly
the demo injects shows up in the alert list and as a marker on its chart. A screenshot
goes to reports/browser/dashboard.png (or $SENSORCAST_SCREENSHOT_DIR).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.chromium import SHOTS, chromium
from tests.integration.demo_helpers import Demo, demo_models, tracked_demos

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def _until(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.5)


def _click(browser: Any, css: str) -> None:
    """Click ``css``; the tables are redrawn every poll, so a row found may be replaced first."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(5):
        try:
            browser.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{css} kept being redrawn")


def test_dashboard_shows_live_charts_and_the_injected_alert(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    models = demo_models(tmp_path_factory)
    for DemoT in tracked_demos():
        _run(browser, DemoT("--models", str(models), "--print-every", "5"))


def _run(browser: Any, demo: Demo) -> None:
    from selenium.webdriver.common.by import By

    url = demo.wait_for(r"dashboard: (http://127\.0\.0\.1:\d+/)", timeout=60).group(1)
    browser.get(url)
    assert browser.title == "sensorcast"
    _until(lambda: browser.execute_script("return (window.sensorcast || {}).polls || 0") >= 2, 30, "two polls")
    # Table rows for every simulated stream, with a status badge.
    rows = browser.find_elements(By.CSS_SELECTOR, "#streams tbody tr")
    assert len(rows) == 9
    assert {r.get_attribute("data-stream") for r in rows} >= {"dev01/temperature", "dev03/power"}
    # The charts draw points: actual values from the store, and a forecast ahead.
    count = "const u = window.sensorcast.charts[arguments[0]]; return u ? u.data[arguments[1]].filter(v => v !== null).length : 0"
    _until(lambda: browser.execute_script(count, "dev01/temperature", 1) > 20, 30, "actual points")
    _until(lambda: browser.execute_script(count, "dev01/temperature", 5) >= 5, 30, "forecast points")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#charts .chart canvas")) == 9
    # The injected anomaly: an alert after it in the list, and a marker on its chart.
    m = demo.wait_for(r"^INJECT  spike on (\S+) at (\d\d):(\d\d):(\d\d)Z", timeout=60)
    stream = m.group(1)
    today = datetime.now(UTC).replace(hour=int(m.group(2)), minute=int(m.group(3)), second=int(m.group(4)))
    t_inject = today.timestamp() - 1  # the line shows whole seconds
    fired = (
        "return window.sensorcast.alerts.some(a => a.stream_id === arguments[0] && a.state === 'firing'"
        " && a.ts_ns / 1e9 >= arguments[1])"
    )
    _until(lambda: browser.execute_script(fired, stream, t_inject), 40, f"a firing alert for {stream} after the spike")
    # Its row in the alert list names the check, the kind and the onset.
    row = f'#alerts tbody tr[data-stream="{stream}"][data-check="anomaly"]'
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, f"{row} td.firing"), 10, f"{stream}'s row in the alert list")
    cells = browser.find_element(By.CSS_SELECTOR, row).find_elements(By.TAG_NAME, "td")
    assert cells[2].text == "anomaly" and cells[3].text in {"spike", "level_shift", "drift", "variance"}, cells[3].text
    assert cells[5].text not in {"", "–"}  # an anomaly alert carries its onset
    marker = (
        "const u = window.sensorcast.charts[arguments[0]];"
        " return u.data[8].some((v, i) => v !== null && u.data[0][i] >= arguments[1])"
    )
    _until(lambda: browser.execute_script(marker, stream, t_inject), 10, f"an alert marker on {stream}'s chart")
    time.sleep(4)  # two more polls: the chart shows the points after the spike too
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "dashboard.png"))
    assert (SHOTS / "dashboard.png").stat().st_size > 20_000
    # No script errors (the page loads nothing from the network but this service).
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_dashboard_asks_for_the_read_key_and_then_shows_data(browser: Any, tmp_path: Path) -> None:
    """The compose stack sets a read key: the page must ask for it, then work. The alert
    list shows each event's check, kind and onset from the alert history, with dates (the
    year, since these are from 2023). Ack and silence need the write key: with the read key
    the page says so; with the write key the ack and the silence show."""
    from selenium.webdriver.common.by import By

    from service.api.app import create_app
    from service.metrics import Metrics
    from service.pipeline import Pipeline
    from service.records import Alert, Reading, StreamKey
    from service.store.alertlog import AlertLog
    from service.store.memory import MemoryStore
    from service.store.streamsettings import StreamSettings
    from service.wiring import build_ingester
    from tests.apiharness import MIN, T0, populated_twin, settings_for
    from tools.demo import ApiServer, _listen

    (tmp_path / "read.key").write_text("r-secret\n")
    (tmp_path / "write.key").write_text("w-secret\n")
    settings = settings_for(tmp_path, read_key_file=tmp_path / "read.key", api_key_file=tmp_path / "write.key")
    store, metrics, engine = MemoryStore(), Metrics(), populated_twin()
    key = StreamKey("pump-1", "temperature")
    store.write([Reading(key, T0 - (50 - i) * 60 * 10**9, 20.0 + (i % 7) * 0.3) for i in range(50)])
    history = AlertLog(tmp_path / "alerts.sqlite")
    nan = float("nan")
    events = [  # oldest first; the list shows the newest first
        Alert(key, "temperature", "firing", T0 - 3 * MIN, 90.0, 20.0, 18.0, 22.0, 0.9999, "twin", "1", True,
              kind="spike", onset_ns=T0 - 4 * MIN, onset_value=88.0, onset_expected=20.0),
        Alert(StreamKey("pump-2", "temperature", (("site", "north"),)), "temperature", "firing", T0 - 2 * MIN, 7.0,
              nan, nan, nan, nan, "twin", "1", True, check="stuck", kind="stuck", onset_ns=T0 - 30 * MIN),
        Alert(key, "temperature", "resolved", T0 - MIN, 21.0, 20.9, 19.0, 22.8, 0.2, "twin", "1", True,
              kind="spike", extra={"reason": "held", "held_by": "stuck"}),
    ]
    for a in events:
        history.append(a)
    assert history.flush()
    ingester = build_ingester(settings, store, metrics, sinks=[engine.accept], mqtt=False)
    silences = StreamSettings(tmp_path / "stream_settings.sqlite")
    pipeline = Pipeline(settings, metrics, store=store, engine=engine, ingester=ingester, decoder=ingester.decoder,
                        alert_log=history, stream_settings=silences, closers=[history.close, silences.close])
    pipeline.start()
    server = ApiServer(create_app(settings, pipeline=pipeline), _listen("127.0.0.1", 0))
    server.start()
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        form = browser.find_element(By.ID, "keyform")
        _until(lambda: form.is_displayed(), 10, "the API key form")
        # The form opens on the 401 status; the message follows once the body is read.
        error = browser.find_element(By.ID, "error")
        _until(lambda: "401" in error.text, 10, "the 401 message")
        assert not browser.find_elements(By.CSS_SELECTOR, "#streams tbody tr")
        browser.find_element(By.ID, "apikey").send_keys("r-secret")
        form.submit()
        _until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#streams tbody tr")) == 2, 10, "stream rows")
        count = "const u = window.sensorcast.charts[arguments[0]]; return u ? u.data[1].filter(v => v !== null).length : 0"
        _until(lambda: browser.execute_script(count, "pump-1/temperature") >= 50, 10, "stored history drawn")
        assert not form.is_displayed()
        assert browser.execute_script("return localStorage.getItem('sensorcast.apiKey')") == "r-secret"
        badges = {b.text for b in browser.find_elements(By.CSS_SELECTOR, "#streams .badge")}
        assert badges == {"ok", "warming 2/5"}
        # The alert list: state, stream, check, kind, time, onset, value, expected, score, ack.
        rows = browser.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")
        got = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
        # Date and time in the browser's locale; T0 is in 2023, so with the year.
        dated = ("return new Date(Number(arguments[0]) / 1e6).toLocaleString(undefined, {year: 'numeric', "
                 "month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit'})")
        at = {i: browser.execute_script(dated, str(T0 - i * MIN)) for i in (1, 2, 3, 4, 30)}
        assert all("2023" in t and ("14" in t or "15" in t) for t in at.values()), at  # 2023-11-14 22:13 UTC
        assert got == [
            ["resolved", "pump-1/temperature", "anomaly", "spike", at[1], "–", "21.00", "20.90", "0.2", "–"],
            ["firing", "pump-2/temperature;site=north", "stuck", "stuck", at[2], at[30], "7.00", "–", "–", "Ack"],
            ["firing", "pump-1/temperature", "anomaly", "spike", at[3], at[4], "90.00", "20.00", "1.0", "Ack"],
        ], got
        assert rows[0].get_attribute("title") == "reason: held (stuck)"
        assert rows[2].find_elements(By.CSS_SELECTOR, "td.firing")
        # Ack with the read key: refused, and the page says the write key is needed.
        ack = '#alerts tbody tr[data-id="1"] button.ack'
        _click(browser, ack)
        action = browser.find_element(By.ID, "action")
        _until(lambda: "write key" in action.text and "403" in action.text, 10, "the write-key message")
        assert history.rows(10)[0][-1].acked_ns is None
        _until(lambda: form.is_displayed(), 10, "the API key form, for the write key")
        browser.find_element(By.ID, "apikey").clear()
        browser.find_element(By.ID, "apikey").send_keys("w-secret")
        form.submit()
        _click(browser, ack)
        acked = '#alerts tbody tr[data-id="1"] td.ack .acked'
        texts = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
        _until(lambda: browser.execute_script(texts, acked) == ["acked by dashboard"], 10, "the ack in the list")
        row = history.rows(10)[0][-1]
        assert row.id == 1 and row.acked_by == "dashboard"
        # Silence pump-1 for an hour from its row; the marker shows, and the API has it.
        silence = '#streams tbody tr[data-stream="pump-1/temperature"] button.silence'
        _click(browser, silence)
        marker = '#streams tbody tr[data-stream="pump-1/temperature"] .silenced'
        _until(lambda: [t[:15] for t in browser.execute_script(texts, marker)] == ["silenced until "], 10,
               "the silenced marker")
        assert silences.silenced_until("pump-1/temperature") is not None
        _click(browser, silence)  # now "unsilence"
        _until(lambda: not browser.find_elements(By.CSS_SELECTOR, marker), 10, "the marker gone")
        assert silences.silenced_until("pump-1/temperature") is None
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "40" not in e["message"]]
        assert not errors, errors
    finally:
        server.stop()
        pipeline.stop()
