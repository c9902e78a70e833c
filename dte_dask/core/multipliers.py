"""Bootstrap multipliers keyed by RNG block, so draws never depend on partitioning (numpy only).

Entity (unit, or cluster when clustering) with stable index r belongs to RNG block
b = r // block_size. Draws ``[c*CHUNK, (c+1)*CHUNK)`` of block b come from
``SeedSequence(seed, spawn_key=(b, c))``: a matrix (CHUNK x block_size) whose column r - b*block_size
is entity r's multiplier. :func:`dte_dask.inference.bootstrap.boot_cover` applies them.
"""
from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from dte_dask.core.blocks import runs

CHUNK = 128  # draws per random stream; part of the algorithm (changing it changes the draws)
BootWeights = Literal["rademacher", "mammen"]
_SQ5 = np.sqrt(5.0)
_MAMMEN_LO, _MAMMEN_HI = (1.0 - _SQ5) / 2.0, (1.0 + _SQ5) / 2.0
_MAMMEN_P = (_SQ5 + 1.0) / (2.0 * _SQ5)  # P(V = (1 - sqrt5)/2)


def multipliers(seed: int, block: int, chunk: int, n_draws: int, size: int, kind: BootWeights,
                cols: np.ndarray | slice | None = None) -> np.ndarray:
    """(n_draws, size) multipliers of RNG block ``block``, draws ``chunk*CHUNK ..``; with ``cols``
    only those columns (entities of the block), in that order: the same values as
    ``multipliers(...)[:, cols]``, gathered as one-byte signs before they become floats.

    Rademacher multipliers are ``1 - 2 * bit`` of the stream's random bytes (most significant bit
    first, as :func:`numpy.unpackbits`): bits -> int8 signs -> float64, a few cheap passes over
    one-byte arrays and one conversion."""
    rng = _stream(seed, block, chunk)
    if kind == "rademacher":
        bits = _bits(rng, n_draws, size, cols)
        bits <<= 1
        return np.subtract(1, bits.view(np.int8), dtype=np.int8).astype(np.float64)
    if kind == "mammen":
        u = rng.random((n_draws, size))
        out = np.where(u < _MAMMEN_P, _MAMMEN_LO, _MAMMEN_HI)
    elif kind == "gaussian":  # N(0, 1): the multipliers of Chen, Christensen & Kankanala's sup-t bootstrap
        out = rng.standard_normal((n_draws, size))
    else:
        raise ValueError(f"unknown boot_weights {kind!r}; use 'rademacher' or 'mammen'")
    if cols is None:
        return out
    return out[:, cols] if isinstance(cols, slice) else np.take(out, cols, axis=1)


class Multipliers(Protocol):
    """Bootstrap multipliers ``V`` (draws x entities) of one RNG block, as an operator."""

    n_draws: int

    def matmul(self, lo: int, hi: int, rows: np.ndarray) -> np.ndarray:
        """``V[:, lo:hi] @ rows``: (n_draws x rows' columns), float64."""
        ...


class DenseMultipliers:
    """Multipliers as a float matrix (one chunk of draws): ``matmul`` is ``V[:, lo:hi] @ rows``."""

    def __init__(self, V: np.ndarray) -> None:
        self.V = V
        self.n_draws = V.shape[0]

    def matmul(self, lo: int, hi: int, rows: np.ndarray) -> np.ndarray:
        return self.V[:, lo:hi] @ rows


def rademacher_bits(seed: int, block: int, n_draws: int, size: int,
                    cols: np.ndarray | slice | None = None) -> tuple[np.ndarray, int | np.ndarray | None]:
    """The bits behind the Rademacher multipliers of RNG block ``block``, draws ``0 .. n_draws-1``
    (every chunk): ``multipliers(...)[:, cols] == 1 - 2 * bits``, chunk after chunk.

    When ``size`` is a multiple of 8, returns the stream's own bytes (n_draws x size / 8, most
    significant bit first, nothing unpacked) and where ``cols`` lie in them: ``lead`` (an int,
    column ``i`` at bit ``lead + i``) for a slice, the positions (an int array) otherwise.
    Otherwise returns ``(bits, None)``: one 0/1 byte per multiplier (n_draws x columns)."""
    chunks = [(c, lo, min(lo + CHUNK, n_draws) - lo) for c, lo in enumerate(range(0, n_draws, CHUNK))]
    if cols is None:
        cols = slice(0, size)
    if size % 8 == 0 and (not isinstance(cols, slice) or cols.step in (None, 1)):
        packed = np.empty((n_draws, size // 8), dtype=np.uint8)
        for c, lo, nd in chunks:
            raw = _stream(seed, block, c).bytes(nd * size // 8)
            packed[lo:lo + nd] = np.frombuffer(raw, dtype=np.uint8).reshape(nd, -1)
        return packed, (int(cols.start or 0) if isinstance(cols, slice) else np.asarray(cols, dtype=np.int64))
    parts = [_bits(_stream(seed, block, c), nd, size, cols) for c, _, nd in chunks]
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]), None


def _stream(seed: int, block: int, chunk: int) -> np.random.Generator:
    """The random stream of draws ``chunk*CHUNK ..`` of RNG block ``block``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, chunk)))


def _bits(rng: np.random.Generator, n_draws: int, size: int, cols: np.ndarray | slice | None) -> np.ndarray:
    """(n_draws, size) bits of the stream's next bytes (most significant first), 0/1 uint8, and
    only columns ``cols`` (in that order) when given."""
    raw = np.frombuffer(rng.bytes(-(-(n_draws * size) // 8)), dtype=np.uint8)
    bits = np.unpackbits(raw, count=n_draws * size).reshape(n_draws, size)
    if cols is None:
        return bits
    return bits[:, cols] if isinstance(cols, slice) else np.take(bits, cols, axis=1)


def key_runs(keys: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Entities of one RNG block grouped by ``keys`` (ascending, ties by position: an order defined
    by the data, never by the partitioning): the permutation, to pass as ``cols`` of
    :func:`multipliers`, and ``(lo, hi, key)`` of each group's run in it."""
    perm = np.argsort(keys, kind="stable")
    return perm, runs(keys[perm])
