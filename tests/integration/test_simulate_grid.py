"""`sensorcast simulate --grids 1` against a real mosquitto: the 8x8 grid's frames as one
JSON named-fields payload per frame on sensors/{device} (a topic template without {quantity})."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.mqttwatch import Watcher
from tools.localservers import Mosquitto
from tools.sim.grid import GridSpec, frames

pytestmark = pytest.mark.integration


def test_simulate_publishes_grid_frames(mosquitto: Mosquitto) -> None:
    watch = Watcher(mosquitto.port, "sensors/#", client_id="test-sim-grid-watch")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "simulate", "--mqtt-url", mosquitto.url, "--devices", "1",
             "--quantities", "temperature", "--grids", "1", "--topic", "sensors/{device}", "--rate", "4",
             "--compression", "300", "--backfill", "10", "--duration", "1", "--seed", "3", "--gap-rate", "0",
             "--duplicate-rate", "0", "--jitter", "0", "--quiet"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        msgs = watch.wait_for(lambda m: sum(x.topic == "sensors/ir01" for x in m) >= 40, timeout=10)
    finally:
        watch.close()
    bodies = [m.json() for m in msgs if m.topic == "sensors/ir01"]
    spec = GridSpec(cadence_s=0.25, compression=300.0)
    assert all(len(b) == 65 for b in bodies)  # ts + 64 pixels (the pixel dies at step 2000)
    ts = np.array([b["ts"] for b in bodies])
    assert np.all(np.diff(ts) == 250)
    _, want = frames(spec, 0, len(bodies), seed=3)
    got = np.array([[b[n] for n in spec.names] for b in bodies])
    np.testing.assert_array_equal(got, want)
