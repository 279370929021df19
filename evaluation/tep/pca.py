"""The PCA baseline: Q (SPE) and Hotelling T^2 of a PCA fitted on standardised normal data.

numpy only. ``fit`` keeps the first ``components`` principal directions of the
standardised training data; ``q`` is the squared residual outside that subspace, ``t2``
the squared scores in units of each component's variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Pca:
    mean: F64  # (F,)
    std: F64  # (F,)
    loadings: F64  # (F, k)
    variances: F64  # (k,) variance of each retained score

    def scaled(self, x: F64) -> F64:
        return (x - self.mean) / self.std

    def q(self, x: F64) -> F64:
        """(N,) squared prediction error outside the retained subspace."""
        z = self.scaled(x)
        resid = z - (z @ self.loadings) @ self.loadings.T
        q: F64 = (resid * resid).sum(axis=1)
        return q

    def t2(self, x: F64) -> F64:
        """(N,) Hotelling T^2 inside the retained subspace."""
        scores = self.scaled(x) @ self.loadings
        t2: F64 = (scores * scores / self.variances).sum(axis=1)
        return t2


def fit(x: F64, components: int) -> Pca:
    """PCA of ``x`` (N, F) standardised with its own mean and std (ddof 1)."""
    if not 0 < components < x.shape[1]:
        raise ValueError(f"components {components}: expected 1..{x.shape[1] - 1}")
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    std = np.where(std > 1e-12, std, 1.0)  # a constant column contributes nothing either way
    z = (x - mean) / std
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    var = s**2 / (len(x) - 1)
    return Pca(mean, std, vt[:components].T.copy(), var[:components].copy())
