"""The simulator's grid device (tools/sim/grid.py): an 8x8 IR array over a warming machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools.sim.grid import GridSpec, frame_payload, frames, pixel_names, write_csv

SPEC = GridSpec()  # 8x8, 60 s frames, an 8-hour cycle (480 frames), pixel r2c5 dead from step 2000


def test_frames_are_seeded_row_major_and_chunk_independent() -> None:
    ts, v = frames(SPEC, 0, 600, seed=1)
    assert v.shape == (600, 64) and ts[1] - ts[0] == 60 * 10**9
    assert SPEC.names[:9] == ["r0c0", "r0c1", "r0c2", "r0c3", "r0c4", "r0c5", "r0c6", "r0c7", "r1c0"]
    assert pixel_names(2, 3) == ["r0c0", "r0c1", "r0c2", "r1c0", "r1c1", "r1c2"]
    np.testing.assert_array_equal(frames(SPEC, 0, 600, seed=1)[1], v)
    assert not np.array_equal(frames(SPEC, 0, 600, seed=2)[1], v)
    _, tail = frames(SPEC, 0, 100, seed=1, start_step=500)  # a live publisher resumes mid-way
    np.testing.assert_array_equal(tail, v[500:])


def test_the_machine_warms_up_and_cools_down() -> None:
    _, v = frames(SPEC, 0, 960, seed=0)  # two cycles: run 60 % (288 frames), then rest
    centre = v[:, 3 * 8 + 3]
    corner = v[:, 0]
    assert centre[280] > centre[10] + 10  # warms up slowly while running
    assert centre[470] < centre[290] - 10  # and cools down at rest
    assert np.all(np.diff(centre[20:280:20]) > -1.0)  # a slow rise, not a step
    assert abs(float(np.mean(corner)) - SPEC.ambient) < 5  # the edge of the view sees the room
    assert float(np.nanmax(v)) < 100 and float(np.nanmin(v)) > 15


def test_hot_spots_move() -> None:
    flat = frames(GridSpec(spots=0), 0, 2000, seed=0)[1]
    hot = frames(SPEC, 0, 2000, seed=0)[1]
    excess = (hot - flat).reshape(-1, 8, 8)
    peaks = {int(np.argmax(f)) for f in excess[::100]}
    assert len(peaks) >= 4  # the brightest excess wanders over the body


def test_the_dead_pixel_reads_nan_once_dead_and_is_left_out_of_the_payload() -> None:
    ts, v = frames(SPEC, 0, 2100, seed=0)
    dead = 2 * 8 + 5
    assert np.isfinite(v[:2000]).all() and np.isnan(v[2000:, dead]).all()
    assert np.isfinite(np.delete(v[2000:], dead, axis=1)).all()
    body = json.loads(frame_payload(int(ts[2050]), v[2050], SPEC.names))
    assert body["ts"] == int(ts[2050]) // 1_000_000 and "r2c5" not in body and len(body) == 64
    assert body["r0c0"] == v[2050, 0]
    assert "r2c5" in json.loads(frame_payload(int(ts[0]), v[0], SPEC.names))


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the 8x8 grid"):
        GridSpec(dead=(8, 0))
    with pytest.raises(ValueError, match="rows, cols >= 1"):
        GridSpec(rows=0)


def test_csv_reads_back_as_64_features_with_the_dead_pixel_missing(tmp_path: Path) -> None:
    from training.config import DataConfig
    from training.data import load

    path = tmp_path / "grid.csv"
    write_csv(str(path), GridSpec(dead_after_step=100), 150, seed=0)
    ds = load(DataConfig(source=str(path)))
    assert ds.features == tuple(SPEC.names) and ds.cadence_s == 60.0
    values = ds.series[0].values
    assert values.shape == (150, 64) and np.isnan(values[100:, 21]).all() and np.isfinite(values[:100]).all()


def test_the_publisher_sends_frames_as_they_fall_due() -> None:
    from tools.sim.grid import GridPublisher

    sent: list[tuple[str, bytes]] = []
    spec = GridSpec(rows=2, cols=2, dead=(0, 1), dead_after_step=2)
    pub = GridPublisher([spec], 0, seed=0, send=lambda t, p: sent.append((t, p)) is None)
    assert pub.step(2 * 60 * 10**9) == 3  # steps 0, 1, 2 are due
    assert [t for t, _ in sent[:4]] == ["sensors/ir01/r0c0", "sensors/ir01/r0c1", "sensors/ir01/r1c0", "sensors/ir01/r1c1"]
    assert len(sent) == 4 + 4 + 3 and pub.published == 11  # the dead pixel sends nothing from step 2
    _, v = frames(spec, 0, 3, seed=0)
    assert json.loads(sent[-1][1]) == {"ts": 120_000, "value": v[2, 3]}
    named: list[tuple[str, bytes]] = []
    pub = GridPublisher([spec], 0, seed=0, send=lambda t, p: named.append((t, p)) is None, topic="sensors/{device}")
    assert pub.step(60 * 10**9) == 2 and pub.step(60 * 10**9) == 0
    assert [t for t, _ in named] == ["sensors/ir01"] * 2 and json.loads(named[1][1])["r1c1"] == v[1, 3]
