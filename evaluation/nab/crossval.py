"""How much of the NAB score is tuning? Two-fold cross-validation over files.

The corpus is split into two halves (alternate files within each category). For each
half, the post-processing settings that score best on it are picked from a small grid,
and then scored on the *other* half, with NAB's protocol (one threshold optimised per
half). The held-out numbers estimate what the detector does on data it was not tuned on.

    python -m evaluation.nab.crossval --data ../shared/data/nab [--forecaster persistence]

The forecaster is the headline's GRU (``evaluation.nab.trained``: trained on the
probationary rows, which no half scores, so it is the same model for both halves; cached
under ``--work``) or the persistence model.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.nab.corpus import load_corpus, load_profiles
from evaluation.nab.live import LiveConfig, run_live
from evaluation.nab.persistence import write_model
from evaluation.nab.scoring import score_corpus
from evaluation.nab.trained import TrainConfig, train_model

GRID = {
    "peak_window": (10, 20, 30),
    "peak_decay": (0.9999, 0.99995),
    "range_tolerance": (0.01, 0.02, 0.05),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("SENSORCAST_NAB_DATA", "../shared/data/nab")))
    p.add_argument("--forecaster", choices=("gru", "persistence"), default="gru",
                   help="the trained GRU of the headline (default) or the persistence model")
    p.add_argument("--work", type=Path,
                   default=Path(os.environ.get("SENSORCAST_NAB_WORK", Path(tempfile.gettempdir()) / "sensorcast-nab")),
                   help="cache of the trained model, outside the repository")
    args = p.parse_args(argv)
    files = load_corpus(args.data)
    standard = load_profiles(args.data)["standard"]
    by_cat: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_cat.setdefault(f.category, []).append(i)
    halves: list[list[int]] = [[], []]
    for idx in by_cat.values():
        for k, i in enumerate(sorted(idx, key=lambda j: files[j].name)):
            halves[k % 2].append(i)
    if args.forecaster == "gru":
        model = train_model(files, args.work, TrainConfig()).folder
    else:
        model = write_model(Path(tempfile.mkdtemp(prefix="nab-cv-")))
    print(f"forecaster: {model}", flush=True)
    keys = list(GRID)
    configs: list[dict[str, float]] = []
    scores_by_half: list[list[float]] = [[], []]  # [half][config]
    for values in itertools.product(*GRID.values()):
        chosen = dict(zip(keys, values, strict=True))
        scores = run_live(files, model, replace(LiveConfig(), **chosen))  # type: ignore[arg-type]
        configs.append(chosen)
        for h, idx in enumerate(halves):
            sub = [files[i] for i in idx]
            scores_by_half[h].append(score_corpus(sub, {f.name: scores[f.name] for f in sub}, standard).score)
        print(f"{chosen}: half A {scores_by_half[0][-1]:.1f}, half B {scores_by_half[1][-1]:.1f}", flush=True)
    a_s, b_s = np.array(scores_by_half[0]), np.array(scores_by_half[1])
    default = configs.index({k: getattr(LiveConfig(), k) for k in keys})
    for name, tune, test in (("A", a_s, b_s), ("B", b_s, a_s)):
        k = int(np.argmax(tune))
        print(f"tuned on half {name}: {configs[k]} -> {tune[k]:.1f} there, {test[k]:.1f} on the held-out half "
              f"(shipped defaults there: {test[default]:.1f}, best possible there: {test.max():.1f})")
    mean = (a_s + b_s) / 2
    print(f"mean over halves across the grid: min {mean.min():.1f}, median {np.median(mean):.1f}, max {mean.max():.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
