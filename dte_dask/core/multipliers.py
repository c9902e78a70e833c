"""Bootstrap multipliers keyed by RNG block, so draws never depend on partitioning (numpy only).

Entity (unit, or cluster when clustering) with stable index r belongs to RNG block
b = r // block_size. Draws ``[c*CHUNK, (c+1)*CHUNK)`` of block b come from
``SeedSequence(seed, spawn_key=(b, c))``: a matrix (CHUNK x block_size) whose column r - b*block_size
is entity r's multiplier. :func:`dte_dask.inference.bootstrap.boot_cover` applies them.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

CHUNK = 128  # draws per random stream; part of the algorithm (changing it changes the draws)
BootWeights = Literal["rademacher", "mammen"]
_SQ5 = np.sqrt(5.0)
_MAMMEN_LO, _MAMMEN_HI = (1.0 - _SQ5) / 2.0, (1.0 + _SQ5) / 2.0
_MAMMEN_P = (_SQ5 + 1.0) / (2.0 * _SQ5)  # P(V = (1 - sqrt5)/2)
# byte -> its 8 Rademacher multipliers (1 - 2 * bit, most significant bit first, as np.unpackbits):
# one gather from the random bytes instead of unpack + three float passes; the same values
_RADEMACHER_BYTE = 1.0 - 2.0 * np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)


def multipliers(seed: int, block: int, chunk: int, n_draws: int, size: int, kind: BootWeights) -> np.ndarray:
    """(n_draws, size) multipliers of RNG block ``block``, draws ``chunk*CHUNK ..``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, chunk)))
    if kind == "rademacher":
        nbytes = -(-(n_draws * size) // 8)
        draws = _RADEMACHER_BYTE[np.frombuffer(rng.bytes(nbytes), dtype=np.uint8)].reshape(-1)
        return draws[: n_draws * size].reshape(n_draws, size)
    if kind == "mammen":
        u = rng.random((n_draws, size))
        return np.where(u < _MAMMEN_P, _MAMMEN_LO, _MAMMEN_HI)
    if kind == "gaussian":  # N(0, 1): the multipliers of Chen, Christensen & Kankanala's sup-t bootstrap
        return rng.standard_normal((n_draws, size))
    raise ValueError(f"unknown boot_weights {kind!r}; use 'rademacher' or 'mammen'")
