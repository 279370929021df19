"""The service installs from PyPI wheels alone, without torch, on amd64 and arm64.

What the Dockerfile's service stage does, checked without Docker: a clean venv gets the
service's dependencies (wheels only), the package itself, and must run without torch.
Slow and networked (PyPI): `make check-image-deps` runs these.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def _requirements(tmp: Path) -> Path:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.lower().startswith(("torch", "onnx>", "onnx=", "onnxscript"))]
    req = tmp / "requirements.txt"
    req.write_text("\n".join(deps) + "\n")
    return req


def _run(*cmd: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr[-3000:]}"
    return proc


def test_service_runs_from_a_clean_venv_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py, pip = venv / "bin" / "python", venv / "bin" / "pip"
    _run(pip, "install", "-q", "--only-binary=:all:", "-r", _requirements(tmp_path))
    _run(pip, "install", "-q", "--no-deps", REPO)
    # The service's modules import, the entry point runs, and torch is nowhere.
    _run(py, "-c", "import service.api.app, service.serve, service.dashboard, tools.sim.command, tools.demo, onnxruntime")
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0
    out = _run(venv / "bin" / "sensorcast", "config", "--format", "env").stdout
    assert "SENSORCAST_STORE__URL" in out
    # The dashboard's static files are in the installed package (package-data).
    files = _run(py, "-c", "import service.dashboard as d; print(sorted(p.name for p in d.STATIC.rglob('*')))").stdout
    assert "uPlot.iife.min.js" in files and "app.js" in files


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_every_dependency_has_a_linux_wheel(arch: str, tmp_path: Path) -> None:
    # python:3.11-slim-bookworm has glibc 2.36: manylinux 2.17 .. 2.36 wheels run there.
    platforms = [f"--platform=manylinux_2_{m}_{arch}" for m in range(17, 37)] + [f"--platform=manylinux2014_{arch}"]
    report = tmp_path / "report.json"
    _run(
        sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--only-binary=:all:",
        *platforms, "--python-version=3.11", "--implementation=cp", "--abi=cp311",
        f"--target={tmp_path / 'target'}", "-r", _requirements(tmp_path), f"--report={report}",
    )
    installs = json.loads(report.read_text())["install"]
    names = {i["metadata"]["name"].lower().replace("_", "-") for i in installs}
    assert {"onnxruntime", "numpy", "orjson", "fastapi", "paho-mqtt"} <= names
    assert "torch" not in names
    assert all(i["download_info"]["url"].endswith(".whl") for i in installs)
