"""The sensorcast detector on NAB, run on the service's own streaming components.

Every NAB file is one stream; all streams advance in lockstep, one batched ``step`` call
of the ONNX model per row index (as the engine does per tick), and each stream's scores
come from the service's scorers:

1. ``service.runtime.session.OrtRuntime``: the model's one-step forecast (state fed back);

then ``service.anomaly.surprise.SurpriseScorer``:

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

from evaluation.nab.corpus import DataFile
from service.anomaly.surprise import SurpriseConfig, SurpriseScorer
from service.runtime.manifest import load_manifest
from service.runtime.session import OrtRuntime

F64 = npt.NDArray[np.float64]
IntArr = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class LiveConfig(SurpriseConfig):
    """The service's surprise-score settings plus what only the NAB runner decides."""

    use_model_scale: bool = False  # probabilistic models: z in units of the predicted spread


class NabScorer(SurpriseScorer):
    """``service.anomaly.surprise.SurpriseScorer`` sized for B streams."""

    config: LiveConfig

    def __init__(self, n_streams: int, config: LiveConfig | None = None) -> None:
        super().__init__(config or LiveConfig())
        self.grow(n_streams)


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
