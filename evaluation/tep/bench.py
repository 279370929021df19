"""Tennessee Eastman benchmark: the product's alerts and score beside PCA's Q and T^2.

    python -m evaluation.tep [--data ../shared/data/tep] [--work DIR]     (make bench-tep)

Protocol (``../shared/data/README.md``): train on ``d00.dat`` only; in every
``dNN_te.dat`` samples 161..960 are faulty. FDR = fraction of those flagged; FAR =
fraction of ``d00_te.dat`` flagged (and of samples 1..160 of the fault files). Faults 3,
9 and 15 are nearly undetectable: means are over all 21 and over the 18 others.

- ``alerts``: the product's own decision, the stream's alert ``firing`` after a sample,
  with the engine's default settings (see ``product.bench_settings``).
- ``score``: the engine's anomaly score with the threshold set on ``d00_te.dat`` for
  1 % and 5 % FAR (equal false alarms for every detector), and its ROC AUC (faulty
  samples against ``d00_te.dat``).
- ``Q``, ``T2``: PCA on standardised ``d00.dat`` (``--components``), same thresholds rule.

Samples the engine has not scored yet (its warm-up, the first ``warmup_steps`` of every
file, each file being a fresh stream) are never flagged and are left out of FAR.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from evaluation.tep import data, pca
from evaluation.tep.metrics import flagged, rate, roc_auc, threshold_at, top_share
from evaluation.tep.product import ProductConfig, bench_settings, run_file, train_model
from service.runtime.registry import ModelRegistry

F64 = npt.NDArray[np.float64]
BoolArr = npt.NDArray[np.bool_]
FARS = (0.01, 0.05)


@dataclass(slots=True)
class Detector:
    """Per-file flags of one detector: ``flags[f]`` (960,) and which samples count (scored)."""

    name: str
    flags: dict[int, BoolArr] = field(default_factory=dict)
    scored: dict[int, BoolArr] = field(default_factory=dict)

    def fdr(self, f: int) -> float:
        return rate(self.flags[f][data.ONSET:])

    def far_normal(self) -> float:
        return rate(self.flags[0][self.scored[0]])

    def far_head(self, f: int) -> float:
        s = self.scored[f][: data.ONSET]
        return rate(self.flags[f][: data.ONSET][s])

    def far_heads(self) -> float:
        """Pooled over samples 1..160 of every fault file."""
        return rate(np.concatenate([self.flags[f][: data.ONSET][self.scored[f][: data.ONSET]] for f in data.FAULTS]))


def from_stats(name: str, stats: dict[int, F64], far: float) -> tuple[Detector, float]:
    """Flags at the threshold that gives ``far`` on d00_te."""
    thr = threshold_at(stats[0], far)
    d = Detector(name)
    for f, s in stats.items():
        d.flags[f] = flagged(s, thr)
        d.scored[f] = ~np.isnan(s)
    return d, thr


def add_arguments(p: argparse.ArgumentParser) -> None:
    product = ProductConfig()
    p.add_argument("--data", type=Path, default=data.default_dir(),
                   help="folder with d00.dat and dNN_te.dat (default: SENSORCAST_TEP_DIR, else ../shared/data/tep)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sensorcast-tep",
                   help="cache of the trained model and its training CSV (outside the repository)")
    p.add_argument("--retrain", action="store_true", help="train again even when the cached model fits")
    p.add_argument("--components", type=int, default=17, help="PCA components for Q and T^2")
    p.add_argument("--hidden", type=int, default=product.hidden)
    p.add_argument("--horizon", type=int, default=product.horizon)
    p.add_argument("--epochs", type=int, default=product.epochs)
    p.add_argument("--split", default=",".join(f"{v:g}" for v in product.split),
                   help="ends of train and validation as fractions of d00's rows (the rest: test; 1: none)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON result here")


def _mean(values: dict[int, float], faults: tuple[int, ...]) -> float:
    return float(np.mean([values[f] for f in faults]))


def run(args: argparse.Namespace) -> int:
    missing = data.check_dir(args.data)
    if missing:
        print(f"bench-tep: {missing}; pass --data or set SENSORCAST_TEP_DIR", file=sys.stderr)
        return 2
    train = data.load_train(args.data)
    tests = {f: data.load_test(args.data, f) for f in (0, *data.FAULTS)}
    try:
        tr_end, val_end = (float(v) for v in args.split.split(","))
    except ValueError:
        print(f"bench-tep: --split {args.split!r}: expected two fractions, e.g. 0.5,1", file=sys.stderr)
        return 2
    cfg = ProductConfig(hidden=args.hidden, horizon=args.horizon, epochs=args.epochs, split=(tr_end, val_end))
    t0 = time.perf_counter()
    trained = train_model(train, args.work, cfg, retrain=args.retrain)
    train_s = time.perf_counter() - t0
    registry = ModelRegistry(trained.models_dir)
    manifest = registry.get("tep", trained.version).manifest
    settings, overrides = bench_settings()
    t0 = time.perf_counter()
    replays = {f: run_file(registry, trained.version, x, settings) for f, x in tests.items()}
    replay_s = time.perf_counter() - t0

    alerts = Detector("alerts")
    for f, r in replays.items():
        alerts.flags[f] = r.firing
        alerts.scored[f] = ~np.isnan(r.score)
    score = {f: r.score for f, r in replays.items()}
    model = pca.fit(train, args.components)
    stats = {"score": score, "Q": {f: model.q(x) for f, x in tests.items()},
             "T2": {f: model.t2(x) for f, x in tests.items()}}
    columns: list[tuple[str, Detector]] = [("alerts", alerts)]
    thresholds: dict[str, float] = {}
    for name, st in stats.items():
        for far in FARS:
            det, thr = from_stats(f"{name}@{far:.0%}", st, far)
            columns.append((det.name, det))
            thresholds[det.name] = thr
    auc = {f: roc_auc(score[f][data.ONSET:], score[0]) for f in data.FAULTS}

    fdr = {name: {f: det.fdr(f) for f in data.FAULTS} for name, det in columns}
    head = f"{'fault':>8s}" + "".join(f"{n:>10s}" for n, _ in columns) + f"{'AUC':>7s}{'alertFAR':>9s}"
    val = manifest.metrics.get("val", {})
    print(f"TEP: model tep/{trained.version} ({manifest.cell}, hidden {manifest.hidden}, horizon {manifest.horizon}, "
          f"val MSE {val.get('mse', float('nan')):.3f} vs repeat-last {val.get('repeat_last_mse', float('nan')):.3f}, "
          f"warm-up {manifest.warmup_steps} steps), {'cached' if trained.cached else f'trained in {train_s:.0f} s'}; "
          f"replay of 22 files through backtest_frame {replay_s:.1f} s; settings overrides: {overrides or 'none'}")
    # The trainer's anomaly calibration (thresholds for a false-alarm rate), when it writes one.
    calib = getattr(manifest, "anomaly", None)
    calib_doc = None if calib is None else calib.model_dump(exclude={"precision"})
    print(f"anomaly calibration in the manifest: {calib_doc or 'none'}; "
          f"'score' columns rank by the engine's {replays[0].statistic}")
    print("FDR per fault (samples 161..960 flagged); AUC of the score; alertFAR = alerts on samples 1..160")
    print(head + "\n" + "-" * len(head))
    for f in data.FAULTS:
        mark = "*" if f in data.UNDETECTABLE else " "
        print(f"{f:>7d}{mark}" + "".join(f"{fdr[n][f]:10.3f}" for n, _ in columns)
              + f"{auc[f]:7.3f}{alerts.far_head(f):9.3f}")
    print("-" * len(head))
    for label, faults in (("mean21", data.FAULTS), ("mean18", data.DETECTABLE)):
        print(f"{label:>8s}" + "".join(f"{_mean(fdr[n], faults):10.3f}" for n, _ in columns)
              + f"{_mean(auc, faults):7.3f}")
    print(f"{'FAR00':>8s}" + "".join(f"{det.far_normal():10.3f}" for _, det in columns) + "   (d00_te)")
    print(f"{'FAR1-160':>8s}" + "".join(f"{det.far_heads():10.3f}" for _, det in columns) + "   (fault files)")
    print("* nearly undetectable (3, 9, 15): left out of mean18")
    top = top_share(score[0])
    if top > min(FARS):
        print(f"note: {top:.1%} of the scored d00_te samples share the top score {np.nanmax(score[0]):.17g}; "
              "a threshold cannot flag fewer than all of them, so the score columns flag nothing where the share "
              "exceeds their FAR")
    fault_fired = dict(sum((Counter(replays[f].fired) for f in data.FAULTS), Counter()))
    print(f"firing events (check/kind): d00_te {replays[0].fired or 'none'}; fault runs {fault_fired or 'none'}")

    doc = {
        "benchmark": "tep",
        "command": "python -m evaluation.tep " + " ".join(sys.argv[1:]),
        "model": {"version": trained.version, "cell": manifest.cell, "hidden": manifest.hidden,
                  "horizon": manifest.horizon, "warmup_steps": manifest.warmup_steps,
                  "default_threshold": manifest.default_threshold, "cached": trained.cached,
                  "train_seconds": round(train_s, 1)},
        "anomaly_calibration": calib_doc,
        "settings_overrides": overrides,
        "score_statistic": replays[0].statistic,
        "replay_seconds": round(replay_s, 1),
        "pca_components": args.components,
        "thresholds": {k: float(np.format_float_positional(v, 8)) for k, v in thresholds.items()},
        "fdr_mean18": {n: round(_mean(fdr[n], data.DETECTABLE), 4) for n, _ in columns},
        "fdr_mean21": {n: round(_mean(fdr[n], data.FAULTS), 4) for n, _ in columns},
        "far_d00_te": {n: round(det.far_normal(), 4) for n, det in columns},
        "far_fault_heads": {n: round(det.far_heads(), 4) for n, det in columns},
        "score_top_share_d00_te": round(top, 4),
        "auc_mean18": round(_mean(auc, data.DETECTABLE), 4),
        "auc_mean21": round(_mean(auc, data.FAULTS), 4),
        "firing_events": {"d00_te": replays[0].fired, "faults": fault_fired},
        "fdr": {n: {f: round(v, 4) for f, v in fdr[n].items()} for n, _ in columns},
        "auc": {f: round(v, 4) for f, v in auc.items()},
    }
    line = json.dumps(doc, separators=(",", ":"))
    print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.tep", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))
