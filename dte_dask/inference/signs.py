"""Rademacher bootstrap products from the random bits themselves (a numba kernel, no dask).

A Rademacher multiplier is ``1 - 2 * bit`` of the stream's random bits
(:func:`dte_dask.core.multipliers.multipliers`), so every draw of ``V @ rows`` is a signed sum of
rows. Eight consecutive entities have 256 sign patterns: with a table of the 256 signed sums of
their eight rows (about ``256 w`` additions, once for all draws), each draw adds one table row,
picked by the byte that holds the eight entities' bits. For ``B`` draws that is ``(256 + B) w`` additions
per eight entities instead of the ``16 B w`` floating-point operations of the dense product, and
the multipliers are never expanded to floats (the "method of four Russians").

The additions follow a fixed order given by the entities' order (their bytes, then the draws), so
the sums are identical for any partitioning; they differ from the dense product only in rounding.
"""
from __future__ import annotations

import numpy as np

from dte_dask.core.jit import compiled

__all__ = ["SignBits", "gather_bits", "signed_sums", "transpose_bytes"]


def _byte_steps() -> tuple[np.ndarray, np.ndarray]:
    """For each byte i > 0: i without its lowest set bit, and the row (0..7, most significant bit
    first) that bit stands for."""
    i = np.arange(256)
    low = i & -i
    prev = i ^ low
    row = 7 - np.log2(np.maximum(low, 1)).astype(np.int64)
    return prev.astype(np.int64), row


_PREV, _ROW = _byte_steps()


