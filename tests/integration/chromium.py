"""Headless Debian chromium driven by selenium, for the browser tests (no downloads)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.serving import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("SENSORCAST_SCREENSHOT_DIR", REPO / "reports" / "browser"))
# Without the background-networking flags chromium keeps trying hosts this closed
# network refuses; a fresh profile per test keeps runs independent.
BASE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1100",
)


@contextmanager
def chromium(profile_dir: Path, extra_flags: Sequence[str] = ()) -> Iterator[Any]:
    """A webdriver with the browser's console log captured; skips when chromium is absent."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium / chromedriver not installed (make setup installs them)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*BASE_FLAGS, f"--user-data-dir={profile_dir}", *extra_flags):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def twin_dashboard(
    profile_dir: Path, settings: Any, store: Any, metrics: Any, engine: Any,
    prepare: Callable[[Any], object] | None = None,
) -> Iterator[Any]:
    """A browser on the dashboard of the real API app and pipeline around an engine twin
    (tests/apitwin.py), served on a free port; ``prepare(pipeline)`` runs before the start.
    Browser, server and pipeline are stopped afterwards."""
    from service.api.app import create_app
    from service.pipeline import Pipeline
    from service.wiring import build_ingester
    from tools.demo import ApiServer, _listen

    ingester = build_ingester(settings, store, metrics, sinks=[engine.accept], mqtt=False)
    pipeline = Pipeline(settings, metrics, store=store, engine=engine, ingester=ingester, decoder=ingester.decoder)
    if prepare is not None:
        prepare(pipeline)
    pipeline.start()
    server = ApiServer(create_app(settings, pipeline=pipeline), _listen("127.0.0.1", 0))
    server.start()
    try:
        with chromium(profile_dir) as browser:
            browser.get(f"http://127.0.0.1:{server.port}/")
            yield browser
    finally:
        server.stop()
        pipeline.stop()
