"""``sensorcast bench scale`` at a tiny size: its own nats-server, real replica processes, every
phase run, and the printed table and JSON carry every field (not the speeds: this box is shared).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_scale_tiny(tmp_path: Path) -> None:
    pytest.importorskip("onnx")  # the kit model is built with onnx.helper
    if not (shutil.which("nats-server") or Path("/usr/sbin/nats-server").exists()):
        pytest.skip("nats-server not installed (make setup installs it)")
    out = tmp_path / "scale.json"
    devices, quantities, partitions, rounds = 50, 4, 4, 3
    argv = [sys.executable, "-m", "service.cli", "bench", "scale", "--devices", str(devices),
            "--partitions", str(partitions), "--rounds", str(rounds), "--replicas", "1,2",
            "--catchup-rounds", "1", "--failover-devices", "25", "--failover-rate", "200",
            "--lease-ttl-s", "3", "--checkpoint-interval-s", "2", "--timeout-s", "240", "--json", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for line in ("backlog:", "transport floor", "baseline, one Engine", "1 replica(s):", "2 replica(s):",
                 "catch-up:", "failover (", "command: sensorcast bench scale"):
        assert line in text, f"{line!r} missing from:\n{text}"

    r = json.loads(out.read_text())
    streams = devices * quantities
    assert r["streams"] == streams and r["partitions"] == partitions
    assert r["publish"]["readings"] == streams * rounds
    assert r["publish"]["partition_min"] > 0  # the servers' mapping spread the devices
    assert r["baseline"]["full_us"] > r["baseline"]["engine_us"] > 0
    assert r["transport"]["client_us"] > 0
    assert [x["replicas"] for x in r["replicas"]] == [1, 2]
    for run in r["replicas"]:
        per = run["per_replica"]
        assert len(per) == run["replicas"]
        assert sum(p["partitions"] for p in per) == partitions  # every partition leased, to one replica
        assert sum(p["steps_total"] for p in per) >= streams * rounds  # every reading stepped
        assert sum(p["steps"] for p in per) > 0  # some in the timed window (after every replica was ready)
        assert run["cpu_us"] > 0 and run["ratio_to_baseline"] > 0
    assert r["catchup"]["steps"] >= streams  # the round published while no replica ran
    f = r["failover"]
    assert f["moved"] and set(f["moved"]) <= set(range(partitions))
    assert 0 < f["first_forecast_s"] <= f["all_forecast_s"]
    assert f["lease_moved_s"] > 0
