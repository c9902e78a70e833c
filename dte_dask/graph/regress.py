"""Distributed least squares with absorbed unit (or unit x stack) effects and CRV1 inference.

pass 1  ``<name>`` (one task prefix per design; stacked DiD: one per sub-experiment): each block
        reduces X~'WX~, X~'Wy~ and observation counts along the fixed tree of RNG blocks;
driver  assembles the designs' normal equations into the global one and solves it (guarded:
        collinear fixed-effect columns are dropped, any other collinear column is an error);
pass 2  ``<prefix>-scores`` / ``<prefix>-meat``: per-unit scores, summed over designs (a unit that
        recurs across stacks contributes one score) and over clusters, reduce to sum_g s_g s_g';
        optionally ``mboot``: multiplier-bootstrap draws of the score sums, keyed by RNG block.
Only (m x m)-, (B x m)-sized arrays reach the driver, and every sum is bit-identical for any
partitioning and row order.
"""
from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np
from dask.base import tokenize
from threadpoolctl import threadpool_limits

from dte_dask.core.within import (
    DesignSpec,
    crv1,
    gram_stats,
    guarded_solve,
    unit_scores,
)
from dte_dask.exceptions import EstimationError
from dte_dask.graph.reduce import by_rng_block, tree_merge
from dte_dask.inference.bootstrap import BootWeights, boot_cover
from dte_dask.inference.variance import entity_sums
from dte_dask.panel.panel import Panel


@dataclass(frozen=True)
class Part:
    """One design of a regression, the global column of each of its columns, and its task name."""

    spec: DesignSpec
    place: np.ndarray  # (spec.m,) int
    name: str

    def __dask_tokenize__(self) -> object:
        return ("regress-part", self.spec, self.place.tobytes(), self.name)


@dataclass(frozen=True)
class CrvFit:
    """Coefficients and CRV1 covariance of one least-squares problem."""

    beta: np.ndarray  # (m,) zeros on dropped columns
    kept: np.ndarray  # (m,) bool
    cov: np.ndarray  # (m, m)
    n_obs: int
    n_clusters: int
    n_units: int
    df_k: int
    ssc: float


@dataclass(frozen=True)
class OlsFit:
    """The pooled fit, the per-design fits (if asked) and the design statistics."""

    pooled: CrvFit
    parts: tuple[CrvFit | None, ...]
    stats: tuple[dict, ...]  # pass-1 statistics per design (local columns)
    draws: np.ndarray | None  # (B, m) bootstrap perturbations of the pooled coefficients


def fit_ols(panel: Panel, parts: list[Part], names: list[str], nuisance: np.ndarray, *,
            scores_name: str, per_part: bool = False, n_boot: int = 0, seed: int = 0,
            boot_weights: BootWeights = "rademacher", what: str = "the unit and time effects") -> OlsFit:
    """Fit the regression whose designs are ``parts`` (global columns ``names``).

    ``nuisance`` marks the fixed-effect dummy columns. With ``per_part`` every design is also fitted
    on its own (stacked DiD's per-sub-experiment estimates).
    """
    m = len(names)
    stats = dask.compute(*[exact_sum(panel, gram_stats, p.spec, name=p.name) for p in parts])
    A, b, raw, present, n_obs, levels = _assemble(parts, stats, m)
    if n_obs == 0:
        raise EstimationError("no observation is left in the regression (every unit is a singleton or dropped)")
    sol = guarded_solve(A, b, raw, names, nuisance, present, what)
    local = [_solve_part(p, st, names) if per_part else None for p, st in zip(parts, stats)]

    betas = [sol.beta[p.place] for p in parts]
    part_betas = [None if s is None else s.beta for s in local]
    scores = panel.map_blocks(_one_thread, _block_scores, parts, m, betas, part_betas, name=scores_name)
    widths = [m] + [p.spec.m for p, s in zip(parts, local) if s is not None]
    f = dask.delayed(_one_thread, pure=True)
    meats = [f(blk, by_rng_block, _meat, panel.rng_block_size, panel.n_rng_blocks, widths, rows=s,
               dask_key_name=f"{scores_name}-meat-{tokenize(s)}-{i}") for i, (blk, s) in enumerate(zip(panel.blocks, scores))]
    todo = [tree_merge(meats, name=f"{scores_name}-meat-sum")]
    if n_boot > 0:
        kw = dict(seed=seed, n_boot=n_boot, block_size=panel.rng_block_size, n_blocks=panel.n_rng_blocks,
                  n=1, kind=boot_weights)
        fb = dask.delayed(_boot, pure=True)
        covers = [fb(blk, s, m, **kw, dask_key_name=f"mboot-{tokenize(s, kw)}-{i}")
                  for i, (blk, s) in enumerate(zip(panel.blocks, scores))]
        todo.append(tree_merge(covers, name="mboot-merge"))
    out = dask.compute(*todo)
    meat = out[0]
    pooled = _crv(sol, meat["meat0"], n_obs, levels, meat["G0"], meat["units0"], nuisance)
    fits, j = [], 1
    for p, st, s in zip(parts, stats, local):
        fit = None
        if s is not None:
            lv = int(np.count_nonzero(st["level_n"]))
            try:
                fit = _crv(s, meat[f"meat{j}"], float(st["n_obs"]), lv, meat[f"G{j}"], meat[f"units{j}"],
                           _local_nuisance(p.spec))
            except EstimationError:  # a design with a single cluster has no clustered SE
                fit = None
            j += 1
        fits.append(fit)
    draws = None if n_boot <= 0 else out[1] @ sol.inv
    return OlsFit(pooled=pooled, parts=tuple(fits), stats=tuple(stats), draws=draws)


