"""Detection rate, false alarm rate, equal-false-alarm thresholds and ROC AUC.

A sample is flagged when its statistic is strictly above the threshold. NaN statistics
(samples a detector did not score) are never flagged.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
BoolArr = npt.NDArray[np.bool_]


def threshold_at(normal: F64, far: float) -> float:
    """The smallest threshold at which at most ``far`` of the scored ``normal`` samples are above it."""
    seen = np.sort(normal[~np.isnan(normal)])
    if not len(seen):
        raise ValueError("no scored normal samples to set a threshold on")
    allowed = int(np.floor(far * len(seen)))  # samples that may lie above the threshold
    return float(seen[len(seen) - 1 - allowed])


def top_share(normal: F64) -> float:
    """Share of the scored ``normal`` samples tied at the top value: a saturated score. No
    threshold flags fewer than these (``threshold_at`` then flags none)."""
    seen = normal[~np.isnan(normal)]
    return float(np.mean(seen == seen.max())) if len(seen) else 0.0


def rate(flags: BoolArr) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def flagged(stat: F64, threshold: float) -> BoolArr:
    return np.nan_to_num(stat, nan=-np.inf) > threshold


def roc_auc(positive: F64, negative: F64) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney U); NaN = lowest."""
    pos = np.nan_to_num(positive, nan=-np.inf)
    neg = np.nan_to_num(negative, nan=-np.inf)
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))
