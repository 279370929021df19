"""The stack fixture: images built, the deployment copied, a podman socket, health checks.

Skips only where podman cannot run containers at all (not root, no apt to install it, or a
runtime that fails on a trivial container); every other failure fails the tests.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack.podstack import BUILD, REPO, STACK_DIR, Stack, podman
from tools.modelkit import KitSpec, write_model

# Measured facts of this run (build times, sizes, start-up, memory), written to
# reports/stack/facts.json at the end and quoted in docs/deploy.md.
FACTS: dict[str, Any] = {}
# A kit model for the kit-* test devices (cadence 60 s, 10 steps of warm-up): a spike on a
# sine gives exactly one firing and one resolved alert (tests/integration/test_serve_e2e.py).
KIT = KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=10)
# Documented settings in .env: checkpoints every second (the kill -9 check), which model
# serves which devices (the trained `plant` model serves plant-* once it is there).
ENV_OVERRIDES = (
    "\n# stack test (tests/stack)\n"
    "SENSORCAST_STREAMS__CHECKPOINT_INTERVAL_S=1\n"
    'SENSORCAST_MODELS__BINDINGS=[{"model":"m","device":"kit-*"},{"model":"plant","device":"plant-*"},'
    '{"model":"demo"}]\n'
)


def _podman_cannot_run() -> str | None:
    """Why podman cannot run a container here at all, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed and could not be installed"
    base = "localhost/sensorcast-standin/debian:bookworm-slim"
    if podman("image", "exists", base, check=False).returncode != 0:
        return None  # cannot tell: the base image itself did not build
    proc = podman("run", "--rm", "--network=none", base, "true", check=False, timeout=60)
    return None if proc.returncode == 0 else f"`podman run {base} true` failed: {proc.stderr.strip()[-500:]}"


def build_images() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("stack: podman runs as root here (as on CI); this run is not root")
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        pytest.skip("stack: podman is not installed and there is no apt-get to install it")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(BUILD), "standins", "service", "train"], capture_output=True,
                          text=True, timeout=1800)
    FACTS["build_s"] = round(time.monotonic() - t0, 1)
    FACTS["build_steps_s"] = {m.group(1): int(m.group(2))
                              for m in re.finditer(r"built (\S+) in (\d+) s", proc.stdout)}
    if proc.returncode != 0:
        why = _podman_cannot_run()
        if why:
            pytest.skip(f"stack: podman cannot run containers here: {why}")
        pytest.fail(f"deploy/standins/build.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    images = dict(re.findall(r"^(MOSQUITTO_IMAGE|INFLUXDB_IMAGE|PYTHON_IMAGE)=(\S+)$", proc.stdout, flags=re.M))
    names = [*images.values(), "sensorcast:0.1.0", "sensorcast-train:0.1.0"]
    sizes = podman("image", "inspect", "--format", "{{.Size}}", *names).stdout.split()
    FACTS["image_mb"] = {n: round(int(s) / 1e6, 1) for n, s in zip(names, sizes, strict=True)}
    return images


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    images = build_images()
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    # One stack test at a time on a machine: the project name and images are shared.
    with (STACK_DIR / "stack.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = Stack(tmp_path_factory.mktemp("stack"), images)
        st.prepare()
        write_model(st.workdir / "models", KIT)
        # The trainer (uid 10001) writes new versions into ./models (docs/deploy.md).
        subprocess.run(["chmod", "-R", "a+rwX", str(st.workdir / "models")], check=True)
        st.start_socket()
        volumes_before = set(podman("volume", "ls", "-q").stdout.split())
        try:
            # Leftovers of an interrupted run of this project (never another project's).
            st.compose("--profile", "demo", "--profile", "train", "down", "-v", "--remove-orphans", check=False)
            st.health.start()
            yield st
        finally:
            st.health.stop()
            if not os.environ.get("SENSORCAST_STACK_KEEP"):
                st.compose("--profile", "demo", "--profile", "train", "down", "-v", "--remove-orphans",
                           check=False, timeout=180)
                # Anonymous volumes (the images' VOLUME paths compose does not name, such as
                # /mosquitto/log) of the containers that `down` without -v removed mid-test.
                for v in set(podman("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()) - volumes_before:
                    if not podman("volume", "inspect", "--format", "{{.Labels}}", v).stdout.strip("map[] \n"):
                        podman("volume", "rm", v, check=False)
            st.stop_socket()
            FACTS["healthcheck_runs"] = st.health.runs
            out = REPO / "reports" / "stack"
            out.mkdir(parents=True, exist_ok=True)
            (out / "facts.json").write_text(json.dumps(FACTS, indent=2) + "\n")
            print(f"\nstack facts (reports/stack/facts.json): {json.dumps(FACTS)}")