def _assemble(parts: list[Part], stats: tuple[dict, ...], m: int):
    """The global normal equations from the designs' statistics (placed by their columns)."""
    A, b, raw, present, n_obs, levels = np.zeros((m, m)), np.zeros(m), np.zeros(m), np.zeros(m, dtype=bool), 0.0, 0
    for p, st in zip(parts, stats):
        A[np.ix_(p.place, p.place)] += st["A"]
        b[p.place] += st["b"]
        raw[p.place] += st["raw"]
        present[p.place] |= _present(p.spec, st)
        n_obs += float(st["n_obs"])
        levels += int(np.count_nonzero(st["level_n"]))  # fixed-effect levels observed
    return A, b, raw, present, n_obs, levels


def _present(spec: DesignSpec, st: dict) -> np.ndarray:
    """Local columns that take part: dummies with observations, and every covariate."""
    present = st["col_n"] > 0
    present[spec.n_fe:spec.n_fe + spec.p] = True
    return present


def _local_nuisance(spec: DesignSpec) -> np.ndarray:
    nuis = np.zeros(spec.m, dtype=bool)
    nuis[:spec.n_fe] = True
    return nuis


def _solve_part(p: Part, st: dict, names: list[str]):
    local_names = [names[j] for j in p.place]
    try:
        return guarded_solve(st["A"], st["b"], st["raw"], local_names, _local_nuisance(p.spec), _present(p.spec, st))
    except EstimationError:
        return None


def _crv(sol, meat: np.ndarray, n_obs: float, levels: int, G: float, units: float, nuisance: np.ndarray) -> CrvFit:
    df_k = int(np.count_nonzero(sol.kept & ~nuisance)) + levels
    cov, c = crv1(sol.inv, meat, n_obs, df_k, int(G))
    return CrvFit(beta=sol.beta, kept=sol.kept, cov=cov, n_obs=int(n_obs), n_clusters=int(G),
                  n_units=int(units), df_k=df_k, ssc=c)


# ----------------------------------------------------------------------------- block kernels
def exact_sum(panel: Panel, func, *args, name: str):
    """Sum ``func(block, *args)`` over the panel along the fixed tree of RNG blocks (bit-identical
    for any partitioning), in tasks ``name-*``."""
    parts = panel.map_blocks(_one_thread, by_rng_block, func, panel.rng_block_size, panel.n_rng_blocks,
                             *args, name=name)
    return tree_merge(parts, name=f"{name}-sum")


def _one_thread(block, func, *args, **kwargs):
    """``func(block, *args, **kwargs)`` with single-threaded BLAS: dask already runs one task per
    core, and the small Gram products of a kernel are slower with BLAS threads competing for them."""
    with threadpool_limits(limits=1):
        return func(block, *args, **kwargs)


def _block_scores(block, parts: list[Part], m: int, betas: list[np.ndarray], part_betas: list) -> np.ndarray:
    """(n, m + sum of per-design widths + 1 + per-design count) array: pooled scores in global
    columns (summed over designs), per-design scores at the per-design fits, then 0/1 flags of
    units used in the pooled fit and in each per-design fit."""
    n = block.n
    pooled = np.zeros((n, m))
    used_any = np.zeros((n, 1))
    local, flags = [], []
    for p, beta, pb in zip(parts, betas, part_betas):
        sel, scores, used = unit_scores(block, p.spec, beta, *([] if pb is None else [pb]))
        pooled[np.ix_(sel, p.place)] += scores[0]
        used_any[sel[used], 0] = 1.0
        if pb is not None:
            loc = np.zeros((n, p.spec.m))
            loc[sel] = scores[1]
            flag = np.zeros((n, 1))
            flag[sel[used], 0] = 1.0
            local.append(loc)
            flags.append(flag)
    return np.hstack([pooled, *local, used_any, *flags])


def _meat(chunk, rows: np.ndarray, widths: list[int]) -> dict[str, np.ndarray]:
    """Per segment j of columns: cluster-score outer products ``meat<j>``, used clusters ``G<j>``
    and used units ``units<j>``."""
    S = entity_sums(rows, chunk.rank)
    off = np.cumsum([0, *widths])
    out = {}
    for j in range(len(widths)):
        s = S[:, off[j]:off[j + 1]]
        out[f"meat{j}"] = s.T @ s
        out[f"G{j}"] = np.array(float(np.count_nonzero(S[:, off[-1] + j] > 0)))
        out[f"units{j}"] = np.array(float(np.count_nonzero(rows[:, off[-1] + j] > 0)))
    return out


def _boot(block, scores: np.ndarray, m: int, **kw):
    return boot_cover(scores[:, :m], block.rank, **kw)
