"""Analytic (influence-function) covariance: Psi'Psi, or cluster sums first when clustering."""
from __future__ import annotations

import numpy as np

from dte_dask.core.blocks import entity_sums

__all__ = ["analytic_se", "covariance", "entity_sums", "gram"]


def gram(psi: np.ndarray, rank: np.ndarray, clustered: bool) -> np.ndarray:
    """Psi'Psi of one block (cluster sums S'S when ``clustered``)."""
    s = entity_sums(psi, rank) if clustered else psi
    return s.T @ s


def covariance(gram_total: np.ndarray, n: int) -> np.ndarray:
    """Covariance of the estimates: Psi'Psi / n^2 (R ``did``: V = Psi'Psi/n, se = sqrt(V/n))."""
    return gram_total / float(n) ** 2


def analytic_se(cov: np.ndarray) -> np.ndarray:
    """Standard errors from a covariance; values below sqrt(eps)*10 are reported as NaN (R ``did``)."""
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return np.where(se <= np.sqrt(np.finfo(float).eps) * 10, np.nan, se)
