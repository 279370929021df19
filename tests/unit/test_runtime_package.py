"""service/ holds only the runtime (issue #10): it never imports tools/, evaluation/ or
training/ (the ``sensorcast`` command names their modules as strings and imports them
only when their subcommand runs); tools/ and evaluation/ need no torch; and the dashboard
serves static files without reaching into the API, whose v1 routes, ``/v1/points``
included, are all registered by the app."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from service.api.app import create_app
from service.config import Settings

SERVICE = Path(__file__).resolve().parents[2] / "service"
OUTSIDE = ("tools", "evaluation", "training")


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def test_service_imports_no_tools_evaluation_or_training() -> None:
    bad = {
        f"{path.relative_to(SERVICE.parent)}: {name}"
        for path in SERVICE.rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in OUTSIDE
    }
    assert not bad, sorted(bad)


def test_tools_and_evaluation_need_no_torch_and_only_the_model_builders_need_onnx() -> None:
    found = {
        (f"{path.relative_to(SERVICE.parent)}", name.split(".")[0])
        for top in ("tools", "evaluation")
        for path in (SERVICE.parent / top).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in ("torch", "training", "onnx")
    }
    # onnx (the train extra) only to build models, imported inside the builder functions
    # (tools/seqform.py and seqnative.py: the sequence form of a step graph).
    assert found == {("tools/modelkit.py", "onnx"), ("tools/seqform.py", "onnx"), ("tools/seqnative.py", "onnx"),
                     ("evaluation/nab/persistence.py", "onnx")}


def test_dashboard_does_not_import_the_api() -> None:
    names = {n for p in (SERVICE / "dashboard").rglob("*.py") for n in _imports(p)}
    assert not {n for n in names if n.startswith("service.api")}


def test_points_is_a_v1_route_of_the_app_listed_with_the_read_routes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.api.app")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        store={"url": "memory://", "spool_dir": str(tmp_path / "spool")},
        models={"dir": str(tmp_path / "models"), "watch": False},
        streams={"checkpoint_dir": str(tmp_path / "state")},
        alerts={"outbox_dir": str(tmp_path / "outbox")},
    )
    app = create_app(settings, pipeline=object())  # type: ignore[arg-type]
    assert "/v1/points/{stream_id}" in app.openapi()["paths"]
    # Registered before the start-up log is written, so the log names it (it did not when
    # the dashboard added it afterwards).
    read_lines = [r.getMessage() for r in caplog.records if "read routes" in r.getMessage()]
    assert read_lines and "GET /v1/points/{stream_id}" in read_lines[0]
