"""How much of the NAB score is tuning? Two-fold cross-validation over files.

The corpus is split into two halves (alternate files within each category). For each
half, the post-processing settings that score best on it are picked from a small grid,
and then scored on the *other* half, with NAB's protocol (one threshold optimised per
half). The held-out numbers estimate what the detector does on data it was not tuned on.

    python -m training.nab.crossval --data ../shared/data/nab
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.nab.corpus import load_corpus, load_profiles
from training.nab.live import LiveConfig, run_live
from training.nab.persistence import write_model
from training.nab.scoring import score_corpus

GRID = {
    "peak_window": (10, 20, 30),
    "peak_decay": (0.9999, 0.99995),
    "range_tolerance": (0.01, 0.02, 0.05),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/nab"))
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
    model = write_model(Path(tempfile.mkdtemp(prefix="nab-cv-")))
    keys = list(GRID)
    table = []  # (config, score on half 0, score on half 1)
    for values in itertools.product(*GRID.values()):
        cfg = replace(LiveConfig(), **dict(zip(keys, values, strict=True)))  # type: ignore[arg-type]
        scores = run_live(files, model, cfg)
        per_half = []
        for h in halves:
            sub = [files[i] for i in h]
            per_half.append(score_corpus(sub, {f.name: scores[f.name] for f in sub}, standard).score)
        table.append((dict(zip(keys, values, strict=True)), *per_half))
        print(f"{table[-1][0]}: half A {per_half[0]:.1f}, half B {per_half[1]:.1f}", flush=True)
    default = {k: getattr(LiveConfig(), k) for k in keys}
    for tune, test in ((1, 2), (2, 1)):
        best = max(table, key=lambda r: r[tune])
        dflt = next(r for r in table if r[0] == default)
        print(f"tuned on half {'AB'[tune - 1]}: {best[0]} -> {best[tune]:.1f} there, "
              f"{best[test]:.1f} on the held-out half (shipped defaults there: {dflt[test]:.1f}, "
              f"best possible there: {max(r[test] for r in table):.1f})")
    spread = np.array([r[1] + r[2] for r in table]) / 2
    print(f"mean over halves across the grid: min {spread.min():.1f}, median {np.median(spread):.1f}, max {spread.max():.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
