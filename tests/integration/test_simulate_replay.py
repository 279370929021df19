"""`sensorcast simulate` and `sensorcast replay` as subprocesses against a real mosquitto."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.mqttwatch import Watcher
from tools.localservers import Mosquitto
from tools.sim.signals import QUANTITIES, StreamSpec, generate

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_simulate_publishes_the_generated_signal(mosquitto: Mosquitto, tmp_path: Path) -> None:
    watch = Watcher(mosquitto.port, "sensors/#", client_id="test-sim-watch")
    labels = tmp_path / "truth.csv"
    try:
        proc = _cli(
            "simulate", "--mqtt-url", mosquitto.url, "--devices", "2", "--quantities", "temperature,power",
            "--rate", "20", "--compression", "300", "--backfill", "30", "--duration", "1.5",
            "--seed", "3", "--anomalies-per-1k", "40", "--gap-rate", "0", "--duplicate-rate", "0",
            "--jitter", "0", "--labels", str(labels), "--ts-format", "ns", "--quiet",
        )
        assert proc.returncode == 0, proc.stderr
        msgs = watch.wait_for(lambda m: len(m) >= 4 * 20 * 31, timeout=10)
    finally:
        watch.close()
    by_topic: dict[str, list[tuple[int, float]]] = {}
    for m in msgs:
        body = m.json()
        by_topic.setdefault(m.topic, []).append((body["ts"], body["value"]))
    assert sorted(by_topic) == [
        "sensors/dev01/power", "sensors/dev01/temperature", "sensors/dev02/power", "sensors/dev02/temperature",
    ]
    for topic, points in by_topic.items():
        _, device, quantity = topic.split("/")
        ts = np.array([p[0] for p in points])
        assert 20 * 31 <= len(ts) <= 20 * 33  # 30 s backfill + 1.5 s live at 20/s
        assert np.all(np.diff(ts) == 50_000_000)
        # The values are exactly the generator's for the same start and seed.
        spec = StreamSpec(device, QUANTITIES[quantity], cadence_s=0.05, compression=300.0, anomalies_per_1k=40.0)
        expected = generate(spec, int(ts[0]), len(ts), 3)
        assert [p[1] for p in points] == expected.values.tolist()
    rows = list(csv.DictReader(labels.read_text().splitlines()))
    assert rows, "no ground-truth anomalies written"
    assert {r["stream"] for r in rows} <= {t.removeprefix("sensors/") for t in by_topic}


def test_simulate_reports_an_unreachable_broker() -> None:
    proc = _cli("simulate", "--mqtt-url", "mqtt://127.0.0.1:1", "--duration", "1", timeout=30)
    assert proc.returncode == 1
    assert "127.0.0.1:1" in proc.stderr


def test_replay_preserves_or_rebases_timestamps(mosquitto: Mosquitto, tmp_path: Path) -> None:
    f = tmp_path / "plant.csv"
    f.write_text(
        "date,HUFL,OT\n"
        "2016-07-01 00:00:00,5.8,30.5\n"
        "2016-07-01 01:00:00,5.6,oops\n"
        "not a time,1,1\n"
        "2016-07-01 02:00:00,5.7,27.8\n"
    )
    watch = Watcher(mosquitto.port, "sensors/plant/#", client_id="test-replay-watch")
    try:
        proc = _cli("replay", "--api", "", str(f), "--mqtt-url", mosquitto.url, "--ts-format", "iso")
        assert proc.returncode == 0, proc.stderr
        assert "skipped 1 bad rows, 1 bad cells" in proc.stderr
        msgs = watch.wait_for(lambda m: len(m) >= 5, timeout=10)
    finally:
        watch.close()
    got = sorted((m.topic, m.json()["ts"], m.json()["value"]) for m in msgs)
    assert got == [
        ("sensors/plant/HUFL", "2016-07-01T00:00:00.000000Z", 5.8),
        ("sensors/plant/HUFL", "2016-07-01T01:00:00.000000Z", 5.6),
        ("sensors/plant/HUFL", "2016-07-01T02:00:00.000000Z", 5.7),
        ("sensors/plant/OT", "2016-07-01T00:00:00.000000Z", 30.5),
        ("sensors/plant/OT", "2016-07-01T02:00:00.000000Z", 27.8),
    ]

    watch = Watcher(mosquitto.port, "sensors/p2/#", client_id="test-replay-watch2")
    try:
        # 3600 data seconds per wall second, time scaled: rows 1 s apart, starting now.
        proc = _cli(
            "replay", str(f), "--mqtt-url", mosquitto.url, "--device", "p2", "--columns", "HUFL",
            "--speed", "3600", "--rebase", "--scale-time", "--ts-format", "ns",
        )
        assert proc.returncode == 0, proc.stderr
        msgs = watch.wait_for(lambda m: len(m) >= 3, timeout=10)
    finally:
        watch.close()
    ts = sorted(m.json()["ts"] for m in msgs)
    assert [t - ts[0] for t in ts] == [0, 1_000_000_000, 2_000_000_000]
    spread = msgs[-1].at - msgs[0].at
    assert spread > 1.5  # paced: two wall seconds from first to last row


@pytest.mark.bench_data
def test_replay_reads_real_benchmark_files(shared_data: Path, mosquitto: Mosquitto) -> None:
    watch = Watcher(mosquitto.port, "sensors/ETTh1/#", client_id="test-replay-ett")
    try:
        proc = _cli("replay", "--api", "", str(shared_data / "ett" / "ETTh1.csv"), "--mqtt-url", mosquitto.url, "--limit", "50")
        assert proc.returncode == 0, proc.stderr
        msgs = watch.wait_for(lambda m: len(m) >= 350, timeout=10)
    finally:
        watch.close()
    assert len(msgs) == 350  # 50 rows x 7 channels
    assert {m.topic.rsplit("/", 1)[1] for m in msgs} == {"HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"}
    first = orjson.loads(next(m.payload for m in msgs if m.topic.endswith("/OT")))
    assert first == {"ts": 1_467_331_200_000, "value": 30.5310001373291}
