"""Influence matrices with a stated column support per group of rows (for the grouped bootstrap tests)."""
from __future__ import annotations

import numpy as np


def supported_psi(rng: np.random.Generator, n: int, width: int, support: list) -> tuple[np.ndarray, np.ndarray]:
    """Rows keyed 0..len(support)-1 at random; a row of key k is zero outside ``support[k]`` (None: dense)."""
    key = rng.integers(0, len(support), n)
    psi = rng.standard_normal((n, width))
    for k, cols in enumerate(support):
        if cols is None:
            continue
        off = np.ones(width, dtype=bool)
        off[cols] = False
        psi[np.ix_(key == k, off)] = 0.0
    return key, psi
