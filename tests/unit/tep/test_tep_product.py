"""The product path of the TEP bench on tiny synthetic multivariate data (no ../shared):
train through ``sensorcast train``'s code, cache, replay through ``backtest_frame``; and
``python -m evaluation.tep`` end to end on a synthetic folder of TEP-shaped files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.tep import bench, product
from service.runtime.registry import ModelRegistry

TINY = product.ProductConfig(hidden=8, horizon=2, epochs=2, chunk=16)


def plant(rng: np.random.Generator, n: int, f: int) -> np.ndarray:
    """Correlated, autocorrelated channels around different levels."""
    t = np.arange(n)[:, None]
    base = np.sin(t / 9.0 + np.arange(f)[None, :]) + 0.2 * rng.normal(size=(n, f))
    return 10.0 * (1 + np.arange(f))[None, :] + base


def test_train_cache_and_replay(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = plant(rng, 160, 3)
    first = product.train_model(x, tmp_path, TINY)
    assert not first.cached
    again = product.train_model(x, tmp_path, TINY)
    assert again.cached and again.version == first.version  # a rerun reuses the artefact
    assert product.cache_key(x, product.ProductConfig(hidden=8, horizon=2, epochs=3, chunk=16)) != first.version
    assert product.cache_key(x[1:], TINY) != first.version  # other settings or data: another model

    registry = ModelRegistry(first.models_dir)
    manifest = registry.get(product.MODEL_NAME, first.version).manifest
    assert manifest.features == ["x00", "x01", "x02"] and manifest.cadence_s == 180.0
    settings, overrides = product.bench_settings()
    assert all(getattr(settings.anomaly, k) == v for k, v in overrides.items())
    normal = plant(rng, 120, 3)
    faulty = normal.copy()
    faulty[80:, 1] += 50.0  # far outside anything seen
    r0 = product.run_file(registry, first.version, normal, settings)
    r1 = product.run_file(registry, first.version, faulty, settings)
    for r in (r0, r1):
        assert r.score.shape == (120,) and r.firing.shape == (120,) and r.firing.dtype == bool
        assert np.isnan(r.score[: manifest.warmup_steps - 1]).all()  # the engine scores nothing while warming
        assert np.isfinite(r.score[80:]).all() and (r.score[80:] >= 0).all()
        assert r.statistic == "evidence" or (r.score[80:] <= 1).all()
        assert all("/" in k and n > 0 for k, n in r.fired.items())  # "check/kind" -> firing events
    # (Whether and when an alert fires is the product's quality, measured by the bench, not
    # asserted on a two-epoch model here.)
    assert np.max(r1.score[80:]) >= np.max(r0.score[80:])


def write_tep(root: Path, rows: int) -> None:
    """A TEP-shaped folder: d00.dat transposed, d00_te normal, dNN_te faulty after sample 160."""
    rng = np.random.default_rng(1)
    root.mkdir()

    def save(name: str, m: np.ndarray) -> None:
        (root / name).write_text("\n".join(" ".join(f"{v:.6e}" for v in r) for r in m) + "\n")

    save("d00.dat", plant(rng, rows, 52).T)
    save("d00_te.dat", plant(rng, rows, 52))
    for f in range(1, 22):
        m = plant(rng, rows, 52)
        m[160:, f] += 5.0 * f
        save(f"d{f:02d}_te.dat", m)


@pytest.mark.slow
def test_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tep(tmp_path / "tep", 200)
    code = bench.main(["--data", str(tmp_path / "tep"), "--work", str(tmp_path / "work"), "--hidden", "8",
                       "--horizon", "2", "--epochs", "2", "--components", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "mean18" in out and "FAR00" in out
    doc = json.loads(out.strip().splitlines()[-1])
    assert set(doc["fdr_mean18"]) == {"alerts", "score@1%", "score@5%", "Q@1%", "Q@5%", "T2@1%", "T2@5%"}
    assert doc["far_d00_te"]["Q@5%"] <= 0.05
    assert doc["fdr_mean18"]["Q@5%"] > 0.5  # shifts of 5..105 units are plain to PCA
    assert len(doc["auc"]) == 21 and set(doc["firing_events"]) == {"d00_te", "faults"}


def test_bench_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--data", str(tmp_path / "nowhere"), "--work", str(tmp_path)]) == 2
    assert "no TEP data" in capsys.readouterr().err
