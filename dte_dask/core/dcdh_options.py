"""Options of ``did_multiplegt`` (R ``did_multiplegt_dyn``) as transformations of the per-unit inputs.

The kernels of :mod:`dte_dask.core.dcdh` compare switchers with not-yet-switchers of the same
comparison group and take first differences of the block's outcome matrix. The options below
change only those inputs, block by block (so results stay bit-identical for any partitioning):

* ``trends_nonparam=[cols]``: the comparison group is the baseline treatment × the values of
  time-invariant variables: each unit gets an integer code of its values
  (:func:`unit_values`, :func:`attach_key`), ``Ctx.n_keys`` codes in all. Every grouping of the
  estimator (the filters on variation in F_g and on never-switchers, the control cells, the
  demeaning cells of the variance) then uses (baseline, code), as in R.
* ``trends_lin=True``: group-specific linear trends. As in R, units whose first switch is at the
  second period are dropped, the outcome is replaced by its first difference (period one is
  dropped) after the sample filters, and the DID_ℓ of the differenced outcome are cumulated over
  ℓ (:func:`first_difference`, :func:`cumulate`), with their influence functions, so the
  covariance becomes A V A' with A the lower-triangular matrix of ones (effects and placebos apart).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from dte_dask.core.dcdh import Ctx, DcdhBlock, prepare, unit_design

__all__ = [
    "attach_key",
    "binarize",
    "block_totals",
    "cumulation_matrix",
    "first_difference",
    "resample",
    "unit_values",
    "value_rows",
]


def unit_values(block: DcdhBlock) -> tuple[np.ndarray, int]:
    """Each unit's value of a time-invariant variable held in ``block.y`` (first non-missing value
    among its rows), and the index of the first unit whose value changes over time (-1: none)."""
    v = np.where(block.present, block.y, np.nan)
    has = ~np.isnan(v)
    first = np.argmax(has, axis=1)
    val = np.where(has.any(axis=1), v[np.arange(block.n), first], np.nan)
    varies = (has & (v != val[:, None])).any(axis=1)
    return val, int(np.argmax(varies)) if varies.any() else -1


def value_rows(vals: np.ndarray) -> np.ndarray:
    """Distinct rows of the (n, k) unit values of a block (NaN rows, units without a value, left out)."""
    vals = vals[~np.isnan(vals).any(axis=1)]
    return np.unique(vals, axis=0) if vals.size else vals.reshape(0, vals.shape[1])


def _radix(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Mixed-radix integer code of value rows, by each column's rank among the table's values."""
    code = np.zeros(rows.shape[0], np.int64)
    for j in range(table.shape[1]):
        levels = np.unique(table[:, j])
        code = code * levels.size + np.searchsorted(levels, rows[:, j])
    return code


def attach_key(block: DcdhBlock, vals: np.ndarray, table: np.ndarray) -> DcdhBlock:
    """The block with ``key``: each unit's row index in ``table`` (the distinct value rows of the
    whole panel). Units without a value (every row missing) lose their rows, as units without an
    outcome do."""
    ok = ~np.isnan(vals).any(axis=1)
    tcode = _radix(table, table)
    order = np.argsort(tcode, kind="stable")
    key = np.zeros(block.n, np.int64)
    if ok.any():
        key[ok] = order[np.searchsorted(tcode[order], _radix(vals[ok], table))]
    present = block.present & ok[:, None]
    pre = None if block.pre is None else {**block.pre, "present": block.pre["present"] & ok[:, None]}
    return replace(block, present=present, pre=pre, key=key)


def first_difference(block: DcdhBlock, ctx: Ctx) -> DcdhBlock:
    """``trends_lin``: the block after the sample filters of ``ctx`` (stage 3), with the outcome
    replaced by its first difference Y_t - Y_{t-1} (missing unless both rows are in the sample),
    period one dropped, and the units whose first switch is at the second period dropped."""
    u = unit_design(block, ctx, 3)
    pres = u["present"].copy()
    y = np.where(pres, block.y, np.nan)
    dy = np.full_like(y, np.nan)
    np.subtract(y[:, 1:], y[:, :-1], out=dy[:, 1:])
    pres[:, 0] = False
    pres &= (u["F"] != 1)[:, None]
    pre = {**(block.pre if block.pre is not None else {}), **{k: u[k] for k in ("d_sq", "F", "S", "L", "d_fg")},
           "present": pres}
    return replace(block, y=dy, present=pres, pre=pre)


