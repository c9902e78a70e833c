"""Rademacher products from the random bits (tables of signed sums) equal the dense product of the
float multipliers, for any alignment of the entities in the stream's bytes."""
from __future__ import annotations

import numpy as np
import pytest

import dte_dask
import dte_dask.inference.bootstrap as bootstrap_mod
from dte_dask.core.multipliers import CHUNK, multipliers, rademacher_bits
from dte_dask.inference.bootstrap import boot_cover
from dte_dask.inference.signs import SignBits, gather_bits, signed_sums

from .boot_helpers import supported_psi


def _dense(seed, block, n_draws, size):
    """All draws of one RNG block as floats, chunk after chunk (the definition of the multipliers)."""
    return np.vstack([multipliers(seed, block, c, min(lo + CHUNK, n_draws) - lo, size, "rademacher")
                      for c, lo in enumerate(range(0, n_draws, CHUNK))])


@pytest.mark.parametrize("m,w,lead", [(1, 1, 0), (7, 3, 0), (8, 2, 0), (33, 5, 3), (200, 17, 7), (64, 1, 5)])
def test_signed_sums_equal_the_dense_product(m, w, lead):
    rng = np.random.default_rng(m + w)
    D = 45
    bits = rng.integers(0, 2, (D, lead + m + int(rng.integers(0, 9))), dtype=np.uint8)
    rows = rng.standard_normal((m, w)) * np.array([1e4, 1e-3, 1.0, 7.0, 1e2] * 4)[:w]
    got = signed_sums(np.packbits(bits, axis=1), rows, lead)
    V = 1.0 - 2.0 * bits[:, lead:lead + m]
    want = V @ rows
    scale = np.abs(rows).sum(0)  # each column to its own scale (dollars next to 0/1)
    np.testing.assert_allclose(got / scale, want / scale, rtol=1e-13, atol=1e-15)
    # the first draw's signs by hand: a set bit is -1
    by_hand = (np.where(bits[0, lead:lead + m] == 1, -1.0, 1.0)[:, None] * rows).sum(0)
    np.testing.assert_allclose(got[0] / scale, by_hand / scale, rtol=1e-13, atol=1e-15)


