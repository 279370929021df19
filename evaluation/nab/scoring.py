"""NAB scoring, written from the paper (Lavin & Ahmad 2015) and the protocol.

Per file, every row after the probationary period gets a *sweep weight*: what a detection
there would earn or cost.

- Inside a labelled window of width W (rows ``left..right``), the row ``i`` sits at
  relative position ``p = -(right - i + 1) / W`` (-1 at the window's first row, -1/W at
  its last) and earns ``tp * sigma(p) / sigma(-1)``, where
  ``sigma(p) = 2 / (1 + exp(5 p)) - 1`` is NAB's scaled sigmoid: the first row of a window
  earns exactly ``tp``, later rows less.
- Outside windows a detection costs ``fp * sigma(p)`` with ``p`` the distance past the
  previous window's end in units of that window's width minus one (so a detection just
  after a window costs little) and ``-fp`` before the first window or 3+ widths past one.
- Each window counts once: its best (earliest) detection, or ``-fn`` when missed.

A detector's score at threshold ``t`` treats rows with ``anomaly_score >= t`` as
detections. One threshold per detector and profile is chosen to maximise the score
summed over the whole corpus. The raw score is normalised so the null detector (never
fires) scores 0 and a perfect one (fires on every window's first row) scores 100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation.nab.corpus import CostProfile, DataFile, probation_length

OUTSIDE = -1  # window id of rows outside every window


def scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    """NAB's reward curve: ~+0.987 at -1, 0 at 0, ~-0.987 at +1, exactly -1 from +3 on."""
    p = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * p)) - 1.0
    return np.where(p >= 3.0, -1.0, val)


MAX_TP = float(scaled_sigmoid(np.array(-1.0)))  # reward of a window's first row, before scaling to tp


def window_rows(timestamps: np.ndarray, windows: Sequence[tuple[np.datetime64, np.datetime64]]) -> list[tuple[int, int]]:
    """Inclusive row ranges ``(left, right)`` of each window; windows holding no row are dropped."""
    out = []
    for start, end in windows:
        left = int(np.searchsorted(timestamps, start, side="left"))
        right = int(np.searchsorted(timestamps, end, side="right")) - 1
        if left <= right:
            out.append((left, right))
    return out


def sweep_weights(n_rows: int, rows: Sequence[tuple[int, int]], profile: CostProfile) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (weight, window index or OUTSIDE) for one file, probation not yet removed."""
    weight = np.empty(n_rows, dtype=np.float64)
    window = np.full(n_rows, OUTSIDE, dtype=np.int64)
    cursor = 0
    prev_right: int | None = None
    prev_width = 0

    def outside(lo: int, hi: int) -> None:
        if lo >= hi:
            return
        if prev_right is None or prev_width <= 1:
            # Before any window (or after a one-row window, whose width gives no scale): full cost.
            weight[lo:hi] = -profile.fp
            return
        pos = (np.arange(lo, hi) - prev_right) / float(prev_width - 1)
        weight[lo:hi] = scaled_sigmoid(pos) * profile.fp

    for k, (left, right) in enumerate(rows):
        outside(cursor, left)
        width = right - left + 1
        i = np.arange(left, right + 1)
        weight[left : right + 1] = scaled_sigmoid(-(right - i + 1) / width) * profile.tp / MAX_TP
        window[left : right + 1] = k
        prev_right, prev_width, cursor = right, width, right + 1
    outside(cursor, n_rows)
    return weight, window


@dataclass(frozen=True, slots=True)
class Sweep:
    """The scorable rows of a set of files: anomaly score, sweep weight, global window id."""

    scores: np.ndarray  # (M,)
    weights: np.ndarray  # (M,)
    window: np.ndarray  # (M,) OUTSIDE or a corpus-wide window id
    file_of_row: np.ndarray  # (M,) index into ``files``
    files: tuple[str, ...]
    n_windows: int


def build_sweep(
    files: Sequence[DataFile], scores: Mapping[str, np.ndarray], profile: CostProfile
) -> Sweep:
    """Concatenate every file's post-probation rows into one sweep."""
    parts_s, parts_w, parts_g, parts_f = [], [], [], []
    next_id = 0
    for fi, f in enumerate(files):
        s = np.asarray(scores[f.name], dtype=np.float64)
        if s.shape != f.values.shape:
            raise ValueError(f"{f.name}: {s.shape[0]} scores for {f.values.shape[0]} rows")
        if np.isnan(s).any() or (s < 0).any() or (s > 1).any():
            raise ValueError(f"{f.name}: anomaly scores must lie in [0, 1] with no NaN")
        rows = window_rows(f.timestamps, f.windows)
        w, g = sweep_weights(len(s), rows, profile)
        keep = slice(probation_length(len(s)), None)
        g = g[keep]
        # Renumber the windows that survive probation to corpus-wide ids.
        present = np.unique(g[g != OUTSIDE])
        remap = np.full(len(rows) + 1, OUTSIDE, dtype=np.int64)
        remap[present] = np.arange(next_id, next_id + len(present))
        next_id += len(present)
        parts_s.append(s[keep])
        parts_w.append(w[keep])
        parts_g.append(np.where(g == OUTSIDE, OUTSIDE, remap[g]))
        parts_f.append(np.full(len(g), fi, dtype=np.int64))
    cat = np.concatenate
    return Sweep(cat(parts_s), cat(parts_w), cat(parts_g), cat(parts_f), tuple(f.name for f in files), next_id)


