"""Per-cell inference cost: every step cell the trainer builds, at 10k streams, in one run.

``python -m training.bench_cells`` (run by ``make bench-inference`` after the kit-model
benchmark). For each cell in ``STEP_CELLS`` a StepNet (2 layers x 64, horizon 12, one
feature, fixed scaling, no lags) with random weights is exported as the trainer exports
(``to_onnx``, plus the sequence form) and timed through the service's own code:

- ``full``: the engine's ``accept`` + ``tick`` per stream-step (tools/bench/inference.py);
- ``onnx``: the bare step graph on the same rows in calls of 512 (the floor);
- ``seq``: warm-up of the streams over 150 steps with the sequence form (per stream-step),
  and a 2,000-step ``predict`` with it and with a call per step; ``form``: native (the
  recurrence in one ONNX RNN op, tools/seqnative.py) or scan (an ONNX Scan over the step).

CPU time of this thread (one ORT thread). Lives in training/ because building the cells
needs torch, which tools/ may not import.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from service.config import Settings
from service.runtime.manifest import DataRange, Manifest, sha256_file
from service.runtime.registry import ModelRegistry
from tools.bench import sequence
from tools.bench.inference import bench_full
from tools.seqform import ship_sequence
from training.config import STEP_CELLS, ModelConfig
from training.export import to_onnx
from training.nets import StepNet

_clock = time.thread_time


def _export(models: Path, cell: str, hidden: int, layers: int) -> None:
    net = StepNet(ModelConfig(cell=cell, hidden=hidden, layers=layers, horizon=12, dropout=0.0), 1, 0, [0.0], [1.0])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    net.trained = True  # type: ignore[assignment]
    folder = models / "cell" / "1"
    folder.mkdir(parents=True)
    to_onnx(net, folder / "model.onnx")
    m = Manifest(name="cell", version="1", kind="step", cell=cell, layers=layers, hidden=hidden,
                 state_size=net.state_size, features=["value"], output_features=["value"], cadence_s=60.0,
                 horizon=12, warmup_steps=4, probabilistic=True, data=DataRange(source="random weights"),
                 sha256=sha256_file(folder / "model.onnx"), created_at=datetime.now(UTC))
    (folder / "manifest.json").write_text(json.dumps(m.model_dump(mode="json"), indent=2))
    ship_sequence(folder)


def _onnx_us(registry: ModelRegistry, n: int, chunk: int, reps: int = 5) -> float:
    rt = registry.get("cell").runtime
    s = registry.get("cell").manifest.state_size
    x = np.random.default_rng(1).standard_normal((n, 1)).astype(np.float32)
    state = np.zeros((n, s), np.float32)
    times = []
    for _ in range(reps + 1):
        t0 = _clock()
        for lo in range(0, n, chunk):
            _, _, state[lo : lo + chunk] = rt.step(x[lo : lo + chunk], state[lo : lo + chunk], None)
        times.append(_clock() - t0)
    return float(np.median(times[1:])) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.bench_cells", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--ticks", type=int, default=10, help="Measured engine ticks per cell.")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cells", default=",".join(STEP_CELLS), help="Comma-separated cells (default: every step cell).")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from service.streams.table import MAX_CALL_BATCH

    n = args.streams
    print(f"per-cell cost at {n:,} streams: StepNet {args.layers}x{args.hidden}, horizon 12, one feature, random "
          f"weights; us per stream-step (CPU time, 1 ORT thread, calls of {MAX_CALL_BATCH} rows)")
    print(f"{'cell':>18} {'state':>6} {'form':>6} {'full us':>8} {'onnx us':>8} {'seq warm-up us':>15} "
          f"{'predict 2k seq ms':>18} {'predict 2k step ms':>19}")
    for cell in [c for c in args.cells.split(",") if c]:
        with tempfile.TemporaryDirectory() as tmp:
            models = Path(tmp) / "models"
            try:
                _export(models, cell, args.hidden, args.layers)
            except (ValueError, TypeError) as e:  # e.g. a grid cell needs a grid shape
                print(f"{cell:>18} skipped: {e}")
                continue
            settings = Settings.model_validate({
                "models": {"dir": str(models), "threads": 1, "watch": False},
                "streams": {"checkpoint_dir": str(Path(tmp) / "state")},
            })
            reg = ModelRegistry(models)
            loaded = reg.get("cell")
            onnx_us = _onnx_us(reg, n, MAX_CALL_BATCH)
            full_us, _, _ = bench_full(settings, reg, n, args.ticks)
            warm_s = sequence.warmup_s(loaded.runtime, n, 150, MAX_CALL_BATCH)
            p_seq, p_step = sequence.predict_pair(loaded, 2_000)
            form = getattr(loaded.runtime, "sequence_form", "?")  # native (one RNN op) | scan
            print(f"{cell:>18} {loaded.manifest.state_size:>6} {form:>6} {full_us:>8.2f} {onnx_us:>8.2f} "
                  f"{warm_s / (n * 150) * 1e6:>15.2f} {p_seq:>18.1f} {p_step:>19.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
