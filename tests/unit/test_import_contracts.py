"""Imports go one way: the contracts in pyproject.toml ([tool.importlinter]) hold.

``lint-imports`` reads them from pyproject.toml: service/ imports no torch and nothing
from tools/, training/ or evaluation/; evaluation/ and tools/ import no torch; and inside
service/ each layer imports only from the layers below it (records, settings and errors
at the bottom, the API and the CLI at the top), and in service/streams/ the engine sits on
its stages. docs/architecture.md draws the layers.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

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


def test_every_module_under_a_layered_package_has_a_layer() -> None:
    # Modules a layers contract does not name are not checked at all, so a new module
    # directly under service/ or service/streams/ must be given a layer.
    layered = [c for c in _contracts() if c["type"] == "layers"]
    assert {tuple(c["containers"]) for c in layered} >= {("service",), ("service.streams",)}
    for contract in layered:
        (container,) = contract["containers"]
        placed = {name.strip() for layer in contract["layers"] for name in re.split(r"[|:]", layer)}
        present = {m.name for m in pkgutil.iter_modules(importlib.import_module(container).__path__)}
        assert present - placed == set(), f"modules under {container} without a layer in pyproject.toml"
        assert placed - present == set(), f"layers of {container} naming modules that no longer exist"


def test_the_service_forbids_the_packages_above_it_and_torch() -> None:
    forbidden = {
        tuple(c["source_modules"]): set(c["forbidden_modules"]) for c in _contracts() if c["type"] == "forbidden"
    }
    assert {"torch", "training", "evaluation", "tools"} <= forbidden[("service",)]
    assert {"torch", "training"} <= forbidden[("evaluation",)]
    assert {"torch", "training"} <= forbidden[("tools",)]
