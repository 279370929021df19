"""The sensorcast detector on NAB, run on the service's own streaming components.

Every NAB file is one stream; all streams advance in lockstep, one batched ``step`` call
of the ONNX model per row index (as the engine does per tick), and each stream's scores
come from the service's scorers:

1. ``service.runtime.session.OrtRuntime``: the model's one-step forecast (state fed back);
2. ``service.anomaly.scoring.SpreadScorer``: the residual in units of the stream's own
   robust spread (anomalous residuals are kept out of the spread);
3. ``service.anomaly.peak.PeakRatio``: the short-window mean of that surprise against its
   slowly decaying past peak, so one threshold serves streams of any scale and noise;
4. ``service.anomaly.novelty.RangeNovelty``: a value beyond the stream's seen range;
5. ``service.anomaly.edge.RisingEdge``: a score that is not above the stream's recent
   maximum is halved, so an incident's aftermath does not cross the threshold again.

The score is the range novelty when it fires (0.9..1), else 0.9 x the peak ratio, then
the rising-edge filter.
Online: row t's score uses rows 0..t only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.anomaly.edge import RisingEdge
from service.anomaly.novelty import RangeNovelty
from service.anomaly.peak import PeakRatio
from service.anomaly.scoring import SpreadScorer, z_for_score
from service.runtime.manifest import load_manifest
from service.runtime.session import OrtRuntime
from training.nab.corpus import DataFile

F64 = npt.NDArray[np.float64]
IntArr = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """Post-processing settings. Defaults were chosen on the NAB corpus itself (as every
    NAB entry's are); docs/nab.md lists the sensitivity of each."""

    spread_alpha: float = 0.003  # ~300-step memory of |residual| (the engine's 0.05 scored ~7 points lower)
    min_residuals: int = 20  # neutral score until the spread has seen this many residuals
    learn_below: float = 0.999  # residuals scoring >= this (two-sided normal tail) stay out of the spread
    squash: float = 1.0  # raw = z / (squash + z): bounded, so one huge residual cannot dominate
    peak_window: int = 20  # steps averaged before comparing with the past peak
    peak_decay: float = 0.9999  # per step: an old peak halves after ~7,000 steps (picked by training.nab.crossval)
    learning_steps: int = 200  # no peak or range verdicts before this many steps
    range_tolerance: float = 0.01  # excursions beyond 1% of the seen range count as novel
    range_floor: float = 0.9  # range novelty outranks every residual-based score
    use_peak: bool = True  # False (ablation): the squashed residual itself, no peak ratio
    edge_window: int = 50  # rising edge: damp scores not above the last 50 (0: off)
    edge_damp: float = 0.5
    use_model_scale: bool = False  # probabilistic models: z in units of the predicted spread


class NabScorer:
    """Steps 2-4 above for B streams: (actual, expected) per step -> NAB anomaly score."""

    def __init__(self, n_streams: int, config: LiveConfig | None = None) -> None:
        cfg = self.config = config or LiveConfig()
        self.spread = SpreadScorer(n_features=1, alpha=cfg.spread_alpha, min_residuals=cfg.min_residuals)
        self.peak = PeakRatio(cfg.peak_window, cfg.peak_decay, cfg.learning_steps)
        self.novelty = RangeNovelty(cfg.range_tolerance, cfg.learning_steps, cfg.range_floor)
        self.edge = RisingEdge(max(cfg.edge_window, 1), cfg.edge_damp)
        for scorer in (self.spread, self.peak, self.novelty, self.edge):
            scorer.grow(n_streams)
        self._learn_z = z_for_score(cfg.learn_below)

    def update(self, rows: IntArr, actual: F64, expected: F64, scale: F64 | None = None) -> F64:
        """rows (B,), actual (B,), expected (B,) (NaN: no forecast yet) -> scores (B,) in [0, 1].

        ``scale`` (B,): the model's predicted spread for this step, used instead of the
        learnt residual spread when given (probabilistic models)."""
        cfg = self.config
        s = self.spread.spread(rows, None)[:, 0]  # (B,) residual sigma, NaN until learnt
        if scale is not None:
            s = np.where(np.isfinite(scale) & (scale > 0), scale, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(actual - expected) / s
        z = np.where(np.isfinite(z), z, 0.0)
        # Surprise squashed to [0, 1): one huge residual cannot dominate the peak.
        raw = z / (cfg.squash + z)
        p = self.peak.update(rows, raw) if cfg.use_peak else raw
        nov = self.novelty.update(rows, actual)
        learn = np.isfinite(expected) & np.isfinite(actual) & (z < self._learn_z)
        if learn.any():
            self.spread.learn(rows[learn], actual[learn, None], expected[learn, None])
        out: F64 = np.where(nov > 0, nov, cfg.range_floor * p)
        if cfg.edge_window > 0:
            out = self.edge.update(rows, out)
        return out


def stack(files: Sequence[DataFile]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths (B,), values (B, T) with NaN past each file's end)."""
    lengths = np.array([len(f.values) for f in files])
    values = np.full((len(files), int(lengths.max())), np.nan)
    for i, f in enumerate(files):
        values[i, : len(f.values)] = f.values
    return lengths, values


def run_live(files: Sequence[DataFile], model_folder: Path, config: LiveConfig | None = None) -> dict[str, np.ndarray]:
    """Anomaly scores (N,) in [0, 1] for every file, through the ONNX model at ``model_folder``."""
    manifest = load_manifest(model_folder)
    if manifest.kind != "step" or manifest.features != ["value"] or manifest.time_features:
        raise ValueError(f"{manifest.name}: NAB needs a univariate step model without time features")
    runtime = OrtRuntime(model_folder, manifest, threads=1)
    lengths, values = stack(files)
    n = len(files)
    scorer = NabScorer(n, config)
    state = np.zeros((n, manifest.state_size), np.float32)  # (B, S)
    expected = np.full(n, np.nan)  # (B,): forecast of this step, made one step earlier
    spread = np.full(n, np.nan)  # (B,): the model's predicted spread for it (NaN: none)
    use_scale = scorer.config.use_model_scale and manifest.probabilistic
    scores = np.zeros_like(values)
    for t in range(values.shape[1]):
        rows = np.nonzero(lengths > t)[0]
        actual = values[rows, t]  # (B,)
        scores[rows, t] = scorer.update(rows, actual, expected[rows], spread[rows] if use_scale else None)
        fc, sc, state_out = runtime.step(actual[:, None].astype(np.float32), state[rows], None)
        state[rows] = state_out
        expected[rows] = fc[:, 0, 0]  # (B,): the next step's forecast
        if sc is not None:
            spread[rows] = sc[:, 0, 0]
    return {f.name: scores[i, : len(f.values)] for i, f in enumerate(files)}
