"""NAB through the service's inference engine (``service.streams.engine.Engine``).

Each NAB file becomes a stream ``nab<i>/value``; row ``i`` of every file is published as a
``Reading`` at ``t0 + i * cadence`` and the engine ticks once per row index, exactly as
the live service does: routing by binding, resampling onto the model's cadence, the
batched state table, one ONNX ``step`` per tick for all streams. The engine's forecast for
each step (``StreamStatus.expected``) then feeds the same NAB post-processing as
``training.nab.live`` (``NabScorer``).

Rows are fed on a regular clock because NAB scores *rows*: a handful of files have
irregular timestamps, which the resampler would merge or bridge, breaking the row
correspondence the labels rely on.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.config import ModelsSettings, Settings, StreamsSettings
from service.metrics import Metrics
from service.records import NS_PER_S, Reading, StreamKey
from service.runtime.manifest import load_manifest
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from training.nab.corpus import DataFile
from training.nab.live import LiveConfig, NabScorer, stack

T0_S = 1_600_000_200  # any cadence-aligned start: NAB rows are fed on a synthetic clock


def run_engine(files: Sequence[DataFile], model_folder: Path, config: LiveConfig | None = None) -> dict[str, np.ndarray]:
    """Anomaly scores (N,) per file, the forecasts coming from a real ``Engine``."""
    manifest = load_manifest(model_folder)
    cadence_ns = round(manifest.cadence_s * NS_PER_S)
    t0 = (T0_S * NS_PER_S // cadence_ns) * cadence_ns
    with tempfile.TemporaryDirectory(prefix="nab-engine-") as tmp:
        # The engine serves every model under its models directory: give it just this one.
        models = Path(tmp) / "models"
        shutil.copytree(model_folder, models / manifest.name / manifest.version)
        settings = Settings(
            models=ModelsSettings(dir=models, watch=False),  # type: ignore[call-arg]
            streams=StreamsSettings(checkpoint_dir=Path(tmp) / "state"),  # type: ignore[call-arg]
        )
        engine = Engine(settings, ModelRegistry(models), store=None, metrics=Metrics())
        lengths, values = stack(files)
        n = len(files)
        keys = [StreamKey(f"nab{i}", "value") for i in range(n)]
        scorer = NabScorer(n, config)
        scores = np.zeros_like(values)
        for t in range(values.shape[1]):
            ts = t0 + t * cadence_ns
            rows = np.nonzero(lengths > t)[0]
            engine.accept([Reading(keys[i], ts, float(values[i, t])) for i in rows.tolist()])
            engine.tick(ts)  # the bucket ending at ts is due
            expected = np.full(len(rows), np.nan)
            for j, i in enumerate(rows.tolist()):
                st = engine.stream(keys[i].id)
                if st is not None and st.last_ts_ns == ts and st.expected is not None:
                    expected[j] = st.expected
            scores[rows, t] = scorer.update(rows, values[rows, t], expected)
        engine.close()
    return {f.name: scores[i, : len(f.values)] for i, f in enumerate(files)}