def _signed_sums(packed_t: np.ndarray, rows: np.ndarray, out: np.ndarray, prev: np.ndarray,
                 row: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[d] += sum_g table_g[packed_t[g, d]] for rows (8 G x w), four groups of eight at a time.

    ``packed_t`` holds the bits transposed (G x D: the draws of one group of eight entities are
    adjacent), so the loop over the draws reads four contiguous byte rows instead of striding
    through the draws' rows. table_g[byte] is the signed sum of rows 8g .. 8g+7, the byte's most
    significant bit being row 8g (a set bit is a sign -1): table_g[0] adds the eight rows, and each
    other byte is the byte without its lowest set bit (``prev``) minus twice the row of that bit
    (``row``)."""
    G, D = packed_t.shape
    w = rows.shape[1]
    T = np.empty((1024, w))  # four tables of 256 rows
    R2 = np.empty((8, w))
    for g0 in range(0, G, 4):
        nq = min(4, G - g0)
        for q in range(nq):
            base, t0 = 8 * (g0 + q), 256 * q
            for k in range(w):
                s = 0.0
                for j in range(8):
                    s += rows[base + j, k]
                T[t0, k] = s
            for j in range(8):
                for k in range(w):
                    R2[j, k] = 2.0 * rows[base + j, k]
            for i in range(1, 256):
                a = t0 + prev[i]
                r = row[i]
                for k in range(w):
                    T[t0 + i, k] = T[a, k] - R2[r, k]
        if nq == 4:
            p0, p1, p2, p3 = packed_t[g0], packed_t[g0 + 1], packed_t[g0 + 2], packed_t[g0 + 3]
            for d in range(D):  # table rows by index (no per-draw views): the same additions, in order
                i0 = np.int64(p0[d])
                i1 = 256 + np.int64(p1[d])
                i2 = 512 + np.int64(p2[d])
                i3 = 768 + np.int64(p3[d])
                for k in range(w):
                    out[d, k] += (T[i0, k] + T[i1, k]) + (T[i2, k] + T[i3, k])
        else:
            for q in range(nq):
                pq = packed_t[g0 + q]
                for d in range(D):
                    i0 = 256 * q + np.int64(pq[d])
                    for k in range(w):
                        out[d, k] += T[i0, k]


def _transpose(a: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out = a.T for bytes, in 32 x 32 tiles (numpy's byte transpose misses the cache)."""
    R, C = a.shape
    for r0 in range(0, R, 32):
        r1 = min(r0 + 32, R)
        for c0 in range(0, C, 32):
            for c in range(c0, min(c0 + 32, C)):
                for r in range(r0, r1):
                    out[c, r] = a[r, c]


def _gather_bits_t(rawT: np.ndarray, pos: np.ndarray, outT: np.ndarray) -> None:  # pragma: no cover - compiled
    """Draws along the rows' length: bit i of outT[:, d] (most significant first, byte i // 8) is
    bit pos[i] of rawT[:, d], for all draws d at once."""
    D = rawT.shape[1]
    one = np.uint8(1)
    for i in range(pos.shape[0]):
        p = pos[i]
        src = rawT[p >> 3]
        s = np.uint8(7 - (p & 7))
        sh = np.uint8(7 - (i & 7))
        o = outT[i >> 3]
        for d in range(D):
            o[d] |= ((src[d] >> s) & one) << sh


def transpose_bytes(a: np.ndarray) -> np.ndarray:
    """``a.T`` (a 2-D uint8 array) as a C-contiguous array."""
    out = np.empty(a.shape[::-1], dtype=np.uint8)
    if a.size:
        compiled(_transpose)(a, out)
    return out


def gather_bits(packed: np.ndarray, pos: np.ndarray, *, transposed: np.ndarray | None = None) -> np.ndarray:
    """Bits ``pos`` of each row of ``packed`` (D x bytes, most significant bit first), packed in
    that order: (D x ceil(len(pos) / 8)) uint8, as
    ``np.packbits(np.unpackbits(packed, axis=1)[:, pos], axis=1)``; a transposed view (the draws
    run along its rows' length in memory). ``transposed`` is ``transpose_bytes(packed)``, when the
    caller keeps it for several calls."""
    rawT = transpose_bytes(packed) if transposed is None else transposed
    outT = np.zeros((-(-pos.size // 8), packed.shape[0]), dtype=np.uint8)
    if pos.size and packed.shape[0]:
        compiled(_gather_bits_t)(rawT, np.ascontiguousarray(pos, dtype=np.int64), outT)
    return outT.T


def signed_sums(packed: np.ndarray, rows: np.ndarray, lead: int = 0, *,
                packed_t: np.ndarray | None = None) -> np.ndarray:
    """``V @ rows`` with ``V = 1 - 2 * bits``: ``packed`` (D x G, uint8) holds the bits of D draws,
    most significant first, and entity ``i`` (row ``i`` of ``rows``) is bit ``lead + i`` of each
    row; bits beyond the rows are ignored. ``packed_t``: the same bytes transposed (G x D,
    C-contiguous), when the caller has them (then ``packed`` may be None). Returns (D x w) float64."""
    if packed_t is None:
        packed = np.asarray(packed, dtype=np.uint8)
        packed_t = packed.T if packed.T.flags.c_contiguous else transpose_bytes(packed)
    G, D = packed_t.shape
    m, w = rows.shape
    if lead + m > 8 * G:
        raise ValueError(f"{m} rows after {lead} leading bits need {lead + m} bits; packed holds {8 * G}")
    if lead == 0 and m == 8 * G and rows.dtype == np.float64 and rows.flags.c_contiguous:
        full = rows
    else:  # zero rows where the bits belong to no row: their signs add nothing
        full = np.zeros((8 * G, w))
        full[lead:lead + m] = rows
    out = np.zeros((D, w))
    if D and w and G:
        compiled(_signed_sums)(np.ascontiguousarray(packed_t, dtype=np.uint8), full, out, _PREV, _ROW)
    return out


class SignBits:
    """The Rademacher multipliers of one RNG block's entities, as bits
    (:func:`~dte_dask.core.multipliers.rademacher_bits`): ``matmul(lo, hi, rows)`` is
    ``V[:, lo:hi] @ rows`` for all draws at once (a :class:`~dte_dask.core.multipliers.Multipliers`).

    ``array`` and ``where`` as ``rademacher_bits`` returns them: the stream's packed bytes with the
    entities at bits ``where + i`` (an int: sliced per call, never unpacked) or at bits ``where[i]``
    (positions: gathered per call), or one 0/1 byte per multiplier (``where`` None, packed per call).
    """

    def __init__(self, array: np.ndarray, where: int | np.ndarray | None) -> None:
        self.array, self.where = array, where
        self.n_draws = array.shape[0]
        self._transposed: np.ndarray | None = None

    def matmul(self, lo: int, hi: int, rows: np.ndarray) -> np.ndarray:
        if self.where is None:
            return signed_sums(np.packbits(self.array[:, lo:hi], axis=1), rows)
        if self._transposed is None:  # once per block: every group's call reads it
            self._transposed = transpose_bytes(self.array)
        if isinstance(self.where, np.ndarray):
            return signed_sums(gather_bits(self.array, self.where[lo:hi], transposed=self._transposed), rows)
        start = self.where + lo
        stop = -(-(self.where + hi) // 8)
        return signed_sums(None, rows, start % 8, packed_t=self._transposed[start // 8:stop])
