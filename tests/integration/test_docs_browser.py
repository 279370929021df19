"""/docs and /redoc render in a headless chromium that can reach nothing but this machine.

A real ``sensorcast serve`` (the api role, with read and write keys as on a gateway)
serves the pages; chromium resolves no host name and sends anything not on loopback to a
dead proxy, so a page that needed a CDN would stay blank. A screenshot goes to
reports/browser/docs.png (or $SENSORCAST_SCREENSHOT_DIR).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.chromium import SHOTS, chromium
from tests.integration.serving import ServeProcess
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

@pytest.fixture
def offline_browser(tmp_path: Path) -> Iterator[Any]:
    # The offline gateway: no name resolves, and an address given as a literal goes to a
    # proxy where nothing listens (loopback is never proxied).
    offline = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9")
    with chromium(tmp_path / "profile", offline) as driver:
        yield driver


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    (tmp_path / "write.key").write_text("w-secret\n")
    (tmp_path / "read.key").write_text("r-secret\n")
    svc = ServeProcess(
        workdir=tmp_path / "serve",
        mqtt_url="mqtt://127.0.0.1:1",  # unused: the api role alone subscribes to nothing
        store_url="memory://",
        models_dir=tmp_path / "models",
        extra_env={
            "SENSORCAST_ROLES": "api",
            "SENSORCAST_API__API_KEY_FILE": str(tmp_path / "write.key"),
            "SENSORCAST_API__READ_KEY_FILE": str(tmp_path / "read.key"),
        },
    )
    svc.start(wait_ready=False)
    try:
        yield svc
    finally:
        svc.kill()


# ReDoc's sidebar footer ("API docs by Redocly") always tries this logo, with no option to
# turn it off; offline the <img> fails and ReDoc removes it (its onError). Decoration only.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def _foreign_loads(browser: Any, origin: str) -> list[str]:
    """Resources the page fetched (or tried to) from anywhere but this service."""
    names: list[str] = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [n for n in names if not n.startswith(origin + "/") and n != REDOCLY_LOGO]


def _severe(browser: Any) -> list[dict[str, Any]]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and REDOCLY_LOGO not in e["message"]]


def _cdn_reachable(browser: Any) -> bool:
    """Whether this browser can fetch from the CDN FastAPI's default pages use."""
    return bool(browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css', {mode: 'no-cors'})"
        ".then(() => done(true), () => done(false));"
    ))


def test_docs_render_with_networking_to_other_hosts_disabled(offline_browser: Any, serve: ServeProcess) -> None:
    from selenium.webdriver.common.by import By

    browser = offline_browser
    spec = httpx.get(serve.url + "/openapi.json", timeout=10).json()
    operations = sum(1 for item in spec["paths"].values() for m in item if m in {"get", "post", "put", "delete"})
    assert operations >= 10

    browser.get(serve.url + "/docs")
    # Swagger UI built its DOM from the spec: one .opblock per operation.
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#swagger-ui .opblock")) == operations,
           20, 0.25, f"{operations} operations in Swagger UI")
    assert browser.find_element(By.CSS_SELECTOR, "#swagger-ui .info .title").text.startswith("sensorcast")
    # The keys are configured, so the Authorize button offers them.
    assert browser.find_elements(By.CSS_SELECTOR, "#swagger-ui .auth-wrapper .authorize")
    assert "/v1/readings" in browser.find_element(By.ID, "swagger-ui").text
    assert not _foreign_loads(browser, serve.url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "docs.png"))
    assert not _severe(browser)

    browser.get(serve.url + "/redoc")
    # ReDoc renders a section per operation, with its summary as the heading.
    first = spec["paths"]["/v1/streams"]["get"]["summary"]
    wait_until(lambda: first in browser.find_element(By.TAG_NAME, "body").text, 20, 0.25, "ReDoc's operation list")
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-section-id^='tag/'], [data-section-id^='operation/']")) >= operations
    assert not _foreign_loads(browser, serve.url)
    assert not _severe(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, "img[alt='redocly logo']")  # gone, as it failed
    # The control (last: its failed fetch is an error of its own): the CDN that FastAPI's
    # default pages use is out of reach for this browser, so what rendered came from here.
    assert not _cdn_reachable(browser)