def _tables_in_numpy(packed: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The documented order of the additions, in numpy: per group of eight rows a table of its 256
    signed sums (byte 0 adds the eight rows; byte i is byte i without its lowest set bit minus twice
    that bit's row), four groups' table rows added as (a + b) + (c + d) into each draw, group after
    group."""
    D, G = packed.shape
    full = np.zeros((8 * G, rows.shape[1]))
    full[:rows.shape[0]] = rows
    i = np.arange(256)
    low = i & -i
    tables = []
    for g in range(G):
        r = full[8 * g:8 * g + 8]
        T = np.empty((256, r.shape[1]))
        T[0] = r[0]
        for j in range(1, 8):
            T[0] = T[0] + r[j]
        for b in range(1, 256):
            T[b] = T[b ^ low[b]] - 2.0 * r[7 - int(np.log2(low[b]))]
        tables.append(T)
    out = np.zeros((D, rows.shape[1]))
    for g0 in range(0, G, 4):
        if G - g0 >= 4:
            t = [tables[g0 + q][packed[:, g0 + q]] for q in range(4)]
            out += (t[0] + t[1]) + (t[2] + t[3])
        else:
            for q in range(G - g0):
                out += tables[g0 + q][packed[:, g0 + q]]
    return out


@pytest.mark.parametrize("m,w", [(8, 1), (37, 3), (64, 17), (200, 24)])
def test_signed_sums_add_in_the_documented_order(m, w):
    """Bit for bit the same additions as a plain numpy rendering of the tables, whatever the byte
    layout handed in (draws x groups, or its transpose)."""
    rng = np.random.default_rng(m * w)
    packed = rng.integers(0, 256, (33, -(-m // 8)), dtype=np.uint8)
    rows = rng.standard_normal((m, w)) * np.array([1e4, 1e-3, 1.0] * 8)[:w]
    want = _tables_in_numpy(packed, rows)
    np.testing.assert_array_equal(signed_sums(packed, rows), want)
    np.testing.assert_array_equal(signed_sums(None, rows, packed_t=np.ascontiguousarray(packed.T)), want)
    np.testing.assert_array_equal(signed_sums(np.asfortranarray(packed), rows), want)


def test_gather_bits_is_unpack_take_pack():
    rng = np.random.default_rng(3)
    packed = rng.integers(0, 256, (37, 9), dtype=np.uint8)
    for pos in (np.arange(72), rng.permutation(72)[:29], np.array([5]), np.array([71, 0, 0, 64])):
        want = np.packbits(np.unpackbits(packed, axis=1)[:, pos], axis=1)
        np.testing.assert_array_equal(gather_bits(packed, pos), want)


def test_signed_sums_refuse_too_few_bits():
    with pytest.raises(ValueError, match="need 13 bits"):
        signed_sums(np.zeros((2, 1), dtype=np.uint8), np.ones((10, 1)), 3)


@pytest.mark.parametrize("size,cols", [
    (64, slice(0, 64)), (64, slice(13, 50)), (203, slice(5, 190)),
    (64, np.array([40, 3, 3, 63, 0, 17, 9])), (203, np.random.default_rng(0).permutation(203)[:150]),
])
def test_sign_bits_are_the_streams_multipliers(size, cols):
    n_draws = 2 * CHUNK + 37  # three chunks, the last one short
    V = _dense(11, 4, n_draws, size)[:, cols]
    array, lead = rademacher_bits(11, 4, n_draws, size, cols=cols)
    assert (lead is None) == (size % 8 != 0)  # whole bytes of the stream: kept packed
    assert isinstance(lead, int) == (isinstance(cols, slice) and size % 8 == 0)
    M = SignBits(array, lead)
    assert M.n_draws == n_draws
    rows = np.random.default_rng(2).standard_normal((V.shape[1], 4))
    m = V.shape[1]
    for lo, hi in ((0, m), (1, m - 2), (m // 3, m // 3 + 5)):
        np.testing.assert_allclose(M.matmul(lo, hi, rows[lo:hi]), V[:, lo:hi] @ rows[lo:hi], rtol=1e-13,
                                   atol=1e-13 * np.abs(rows).sum())


def test_boot_cover_draws_equal_dense_multipliers_times_psi():
    """The partition's draws: per RNG block, the block's multipliers times its entities' psi, / n."""
    rng = np.random.default_rng(5)
    n, width, bs, n_boot = 500, 6, 128, 300
    psi = rng.standard_normal((n, width))
    got = boot_cover(psi, np.arange(n), seed=9, n_boot=n_boot, block_size=bs, n_blocks=-(-n // bs), n=n,
                     kind="rademacher").root()
    want = sum(_dense(9, b, n_boot, bs)[:, :min(bs, n - b * bs)] @ psi[b * bs:(b + 1) * bs]
               for b in range(-(-n // bs))) / n
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_grouped_boot_cover_from_bits_equals_dense_multipliers():
    """Entities grouped by key within each RNG block (gathered bits) and each group's support."""
    rng = np.random.default_rng(6)
    n, width, bs, n_boot = 700, 8, 256, 300
    support = [np.array([0, 2, 7]), np.array([1, 3, 4, 7]), None]
    key, psi = supported_psi(rng, n, width, support)
    kw = dict(seed=2, n_boot=n_boot, block_size=bs, n_blocks=-(-n // bs), n=n, kind="rademacher")
    assert n_boot >= bootstrap_mod.BITS_MIN_DRAWS
    got = boot_cover(psi, np.arange(n), key=key, support=support, **kw).root()
    want = sum(_dense(2, b, n_boot, bs)[:, :min(bs, n - b * bs)] @ psi[b * bs:(b + 1) * bs]
               for b in range(-(-n // bs))) / n
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("estimator", ["att_gt", "event_study"])
def test_estimator_draws_from_bits_equal_the_dense_product(monkeypatch, estimator):
    df = dte_dask.simulate_panel(400, 6, seed=4).data.compute(scheduler="synchronous")
    cols = dict(outcome="y", unit="unit", time="time", group="group")
    kw = dict(covariates=["age"]) if estimator == "att_gt" else dict(window=(-2, 2))
    fit = lambda: getattr(dte_dask, estimator)(df, **cols, **kw, bootstrap=True, n_boot=300, seed=3)
    bits = fit()
    monkeypatch.setattr(bootstrap_mod, "BITS_MIN_DRAWS", 10**9)  # float multipliers times psi
    dense = fit()
    assert bits.draws.shape[0] == 300 and np.isfinite(bits.draws).all()
    scale = np.abs(dense.draws).max()
    np.testing.assert_allclose(bits.draws, dense.draws, rtol=0, atol=1e-12 * scale)


def test_kernels_compile_without_a_cache_directory(monkeypatch):
    """No writable place for numba's cache (read-only install, no home): compiled in memory instead."""
    import numba
    import numba.core.caching as caching

    import dte_dask.core.jit as jit
    import dte_dask.inference.signs as signs

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(jit, "_COMPILED", {})
    with pytest.raises(RuntimeError, match="no locator"):  # what numba does then with cache=True
        numba.njit(cache=True)(signs._transpose)
    a = np.random.default_rng(1).integers(0, 256, (37, 70), dtype=np.uint8)
    np.testing.assert_array_equal(signs.transpose_bytes(a), a.T)
