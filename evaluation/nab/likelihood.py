"""Anomaly likelihood: how unusual a stream's *recent* raw scores are against its own past.

A raw anomaly score (a forecast residual in spread units, say) means different things on
different streams: a noisy stream throws large residuals all day. Following the idea of
Numenta's anomaly likelihood (Ahmad et al. 2017), each stream keeps a long history of the
short-window average of its raw scores, fits a normal distribution to it, and reports the
tail probability of the current short-window average. The output is comparable across
streams, so one threshold can serve a whole fleet.

Online and per stream: ``update(raw)`` uses only scores seen so far. Until
``learning_steps`` scores have been seen it answers a neutral 0.5 (river's grace period).

>>> lk = AnomalyLikelihood(LikelihoodConfig(learning_steps=50, short_window=5))
>>> quiet = [lk.update(0.1 + 0.01 * (i % 3)) for i in range(200)]
>>> quiet[0], round(max(quiet[60:]), 2) < 0.99
(0.5, True)
>>> lk.update(5.0) > 0.999
True
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class LikelihoodConfig:
    short_window: int = 10  # raw scores averaged: one outlier counts, a run counts more
    long_window: int = 8640  # averages the distribution is fitted on (30 days of 5-min data)
    learning_steps: int = 300  # neutral answer until the history means something
    reestimate_every: int = 100  # refit cost is O(long_window); scores drift slowly
    min_std: float = 1e-3  # floor: a perfectly flat history must not make every wiggle certain
    exclude_above: float | None = None  # tail beyond this z is left out of the fit (anomalies out of the baseline)

    def __post_init__(self) -> None:
        if self.short_window < 1 or self.long_window < 2 or self.reestimate_every < 1:
            raise ValueError(
                f"short_window >= 1, long_window >= 2, reestimate_every >= 1 expected, found "
                f"{self.short_window}, {self.long_window}, {self.reestimate_every}"
            )


def normal_tail(z: float) -> float:
    """P(Z > z) for a standard normal, accurate far into the tail (erfc, not 1 - cdf)."""
    return 0.5 * math.erfc(z / _SQRT2)


class AnomalyLikelihood:
    """One stream's likelihood state; ``update`` returns 1 - tail probability."""

    __slots__ = ("_count", "_history", "_mean", "_recent", "_recent_sum", "_std", "_tail", "config")

    def __init__(self, config: LikelihoodConfig | None = None) -> None:
        self.config = config or LikelihoodConfig()
        self._recent: deque[float] = deque(maxlen=self.config.short_window)
        self._recent_sum = 0.0
        self._history: deque[float] = deque(maxlen=self.config.long_window)
        self._count = 0
        self._mean = 0.0
        self._std = 1.0
        self._tail = 0.5

    @property
    def tail(self) -> float:
        """Tail probability of the last update (small = unusual); 0.5 while learning."""
        return self._tail

    def log_score(self, cap: float = 12.0) -> float:
        """The last tail as ``-log10(tail) / cap`` clipped to [0, 1]: resolves 1e-9 from 1e-6."""
        return min(1.0, -math.log10(max(self._tail, 1e-300)) / cap)

    def update(self, raw: float) -> float:
        """Feed one raw score (NaN counts as 0: no evidence); returns the likelihood."""
        if math.isnan(raw):
            raw = 0.0
        cfg = self.config
        if len(self._recent) == cfg.short_window:
            self._recent_sum -= self._recent[0]
        self._recent.append(raw)
        self._recent_sum += raw
        avg = self._recent_sum / len(self._recent)
        self._count += 1
        if self._count <= cfg.learning_steps:
            self._tail = 0.5
        else:
            since = self._count - cfg.learning_steps - 1
            if since % cfg.reestimate_every == 0:
                self._refit()
            self._tail = normal_tail((avg - self._mean) / self._std)
        self._history.append(avg)
        return 1.0 - self._tail

    def _refit(self) -> None:
        hist = list(self._history)
        if not hist:
            return
        mean = math.fsum(hist) / len(hist)
        var = math.fsum((h - mean) ** 2 for h in hist) / len(hist)
        std = max(math.sqrt(var), self.config.min_std)
        cut = self.config.exclude_above
        if cut is not None:
            kept = [h for h in hist if (h - mean) / std <= cut]
            if kept and len(kept) < len(hist):
                mean = math.fsum(kept) / len(kept)
                var = math.fsum((h - mean) ** 2 for h in kept) / len(kept)
                std = max(math.sqrt(var), self.config.min_std)
        self._mean, self._std = mean, std