def cumulation_matrix(horizons: tuple[int, ...]) -> np.ndarray:
    """A with (A x)_ℓ = Σ_{k ≤ ℓ} x_k over effects (ℓ > 0) and over placebos (ℓ < 0) apart."""
    h = np.asarray(horizons)
    sign, mag = np.sign(h), np.abs(h)
    return ((sign[:, None] == sign[None, :]) & (mag[None, :] <= mag[:, None])).astype(np.float64)


def block_totals(n_entities: int, block_size: int, entropy: int, rep: int) -> np.ndarray:
    """Bootstrap replicate ``rep``: how many of the ``n_entities`` draws (with replacement, uniform
    over entities: units, or clusters) fall in each RNG block of ``block_size`` entities. With
    :func:`resample`, the counts are a multinomial(n, 1/n, ..., 1/n) draw, as R's resampling of
    clusters, that depends on the seed and the stable entity ranks only (not on the partitioning)."""
    nb = max(1, -(-n_entities // block_size))
    sizes = np.diff(np.minimum(np.arange(nb + 1) * block_size, n_entities))
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(rep, 0)))
    return rng.multinomial(n_entities, sizes / max(n_entities, 1))


def resample(block: DcdhBlock, totals: np.ndarray, n_entities: int, block_size: int, entropy: int,
             rep: int) -> DcdhBlock:
    """The block in bootstrap replicate ``rep``: each entity drawn k times has its weights multiplied
    by k (R collapses the duplicated rows of a unit into one (unit, period) cell of weight k·w);
    entities not drawn leave the sample. Draws within RNG block b come from the stream
    ``SeedSequence(entropy, spawn_key=(rep, 1, b))``."""
    count = np.zeros(block.n, np.int64)
    blk = block.rank // block_size
    for b in np.unique(blk):
        m = int(min(block_size, n_entities - b * block_size))
        rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(rep, 1, int(b))))
        draws = rng.multinomial(int(totals[b]), np.full(m, 1.0 / m))
        sel = blk == b
        count[sel] = draws[block.rank[sel] - b * block_size]
    drawn = (count > 0)[:, None]
    pre = None if block.pre is None else {**block.pre, "present": block.pre["present"] & drawn}
    return replace(block, w=block.w * count[:, None], present=block.present & drawn, pre=pre)


def binarize(block: DcdhBlock, degree: int, block_size: int | None = None) -> DcdhBlock:
    """``continuous=degree`` (R): the prepared block with its treatment replaced by the staggered
    binary S_g·1{t ≥ F_g} (one comparison group: every baseline becomes 0), the original change since
    the baseline kept in ``dnorm`` for the normalisation, and the controls 1{t ≥ j}·D_{g,1}^k
    (j = 1..T-1, k = 1..degree) appended to ``x``. Rows dropped as bidirectional stay dropped."""
    pre = block.pre if block.pre is not None else prepare(block).pre
    F, S, d_sq, present = pre["F"], pre["S"], pre["d_sq"], pre["present"]
    n, T = block.d.shape
    t = np.arange(T)[None, :]
    on = np.isfinite(F)[:, None] & (t >= np.where(np.isfinite(F), F, T)[:, None])
    d = np.where(np.isnan(block.d), np.nan, np.where(on, S[:, None], 0.0))
    dnorm = np.where(present, block.d - d_sq[:, None], np.nan)
    steps = (t[:, :, None] >= np.arange(1, T)[None, None, :]).astype(np.float64)          # (1, T, T-1)
    powers = np.stack([np.nan_to_num(d_sq) ** k for k in range(1, degree + 1)], axis=1)   # (n, K)
    extra = (steps[:, :, :, None] * powers[:, None, None, :]).reshape(n, T, (T - 1) * degree)
    x = extra if block.x is None else np.concatenate([block.x, extra], axis=2)
    out = replace(block, d=d, present=present, x=x, dnorm=dnorm, pre=None)
    return prepare(out, block_size)
