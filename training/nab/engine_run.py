"""NAB through ``sensorcast backtest`` (``service.backtest.backtest_frame``): the live engine.

All 58 files go in as the columns of one frame (column ``i`` is the stream
``backtest/nab<i>``), one row index per tick, so the engine does what it does live: route
by binding, resample onto the model's cadence, step every stream in one batched ONNX call
per tick from its state table, score and decide. The engine's forecast for each step
(``BacktestRow.expected``, made one step earlier) then feeds the NAB post-processing of
``training.nab.live.NabScorer``.

``as_steps=True``: NAB scores *rows*, and a handful of files have irregular timestamps that
the resampler would merge or bridge, so every row is fed as one model step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.backtest import backtest_frame
from service.runtime.manifest import load_manifest
from service.runtime.registry import ModelRegistry
from training.nab.corpus import DataFile
from training.nab.live import LiveConfig, NabScorer, stack

T0_NS = 1_600_000_200 * 1_000_000_000  # synthetic row clock (the real timestamps stay in the files)


def engine_forecasts(files: Sequence[DataFile], model_folder: Path) -> np.ndarray:
    """(B, T) one-step forecasts from the engine: [i, t] is what it expected for row t of file i."""
    manifest = load_manifest(model_folder)
    if manifest.features != ["value"] or manifest.time_features:
        # Rows are re-stamped onto a synthetic clock: time features would be fiction.
        raise ValueError(f"{manifest.name}: NAB needs a univariate model ('value') without time features, "
                         f"found features {manifest.features}, time features {manifest.time_features}")
    registry = ModelRegistry(model_folder.parent.parent)  # the models directory holding it
    lengths, values = stack(files)
    n, steps = values.shape
    columns = [f"nab{i}" for i in range(n)]
    cadence_ns = round(manifest.cadence_s * 1_000_000_000)
    stamps = [T0_NS + t * cadence_ns for t in range(steps)]
    rows = backtest_frame(registry, manifest.name, stamps, values.T.tolist(), columns,
                          version=manifest.version, as_steps=True)
    if len(rows) != n * steps:
        raise RuntimeError(f"backtest returned {len(rows)} rows, expected {n * steps}")
    expected = np.array([np.nan if r.expected is None else r.expected for r in rows]).reshape(steps, n).T
    expected[np.arange(steps)[None, :] >= lengths[:, None]] = np.nan  # past each file's end
    return expected


def run_engine(files: Sequence[DataFile], model_folder: Path, config: LiveConfig | None = None) -> dict[str, np.ndarray]:
    """Anomaly scores (N,) per file, the forecasts coming from ``sensorcast backtest``."""
    expected = engine_forecasts(files, model_folder)
    lengths, values = stack(files)
    scorer = NabScorer(len(files), config)
    scores = np.zeros_like(values)
    for t in range(values.shape[1]):
        rows = np.nonzero(lengths > t)[0]
        scores[rows, t] = scorer.update(rows, values[rows, t], expected[rows, t])
    return {f.name: scores[i, : len(f.values)] for i, f in enumerate(files)}
