"""/docs and /redoc load everything from this service: no CDN on an offline gateway.

The pages reference only local URLs, those URLs answer 200 with the right content type and
the bytes of the fastapi-offline package, and the pages stay open as they were before
(the keys guard the API routes, not the documentation).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.api.app import DOCS_ASSETS
from tests.apiharness import harness

# Every URL an HTML page can make the browser fetch: attributes, plus the spec URL that
# Swagger UI's inline script passes (url: '...') and ReDoc's spec-url attribute.
_REFS = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")

_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def _refs(html: str) -> list[str]:
    return [a or b for a, b in _REFS.findall(html)]


@pytest.mark.parametrize(
    ("page", "needed"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png", "openapi.json"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png", "openapi.json"}),
    ],
)
def test_docs_pages_reference_only_local_assets_that_are_served(tmp_path: Path, page: str, needed: set[str]) -> None:
    with harness(tmp_path) as h:
        r = h.client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        # No absolute URL anywhere in the page (scripts, styles, fonts, the validator badge).
        assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9.-]", r.text), r.text
        refs = _refs(r.text)
        assert {ref.rsplit("/", 1)[-1] for ref in refs} >= needed, refs
        for ref in refs:
            assert ref.startswith("/") and not ref.startswith("//"), ref
            got = h.client.get(ref)
            assert got.status_code == 200, ref
            suffix = Path(ref).suffix
            assert _TYPES[suffix] in got.headers["content-type"], (ref, got.headers["content-type"])
            if ref.startswith("/docs/assets/"):
                # The package's file as it ships, not a copy kept in this repository.
                assert got.content == (DOCS_ASSETS / Path(ref).name).read_bytes()
                assert len(got.content) > 1000 or suffix == ".png", ref


def test_the_assets_come_from_the_installed_package() -> None:
    assert DOCS_ASSETS.parent.name == "fastapi_offline" and "site-packages" in DOCS_ASSETS.parts
    bundle = (DOCS_ASSETS / "swagger-ui-bundle.js").read_text(errors="replace")
    assert "SwaggerUIBundle" in bundle[:2000]


def test_swagger_ui_is_configured_without_the_public_validator(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        html = h.client.get("/docs").text
        assert '"validatorUrl": null' in html
        assert h.client.get("/docs/oauth2-redirect").status_code == 200


def test_docs_stay_open_with_keys_and_the_api_stays_guarded(tmp_path: Path) -> None:
    (tmp_path / "write.key").write_text("w-secret\n")
    (tmp_path / "read.key").write_text("r-secret\n")
    with harness(tmp_path, api_key_file=tmp_path / "write.key", read_key_file=tmp_path / "read.key") as h:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/docs/assets/swagger-ui.css"):
            assert h.client.get(path).status_code == 200, path
        assert h.client.get("/v1/streams").status_code == 401
        assert h.client.get("/v1/streams", headers={"X-API-Key": "r-secret"}).status_code == 200
        # The mount serves the package's static/ folder only, not its code beside it.
        assert h.client.get("/docs/assets/core.py").status_code == 404