def threshold_curve(sweep: Sweep, profile: CostProfile) -> tuple[np.ndarray, np.ndarray]:
    """Score at every distinct threshold, highest threshold first.

    The first entry (threshold +inf) detects nothing: every window missed.
    """
    order = np.argsort(-sweep.scores, kind="stable")
    s = sweep.scores[order]
    w = sweep.weights[order]
    g = sweep.window[order]
    # What lowering the threshold past each row adds: its FP weight outside windows; inside
    # a window, how much it raises that window's best reward so far (each window counts once).
    gain = np.where(g == OUTSIDE, w, 0.0)
    in_win = np.nonzero(g != OUTSIDE)[0]
    by_window = in_win[np.argsort(g[in_win], kind="stable")]  # grouped by window, in sweep order
    bounds = np.nonzero(np.diff(g[by_window]))[0] + 1
    for grp in np.split(by_window, bounds):
        if len(grp) == 0:
            continue
        best = np.maximum.accumulate(np.concatenate(([-profile.fn], w[grp])))
        gain[grp] = np.diff(best)
    total = -profile.fn * sweep.n_windows + np.cumsum(gain)
    ends = np.append(np.nonzero(np.diff(s))[0], len(s) - 1) if len(s) else np.array([], dtype=np.int64)
    thresholds = np.concatenate(([np.inf], s[ends]))
    totals = np.concatenate(([-profile.fn * sweep.n_windows], total[ends]))
    return thresholds, totals


@dataclass(frozen=True, slots=True)
class FileScore:
    score: float
    detected_windows: int
    missed_windows: int
    fp_rows: int


def score_at(sweep: Sweep, profile: CostProfile, threshold: float) -> dict[str, FileScore]:
    """Each file's raw score and counts when rows with ``score >= threshold`` are detections."""
    hit = sweep.scores >= threshold
    out = {}
    for fi, name in enumerate(sweep.files):
        m = sweep.file_of_row == fi
        g, w, h = sweep.window[m], sweep.weights[m], hit[m]
        fp_mask = h & (g == OUTSIDE)
        score = float(w[fp_mask].sum())
        detected = missed = 0
        for win in np.unique(g[g != OUTSIDE]):
            wm = (g == win) & h
            if wm.any():
                score += float(w[wm].max())
                detected += 1
            else:
                score -= profile.fn
                missed += 1
        out[name] = FileScore(score, detected, missed, int(fp_mask.sum()))
    return out


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """A detector's result under one profile, with the numbers that normalise it."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float  # normalised: null 0, perfect 100
    detected_windows: int
    missed_windows: int
    fp_rows: int
    per_file: dict[str, FileScore] = field(default_factory=dict)


def best_threshold(sweep: Sweep, profile: CostProfile) -> tuple[float, float]:
    """(threshold, raw score) maximising the corpus score; ties go to the higher threshold."""
    thresholds, totals = threshold_curve(sweep, profile)
    k = int(np.argmax(totals))
    return float(thresholds[k]), float(totals[k])


def score_corpus(
    files: Sequence[DataFile], scores: Mapping[str, np.ndarray], profile: CostProfile
) -> ProfileResult:
    """Optimise one threshold over the corpus and normalise against null and perfect."""
    sweep = build_sweep(files, scores, profile)
    threshold, raw = best_threshold(sweep, profile)
    # The null detector, scored the same way: a constant score, so either nothing or
    # everything is detected; its best is normally "nothing" (every window missed).
    null_sweep = Sweep(np.full_like(sweep.scores, 0.5), sweep.weights, sweep.window,
                       sweep.file_of_row, sweep.files, sweep.n_windows)
    _, null = best_threshold(null_sweep, profile)
    perfect = profile.tp * sweep.n_windows
    per_file = score_at(sweep, profile, threshold)
    norm = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
    return ProfileResult(
        profile=profile.name,
        threshold=threshold,
        raw=raw,
        null=null,
        perfect=perfect,
        score=norm,
        detected_windows=sum(f.detected_windows for f in per_file.values()),
        missed_windows=sum(f.missed_windows for f in per_file.values()),
        fp_rows=sum(f.fp_rows for f in per_file.values()),
        per_file=per_file,
    )
