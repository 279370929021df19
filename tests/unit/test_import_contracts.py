"""Imports go one way: the contracts in pyproject.toml ([tool.importlinter]) hold.

``lint-imports`` reads them from pyproject.toml: service/ imports no torch and nothing
from tools/, training/ or evaluation/; evaluation/ and tools/ import no torch; and inside
service/ each layer imports only from the layers below it (records, settings and errors
at the bottom, the API and the CLI at the top). docs/architecture.md draws the layers.
"""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import service

REPO = Path(__file__).resolve().parents[2]


def _contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_import_contracts_hold() -> None:
    # A fresh process in the repository: lint-imports finds pyproject.toml in its working
    # directory and imports the packages from there. No cache: the graph is always current.
    code = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True, no_logo=True))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"lint-imports found imports against the contracts:\n{done.stdout}\n{done.stderr}"
    assert "broken" not in done.stdout.replace("0 broken", "")


def test_every_module_under_service_has_a_layer() -> None:
    # Modules the layers contract does not name are not checked at all, so a new module
    # directly under service/ must be given a layer.
    (layers,) = [c for c in _contracts() if c["type"] == "layers" and c.get("containers") == ["service"]]
    placed = {name.strip() for layer in layers["layers"] for name in re.split(r"[|:]", layer)}
    present = {m.name for m in pkgutil.iter_modules(service.__path__)}
    assert present - placed == set(), "modules under service/ without a layer in pyproject.toml"
    assert placed - present == set(), "layers naming modules that no longer exist"


def test_the_service_forbids_the_packages_above_it_and_torch() -> None:
    forbidden = {
        tuple(c["source_modules"]): set(c["forbidden_modules"]) for c in _contracts() if c["type"] == "forbidden"
    }
    assert {"torch", "training", "evaluation", "tools"} <= forbidden[("service",)]
    assert {"torch", "training"} <= forbidden[("evaluation",)]
    assert {"torch", "training"} <= forbidden[("tools",)]
