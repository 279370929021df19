"""The sensorcast detector on NAB, run on the service's own streaming components.

Every NAB file is one stream; all streams advance in lockstep, one batched ``step`` call
of the ONNX model per row index (as the engine does per tick), and each stream's scores
come from the service's scorers:

1. ``service.runtime.session.OrtRuntime``: the model's one-step forecast (state fed back);
2. ``service.anomaly.scoring.SpreadScorer``: the residual in units of the stream's own
   robust spread (anomalous residuals are kept out of the spread);
3. ``service.anomaly.peak.PeakRatio``: the short-window mean of that surprise against its
   slowly decaying past peak, so one threshold serves streams of any scale and noise;
4. ``service.anomaly.novelty.RangeNovelty``: a value beyond the stream's seen range.

The final score is the range novelty when it fires (0.9..1), else 0.9 x the peak ratio.
Online: row t's score uses rows 0..t only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.anomaly.novelty import RangeNovelty
from service.anomaly.peak import PeakRatio
from service.anomaly.scoring import SQRT_HALF_PI, SpreadScorer
from service.runtime.manifest import load_manifest
from service.runtime.session import OrtRuntime
from training.nab.corpus import DataFile


@dataclass(frozen=True, slots=True)
class LiveConfig:
    spread_alpha: float = 0.003  # ~300-step memory: NAB files are 1k-22k rows
    min_residuals: int = 20  # neutral score until the spread has seen this many residuals
    learn_below: float = 4.0  # residuals above this many spreads stay out of the baseline
    peak_window: int = 20
    peak_decay: float = 0.9999
    learning_steps: int = 300
    range_tolerance: float = 0.02
    range_floor: float = 0.9


def run_live(files: Sequence[DataFile], model_folder: Path, config: LiveConfig | None = None) -> dict[str, np.ndarray]:
    """Anomaly scores (N,) in [0, 1] for every file, through the ONNX model at ``model_folder``."""
    cfg = config or LiveConfig()
    manifest = load_manifest(model_folder)
    if manifest.kind != "step" or manifest.features != ["value"] or manifest.time_features:
        raise ValueError(f"{manifest.name}: NAB needs a univariate step model without time features")
    runtime = OrtRuntime(model_folder, manifest, threads=1)
    n = len(files)
    lengths = np.array([len(f.values) for f in files])
    values = np.full((n, int(lengths.max())), np.nan)  # (streams, T), NaN past each file's end
    for i, f in enumerate(files):
        values[i, : len(f.values)] = f.values

    spread = SpreadScorer(n_features=1, alpha=cfg.spread_alpha, min_residuals=cfg.min_residuals)
    peak = PeakRatio(cfg.peak_window, cfg.peak_decay, cfg.learning_steps)
    novelty = RangeNovelty(cfg.range_tolerance, cfg.learning_steps, cfg.range_floor)
    for scorer in (spread, peak, novelty):
        scorer.grow(n)
    state = np.zeros((n, manifest.state_size), np.float32)  # (B, S)
    expected = np.full((n, 1), np.nan)  # (B, 1): forecast of this step, made one step earlier
    scores = np.zeros_like(values)
    for t in range(values.shape[1]):
        rows = np.nonzero(lengths > t)[0]
        actual = values[rows, t : t + 1]  # (B, 1)
        # Surprise in spread units, squashed to [0, 1) so one huge residual cannot dominate.
        s = spread.spread(rows, None)[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(actual[:, 0] - expected[rows, 0]) / s
        z = np.where(np.isfinite(z), z, 0.0)
        raw = z / (1.0 + z)
        p = peak.update(rows, raw)
        nov = novelty.update(rows, actual[:, 0])
        scores[rows, t] = np.where(nov > 0, nov, cfg.range_floor * p)
        learn = rows[np.isfinite(expected[rows, 0]) & (z < cfg.learn_below * SQRT_HALF_PI)]
        if learn.size:
            spread.learn(learn, values[learn, t : t + 1], expected[learn])
        fc, _, state_out = runtime.step(actual.astype(np.float32), state[rows], None)
        state[rows] = state_out
        expected[rows] = fc[:, 0, :]  # (B, 1): the next step's forecast
    return {f.name: scores[i, : len(f.values)] for i, f in enumerate(files)}
