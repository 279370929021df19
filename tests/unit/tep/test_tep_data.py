"""The TEP loader: d00.dat is stored transposed, the test files are samples x 52."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from evaluation.tep import data


def write(path: Path, m: np.ndarray) -> None:
    path.write_text("".join("  " + "   ".join(f"{v:.7e}" for v in row) + "\n" for row in m))


def test_d00_is_transposed_into_samples_by_features(tmp_path: Path) -> None:
    m = np.arange(52 * 7, dtype=np.float64).reshape(52, 7)  # as stored: 52 rows of 7 samples
    write(tmp_path / "d00.dat", m)
    x = data.load_train(tmp_path)
    assert x.shape == (7, 52)
    np.testing.assert_array_equal(x[:, 3], m[3])  # feature 4 is the file's 4th row
    np.testing.assert_array_equal(x[2], m[:, 2])  # sample 3 is the file's 3rd column


def test_test_file_is_read_as_stored(tmp_path: Path) -> None:
    m = np.random.default_rng(0).normal(size=(9, 52))
    write(tmp_path / "d05_te.dat", m)
    x = data.load_test(tmp_path, 5)
    assert x.shape == (9, 52)
    np.testing.assert_allclose(x, m, rtol=1e-7)


def test_wrong_width_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "d01_te.dat", np.zeros((4, 51)))
    with pytest.raises(ValueError, match="expected 52 columns"):
        data.load_test(tmp_path, 1)
    write(tmp_path / "d00.dat", np.zeros((500, 52)))  # not transposed: 500 columns after the transpose
    with pytest.raises(ValueError, match=r"500 x 500|expected 52"):
        data.load_train(tmp_path)


def test_check_dir_names_what_is_missing(tmp_path: Path) -> None:
    msg = data.check_dir(tmp_path)
    assert msg is not None and "d00.dat" in msg


def test_fault_sets() -> None:
    assert len(data.FAULTS) == 21 and len(data.DETECTABLE) == 18
    assert not set(data.UNDETECTABLE) & set(data.DETECTABLE)
    assert len(data.FEATURES) == 52 == len(set(data.FEATURES))


@pytest.fixture
def tep_dir(shared_data: Path) -> Path:
    """SENSORCAST_TEP_DIR, else <shared data>/tep; skips cleanly when the files are absent."""
    root = Path(os.environ["SENSORCAST_TEP_DIR"]) if os.environ.get("SENSORCAST_TEP_DIR") else shared_data / "tep"
    missing = data.check_dir(root)
    if missing:
        pytest.skip(missing)
    return root


def test_real_files_shapes_and_transposition(tep_dir: Path) -> None:
    x = data.load_train(tep_dir)
    assert x.shape == (500, 52)
    first_line = np.array((tep_dir / "d00.dat").read_text().split("\n", 1)[0].split(), dtype=np.float64)
    np.testing.assert_array_equal(x[:, 0], first_line)  # the stored first row is feature 1 over time
    for f in (0, 1, 21):
        assert data.load_test(tep_dir, f).shape == (960, 52)


def test_pca_baseline_reproduces_the_protocols_numbers(tep_dir: Path) -> None:
    """Q: 0.73 at 1 % and 0.78-0.79 at 5 % FAR on d00_te, mean over the 18 detectable faults."""
    from evaluation.tep import metrics, pca

    model = pca.fit(data.load_train(tep_dir), components=17)
    tests = {f: data.load_test(tep_dir, f) for f in (0, *data.DETECTABLE)}
    got = {}
    for far in (0.01, 0.05):
        thr = metrics.threshold_at(model.q(tests[0]), far)
        got[far] = np.mean([metrics.rate(metrics.flagged(model.q(tests[f])[data.ONSET:], thr))
                            for f in data.DETECTABLE])
    assert 0.72 <= got[0.01] <= 0.74 and 0.775 <= got[0.05] <= 0.795, got
