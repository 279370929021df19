"""NAB benchmark: run detectors over all 58 files, write NAB result files, score them.

    python -m evaluation.nab --data ../shared/data/nab          (make bench-nab)

Detectors: ``sensorcast`` (the headline: a GRU trained by ``sensorcast train`` on the
probationary rows of every file, ``evaluation.nab.trained``, served by the service's
inference engine and scored by the engine itself with ``anomaly.scorer="surprise"``; see
``evaluation.nab.engine_run``; ``--path direct`` runs the same scorer straight off the ONNX
runtime, ``evaluation.nab.live``), ``persistence`` (the same through the engine with the
persistence forecaster), ``evidence`` (the trained GRU with the default ``evidence`` scorer,
its score column), ``windowed_gaussian`` (NAB's baseline, to cross-check the scorer against
its published 39.6) and ``gaussian_likelihood`` (persistence residual + a Numenta-style
Gaussian anomaly likelihood, the post-processing sensorcast did not pick).
Scores are normalised NAB scores (null detector 0, perfect 100) under the three profiles,
printed beside the published scoreboard and written to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from evaluation.nab.corpus import PROFILES, load_corpus, load_profiles
from evaluation.nab.detectors import ResidualConfig, ResidualDetector, windowed_gaussian
from evaluation.nab.engine_run import evidence_rank, evidence_settings, run_engine
from evaluation.nab.likelihood import LikelihoodConfig
from evaluation.nab.live import LiveConfig, run_live
from evaluation.nab.persistence import write_model
from evaluation.nab.run import DetectorRun, run_detector, score_run, write_results
from evaluation.nab.scoring import ProfileResult
from evaluation.nab.trained import TrainConfig, train_model

# Published standard / low-FP / low-FN scores (NAB scoreboard, v1.1 data).
SCOREBOARD = {
    "ARTime": (74.9, 65.1, 80.4),
    "Numenta HTM": (70.5, 62.6, 75.2),
    "CAD OSE": (69.9, 67.0, 73.2),
    "KNN CAD": (58.0, 43.4, 64.8),
    "Random Cut Forest": (51.7, 38.4, 59.7),
    "Twitter ADVec": (47.1, 33.6, 53.5),
    "Windowed Gaussian": (39.6, 20.9, 47.4),
    "Random": (11.0, 1.2, 19.5),
}
DETECTORS = ("sensorcast", "persistence", "evidence", "windowed_gaussian", "gaussian_likelihood")
DEFAULT_DETECTORS = ("sensorcast", "persistence", "windowed_gaussian")
# Ablations of sensorcast (direct runtime path, same model): what each part is worth.
ABLATIONS = {
    "no_range_novelty": {"range_tolerance": 1e12},
    "no_rising_edge": {"edge_window": 0},
    "no_peak_ratio": {"use_peak": False},
    "engine_spread_defaults": {"spread_alpha": 0.05, "learn_below": 0.99, "min_residuals": 10},
    "model_scale": {"use_model_scale": True},  # probabilistic --model only
}
SHORT = {"standard": "standard", "reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path(os.environ.get("SENSORCAST_NAB_DATA", "../shared/data/nab")),
                   help="NAB folder with data/, labels/ and profiles.json")
    p.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS),
                   help=f"comma-separated subset of {DETECTORS} and ablations {tuple(ABLATIONS)}")
    p.add_argument("--files", default="", help="comma-separated file names (default: all 58)")
    p.add_argument("--model", type=Path, default=None,
                   help="ONNX step model folder for 'sensorcast' (default: the GRU trained on the probationary rows)")
    p.add_argument("--work", type=Path,
                   default=Path(os.environ.get("SENSORCAST_NAB_WORK", Path(tempfile.gettempdir()) / "sensorcast-nab")),
                   help="cache of the trained model, outside the repository (env SENSORCAST_NAB_WORK)")
    p.add_argument("--retrain", action="store_true", help="train the GRU again even when a cached one matches")
    p.add_argument("--path", choices=("engine", "direct"), default="engine",
                   help="sensorcast forecasts from the full Engine (default) or straight from the ONNX runtime")
    p.add_argument("--results", type=Path, default=Path("var/nab/results"), help="where NAB result files go")
    p.add_argument("--json", type=Path, default=None, help="write machine-readable scores here (e.g. docs/results/nab.json)")


def _run(name: str, files: list, profiles: dict, model: Path, persistence: Path, path: str) -> DetectorRun:  # type: ignore[type-arg]
    if name in ("sensorcast", "persistence"):
        t0 = time.perf_counter()
        m = model if name == "sensorcast" else persistence
        # engine: the engine's own score column (anomaly.scorer="surprise"); direct: the same
        # scorer fed straight from the ONNX runtime, for cross-checking.
        scores = run_engine(files, m) if path == "engine" else run_live(files, m, LiveConfig())
        return score_run(name, scores, time.perf_counter() - t0, files, profiles)
    if name == "evidence":
        t0 = time.perf_counter()
        scores = run_engine(files, model, evidence_settings(), transform=evidence_rank)
        return score_run(name, scores, time.perf_counter() - t0, files, profiles)
    if name in ABLATIONS:
        t0 = time.perf_counter()
        scores = run_live(files, model, replace(LiveConfig(), **ABLATIONS[name]))  # type: ignore[arg-type]
        return score_run(name, scores, time.perf_counter() - t0, files, profiles)
    if name == "windowed_gaussian":
        return run_detector(name, windowed_gaussian, files, profiles)
    if name == "gaussian_likelihood":
        cfg = replace(ResidualConfig(), spatial_tolerance=None, likelihood=LikelihoodConfig())
        return run_detector(name, ResidualDetector(config=cfg), files, profiles)
    raise SystemExit(f"unknown detector {name!r}; expected one of {DETECTORS} or {tuple(ABLATIONS)}")


def _per_category(res: ProfileResult) -> dict[str, dict[str, float]]:
    """Raw score and counts per NAB category at the corpus threshold."""
    out: dict[str, dict[str, float]] = {}
    for name, fs in res.per_file.items():
        c = out.setdefault(name.split("/", 1)[0], {"raw": 0.0, "windows_detected": 0, "windows_missed": 0,
                                                   "false_positive_rows": 0})
        c["raw"] += fs.score
        c["windows_detected"] += fs.detected_windows
        c["windows_missed"] += fs.missed_windows
        c["false_positive_rows"] += fs.fp_rows
    for c in out.values():
        c["raw"] = round(c["raw"], 4)
    return dict(sorted(out.items()))


def run(args: argparse.Namespace) -> int:
    root: Path = args.data
    if not (root / "labels" / "combined_windows.json").is_file():
        print(f"bench-nab: no NAB corpus at {root} (expected labels/combined_windows.json)", file=sys.stderr)
        return 2
    only = [s for s in args.files.split(",") if s] or None
    files = load_corpus(root, only)
    profiles = load_profiles(root)
    profiles = {p: profiles[p] for p in PROFILES if p in profiles}
    names = [d for d in args.detectors.split(",") if d]
    n_rows = sum(len(f.values) for f in files)
    print(f"NAB: {len(files)} files, {n_rows} rows, {sum(len(f.windows) for f in files)} windows")
    persistence = write_model(Path(tempfile.mkdtemp(prefix="nab-model-")))
    model = args.model
    if model is None and any(n in ("sensorcast", "evidence", *ABLATIONS) for n in names):
        # Trained on every file's probationary rows: the whole corpus, also for --files.
        every = files if only is None else load_corpus(root)
        t0 = time.perf_counter()
        trained = train_model(every, args.work, TrainConfig(), retrain=args.retrain)
        model = trained.folder
        how = "cached" if trained.cached else f"trained in {time.perf_counter() - t0:.0f} s"
        print(f"model {model} ({how}; sensorcast train on the probationary rows of {len(every)} files)")
        if trained.log:
            print(trained.log.rstrip())
        described = f"{model.parent.name}/{model.name} (evaluation/nab/trained.py, {json.dumps(asdict(TrainConfig()))})"
    else:
        described = str(model) if model is not None else "none"
    model = model or persistence
    print(f"sensorcast path: {args.path}")
    runs = []
    for name in names:
        r = _run(name, files, profiles, model, persistence, args.path)
        out = write_results(r, files, args.results, profiles)
        runs.append(r)
        print(f"  {name}: {r.seconds:.1f} s ({n_rows / max(r.seconds, 1e-9):,.0f} rows/s), results in {out}")

    head = f"{'detector':32s}" + "".join(f"{SHORT[p]:>10s}" for p in profiles)
    print("\n" + head + "\n" + "-" * len(head))
    for r in runs:
        print(f"{r.name + ' (ours)':32s}" + "".join(f"{r.results[p].score:10.1f}" for p in profiles))
    if only is None:
        for name, vals in SCOREBOARD.items():
            print(f"{name + ' (published)':32s}" + "".join(f"{v:10.1f}" for v in vals))
    else:
        print("(subset of files: not comparable with the published scoreboard)")
    for r in runs:
        s = r.results["standard"]
        print(f"{r.name}: standard threshold {s.threshold:.4f}, windows detected {s.detected_windows}"
              f"/{s.detected_windows + s.missed_windows}, false-positive rows {s.fp_rows}")

    if args.json is not None:
        doc = {
            "benchmark": "NAB v1.1 corpus, own scorer (evaluation/nab/scoring.py)",
            "command": "python -m evaluation.nab " + " ".join(sys.argv[1:]),
            "sensorcast_path": args.path,
            "model": described,
            "persistence": "nab-persistence/1 (evaluation/nab/persistence.py)",
            "files": len(files),
            "rows": n_rows,
            "windows": sum(len(f.windows) for f in files),
            "detectors": {
                r.name: {
                    "seconds": round(r.seconds, 2),
                    **{p: {
                        "score": round(res.score, 2),
                        "raw": round(res.raw, 4),
                        "threshold": float(np.round(res.threshold, 6)),
                        "windows_detected": res.detected_windows,
                        "windows_missed": res.missed_windows,
                        "false_positive_rows": res.fp_rows,
                        "per_category": _per_category(res),
                    } for p, res in r.results.items()},
                } for r in runs
            },
            "published": {k: dict(zip(profiles, v, strict=True)) for k, v in SCOREBOARD.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.nab", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
