"""NAB through ``sensorcast backtest`` (``service.backtest.backtest_frame``): the live engine.

All 58 files go in as the columns of one frame (column ``i`` is the stream
``backtest/nab<i>``), one row index per tick, so the engine does what it does live: route
by binding, resample onto the model's cadence, step every stream in one batched ONNX call
per tick from its state table, score and decide. The detector's score for each row is the
engine's own alert score (``BacktestRow.score``) with ``anomaly.scorer = "surprise"``
(``service.anomaly.surprise``, run by ``service.streams.scorers``): nothing is computed
outside the engine. Rows the engine did not score (warming) count as 0.

``as_steps=True``: NAB scores *rows*, and a handful of files have irregular timestamps that
the resampler would merge or bridge, so every row is fed as one model step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from evaluation.nab.corpus import DataFile
from evaluation.nab.live import stack
from service.backtest import BacktestRow, backtest_frame
from service.config import Settings
from service.runtime.manifest import load_manifest
from service.runtime.registry import ModelRegistry

T0_NS = 1_600_000_200 * 1_000_000_000  # synthetic row clock (the real timestamps stay in the files)


def nab_settings(spread_alpha: float = 0.003) -> Settings:
    """The engine settings the benchmarked detector runs with (alpha 0.003: docs/nab.md)."""
    base = Settings(_env_file=None)
    anomaly = base.anomaly.model_copy(update={"scorer": "surprise", "spread_alpha": spread_alpha, "min_count": 1,
                                              "window": 1})
    return base.model_copy(update={"anomaly": anomaly})


def evidence_settings(gate: bool = True) -> Settings:
    """The default ``evidence`` scorer, every score fed to NAB (M-of-N off). ``gate=False``:
    its firing threshold (which is also the keep-out gate) set beyond any reading's evidence,
    so every reading is fed to the model."""
    base = Settings(_env_file=None)
    update: dict[str, object] = {"scorer": "evidence", "min_count": 1, "window": 1}
    if not gate:
        update["threshold"] = 1.0 - 1e-15
    return base.model_copy(update={"anomaly": base.anomaly.model_copy(update=update)})


def evidence_rank(score: np.ndarray) -> np.ndarray:
    """Evidence score ``1 - 10^-E`` -> ``E / (1 + E)``: the same order, in [0, 1), with fewer ties
    at 1.0 (float64 keeps E only up to about 16)."""
    e = -np.log10(np.maximum(1.0 - np.nan_to_num(score, nan=0.0), 1e-300))
    out: np.ndarray = e / (1.0 + e)
    return out


def engine_rows(files: Sequence[DataFile], model_folder: Path, settings: Settings | None = None) -> list[BacktestRow]:
    """Every file through one ``backtest_frame`` call; rows in (step, file) order."""
    manifest = load_manifest(model_folder)
    if manifest.features != ["value"] or manifest.time_features:
        # Rows are re-stamped onto a synthetic clock: time features would be fiction.
        raise ValueError(f"{manifest.name}: NAB needs a univariate model ('value') without time features, "
                         f"found features {manifest.features}, time features {manifest.time_features}")
    registry = ModelRegistry(model_folder.parent.parent)  # the models directory holding it
    _, values = stack(files)
    n, steps = values.shape
    columns = [f"nab{i}" for i in range(n)]
    cadence_ns = round(manifest.cadence_s * 1_000_000_000)
    stamps = [T0_NS + t * cadence_ns for t in range(steps)]
    rows = backtest_frame(registry, manifest.name, stamps, values.T.tolist(), columns,
                          settings=settings or nab_settings(), version=manifest.version, as_steps=True)
    if len(rows) != n * steps:
        raise RuntimeError(f"backtest returned {len(rows)} rows, expected {n * steps}")
    return rows


def _column(rows: list[BacktestRow], field: str, files: Sequence[DataFile]) -> np.ndarray:
    """(B, T) of one BacktestRow field, NaN where None or past each file's end."""
    lengths, values = stack(files)
    n, steps = values.shape
    out = np.array([np.nan if getattr(r, field) is None else getattr(r, field) for r in rows]).reshape(steps, n).T
    out[np.arange(steps)[None, :] >= lengths[:, None]] = np.nan
    return out


def engine_forecasts(files: Sequence[DataFile], model_folder: Path) -> np.ndarray:
    """(B, T) one-step forecasts from the engine: [i, t] is what it expected for row t of file i."""
    return _column(engine_rows(files, model_folder), "expected", files)


def run_engine(files: Sequence[DataFile], model_folder: Path, settings: Settings | None = None,
               transform: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Anomaly scores (N,) per file: the engine's own score column from ``sensorcast backtest``
    (default settings: ``nab_settings()``, the surprise scorer as benchmarked), through
    ``transform`` (an order-keeping map into [0, 1]) when given."""
    scores = _column(engine_rows(files, model_folder, settings), "score", files)
    scores = np.nan_to_num(scores if transform is None else transform(scores), nan=0.0)
    return {f.name: scores[i, : len(f.values)] for i, f in enumerate(files)}
