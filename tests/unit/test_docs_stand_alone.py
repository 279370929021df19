"""The repository's docs stand alone: someone who clones it has everything they point to.

No file names design notes that live outside the repository, and every relative link in
README.md and docs/ resolves to a file inside it. The measured facts the code relies on
are stated in docs/measured.md; the structure in docs/architecture.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Design notes kept beside the repository while it was written, never shipped with it.
OUTSIDE = ("MEASURED" + ".md", "ARCHITECTURE" + ".md", "STYLE" + ".md", "../shared/" + "design")
TEXT = {".md", ".py", ".sh", ".toml", ".yml", ".yaml", ".cfg", ".txt", ".example", ".conf"}
FOLDERS = ("service", "tools", "evaluation", "training", "tests", "docs", "deploy")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _texts() -> list[Path]:
    files = [REPO / name for name in ("README.md", "Makefile", "Dockerfile", "docker-compose.yml", "pyproject.toml")]
    for folder in FOLDERS:
        files += [p for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix in TEXT]
    return [p for p in files if p.exists() and "__pycache__" not in p.parts]


def test_no_file_names_design_notes_outside_the_repository() -> None:
    found = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for p in _texts()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if any(name in line for name in OUTSIDE)
    ]
    assert found == []


@pytest.mark.parametrize("doc", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            broken.append(target)
    assert broken == []
