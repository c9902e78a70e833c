"""Distributed least squares with absorbed unit (or unit x stack) effects and CRV1 inference.

pass 1  ``<name>`` (one task prefix per design; stacked DiD: one per sub-experiment): each block
        reduces X~'WX~, X~'Wy~ and observation counts along the fixed tree of RNG blocks;
driver  assembles the designs' normal equations into the global one and solves it (guarded:
        collinear fixed-effect columns are dropped, any other collinear column is an error);
pass 2  ``<prefix>-scores``: per-unit scores, summed over designs (a unit that recurs across stacks
        contributes one score) and over clusters, reduced in the same task, one RNG block at a
        time, to sum_g s_g s_g' (picked as ``<prefix>-meat``; clustered by unit, the per-design
        meats and, for one design without a bootstrap, the pooled one never form their scores) and,
        with a bootstrap, to multiplier-bootstrap draws of the non-nuisance coefficients keyed by
        RNG block (picked as ``mboot``), as ``attgt-influence`` does: the pooled scores are first
        mapped to coefficient scores ``s_i inv[:, keep]`` (keep: the non-nuisance columns), so the
        multipliers multiply a matrix as narrow as the reported coefficients, not one as wide as
        every fixed-effect dummy; the dense scores never leave the task and exist one RNG block at a
        time, so memory stays at one block's scores (fresh memory is slow to page in on some VMs).
Only (m x m)-, (B x k)-sized arrays reach the driver, and every sum is bit-identical for any
partitioning and row order.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import dask
import numpy as np
from dask.base import tokenize

from dte_dask.core.aligned import aligned
from dte_dask.core.blocks import rng_block_runs
from dte_dask.core.dyadic import DyadicCover
from dte_dask.core.ols import (
    CrvFit,
    coef_map,
    coef_scores,
    crv_fit,
    local_nuisance,
    scores_meat,
    solve_part,
    solve_pooled,
)
from dte_dask.core.within import DesignSpec, gram_stats
from dte_dask.exceptions import EstimationError
from dte_dask.graph.reduce import by_rng_block, compute, single_threaded_blas, tree_merge
from dte_dask.inference.bootstrap import BootWeights, boot_cover, log_spans
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
class OlsFit:
    """The pooled fit, the per-design fits (if asked) and the design statistics."""

    pooled: CrvFit
    parts: tuple[CrvFit | None, ...]
    stats: tuple[dict, ...]  # pass-1 statistics per design (local columns)
    draws: np.ndarray | None  # (B, len(draw_cols)) bootstrap perturbations of the pooled coefficients
    draw_cols: np.ndarray  # global columns of ``draws``: the non-nuisance ones

    def coef_draws(self, idx: np.ndarray) -> np.ndarray:
        """(B, len(idx)) bootstrap perturbations of the pooled coefficients ``idx`` (non-nuisance)."""
        if not np.all(np.isin(idx, self.draw_cols)):
            raise ValueError("bootstrap draws exist only for the non-nuisance coefficients")
        return self.draws[:, np.searchsorted(self.draw_cols, idx)]


def fit_ols(panel: Panel, parts: list[Part], names: list[str], nuisance: np.ndarray, *,
            scores_name: str, per_part: bool = False, n_boot: int = 0, seed: int = 0,
            boot_weights: BootWeights = "rademacher", what: str = "the unit and time effects") -> OlsFit:
    """Fit the regression whose designs are ``parts`` (global columns ``names``).

    ``nuisance`` marks the fixed-effect dummy columns. With ``per_part`` every design is also fitted
    on its own (stacked DiD's per-sub-experiment estimates). Bootstrap draws are formed for the
    non-nuisance coefficients only (:meth:`OlsFit.coef_draws`).
    """
    m = len(names)
    stats = compute(*[exact_sum(panel, gram_stats, p.spec, name=p.name) for p in parts])
    sol, n_obs, levels = solve_pooled(parts, stats, names, nuisance, what)
    local = [solve_part(p, st, names) if per_part else None for p, st in zip(parts, stats)]

    betas = [sol.beta[p.place] for p in parts]
    part_betas = [None if s is None else s.beta for s in local]
    widths = [m] + [p.spec.m for p, s in zip(parts, local) if s is not None]
    draw_cols = np.flatnonzero(~np.asarray(nuisance, dtype=bool))
    if n_boot <= 0:  # scores and their cluster sums per RNG block, in one task per partition
        todo = [exact_sum(panel, scores_meat, parts, m, betas, part_betas, widths, name=scores_name)]
    else:  # one task per partition: scores -> meat and draws; the dense scores never leave it
        boot_kw = {"seed": seed, "n_boot": n_boot, "block_size": panel.rng_block_size,
                   "n_blocks": panel.n_rng_blocks, "n": 1, "kind": boot_weights}
        proj = coef_map(sol.inv, draw_cols)
        fused = panel.map_blocks(_one_thread, _score_reductions, parts, m, betas, part_betas, widths,
                                 panel.rng_block_size, panel.n_rng_blocks, boot_kw, proj, name=scores_name)
        pick = dask.delayed(operator.getitem, pure=True)
        todo = [tree_merge([pick(p, 0, dask_key_name=f"{scores_name}-meat-{p.key}") for p in fused],
                           name=f"{scores_name}-meat-sum"),
                tree_merge([pick(p, 1, dask_key_name=f"mboot-{p.key}") for p in fused], name="mboot-merge")]
    out = compute(*todo)
    meat = out[0]
    pooled = crv_fit(sol, meat["meat0"], n_obs, levels, meat["G0"], meat["units0"], nuisance)
    fits, j = [], 1
    for p, st, s in zip(parts, stats, local):
        fit = None
        if s is not None:
            lv = int(np.count_nonzero(st["level_n"]))
            try:
                fit = crv_fit(s, meat[f"meat{j}"], float(st["n_obs"]), lv, meat[f"G{j}"], meat[f"units{j}"],
                              local_nuisance(p.spec))
            except EstimationError:  # a design with a single cluster has no clustered SE
                fit = None
            j += 1
        fits.append(fit)
    draws = None if n_boot <= 0 else out[1]
    return OlsFit(pooled=pooled, parts=tuple(fits), stats=tuple(stats), draws=draws, draw_cols=draw_cols)


# ----------------------------------------------------------------------------- block kernels
PIECE_BLOCKS = 4  # RNG blocks per task of an exact sum: a partition of many blocks keeps every thread busy


def exact_sum(panel: Panel, func, *args, name: str):
    """Sum ``func(block, *args)`` over the panel along the fixed tree of RNG blocks (bit-identical
    for any partitioning), in tasks ``name-*`` of at most :data:`PIECE_BLOCKS` RNG blocks each."""
    bs, nb = panel.rng_block_size, panel.n_rng_blocks
    token = tokenize(func, args, *panel.blocks)
    f = dask.delayed(_piece, pure=True)
    parts = []
    for i, (blk, summary) in enumerate(zip(panel.blocks, panel.summaries)):
        b0, b1 = (summary.first_rank // bs, summary.last_rank // bs + 1) if summary.n_units else (0, 1)
        parts += [f(blk, lo * bs, min(lo + PIECE_BLOCKS, b1) * bs, func, bs, nb, *args,
                    dask_key_name=f"{name}-{token}-{i}-{j}") for j, lo in enumerate(range(b0, b1, PIECE_BLOCKS))]
    return tree_merge(parts, name=f"{name}-sum")


def _piece(block, lo: int, hi: int, func, bs: int, nb: int, *args):
    """:func:`by_rng_block` of ``func`` on the units of ``block`` with entity ranks in [lo, hi)."""
    a, b = np.searchsorted(block.rank, [lo, hi])
    return _one_thread(block.take(slice(int(a), int(b))), by_rng_block, func, bs, nb, *args)


def _one_thread(block, func, *args, **kwargs):
    """``func(block, *args, **kwargs)`` with single-threaded BLAS: dask already runs one task per
    core, and the small Gram products of a kernel are slower with BLAS threads competing for them."""
    with single_threaded_blas():
        return func(block, *args, **kwargs)


def _score_reductions(block, parts: list[Part], m: int, betas: list, part_betas: list, widths: list[int],
                      block_size: int, n_blocks: int, boot_kw: dict, proj: np.ndarray):
    """One partition's per-unit scores, reduced in the same task to the meat cover and the bootstrap
    cover of the coefficient scores ``scores @ proj`` (m x k: the inverse's columns of the drawn
    coefficients), one RNG block at a time: a block's pooled and coefficient scores exist only while
    it is reduced, so the task's memory is a few blocks' scores, reused from block to block, not a
    partition's. Without a bootstrap :func:`fit_ols` sums :func:`scores_meat` instead."""
    block, args = aligned(block), aligned((parts, m, betas, part_betas, widths))
    ids, meats, draws, spans = [], [], DyadicCover(n_blocks, {}), []
    for a, b, bid in rng_block_runs(block.rank, block_size):
        chunk = block.take(slice(a, b))
        scores = np.zeros((b - a, m))
        meats.append(scores_meat(chunk, *args, out=scores))
        draws = draws.merge(boot_cover(coef_scores(scores, proj), chunk.rank, spans=spans, **boot_kw))
        ids.append(bid)
    log_spans(spans)
    return DyadicCover.from_blocks(n_blocks, ids, meats), draws


