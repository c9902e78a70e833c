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
_RADEMACHER_BIT = np.array([1.0, -1.0])


def multipliers(seed: int, block: int, chunk: int, n_draws: int, size: int, kind: BootWeights,
                cols: np.ndarray | slice | None = None) -> np.ndarray:
    """(n_draws, size) multipliers of RNG block ``block``, draws ``chunk*CHUNK ..``; with ``cols``
    only those columns (entities of the block), in that order: the same values as
    ``multipliers(...)[:, cols]``, without gathering a float matrix."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, chunk)))
    if kind == "rademacher":
        nbytes = -(-(n_draws * size) // 8)
        raw = np.frombuffer(rng.bytes(nbytes), dtype=np.uint8)
        if cols is not None and not isinstance(cols, slice):  # gather the bits (1 byte each), then map
            bits = np.unpackbits(raw, count=n_draws * size).reshape(n_draws, size)
            return _RADEMACHER_BIT[np.take(bits, cols, axis=1)]
        draws = _RADEMACHER_BYTE[raw].reshape(-1)
        out = draws[: n_draws * size].reshape(n_draws, size)
    elif kind == "mammen":
        u = rng.random((n_draws, size))
        out = np.where(u < _MAMMEN_P, _MAMMEN_LO, _MAMMEN_HI)
    elif kind == "gaussian":  # N(0, 1): the multipliers of Chen, Christensen & Kankanala's sup-t bootstrap
        out = rng.standard_normal((n_draws, size))
    else:
        raise ValueError(f"unknown boot_weights {kind!r}; use 'rademacher' or 'mammen'")
    if cols is None:
        return out
    return out[:, cols] if isinstance(cols, slice) else np.take(out, cols, axis=1)
