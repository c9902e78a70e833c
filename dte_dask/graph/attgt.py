"""The ATT(g,t) task graph: statistics passes, influence pass, then small reductions.

pass 1..k  ``attgt-stats`` / ``attgt-logit`` / ``attgt-moments``: kernels map over the blocks,
           their sums are tree-reduced and the driver solves the small per-cell problems;
pass k+1   ``attgt-influence``: each block's influence functions Psi (n_block x K'; K' = cells + one
           cohort column per group, for the aggregation weights) are computed on the worker and
           reduced there, in the same task, to Psi'Psi (cluster sums first) and to the block's
           bootstrap draws, one RNG block at a time; Psi itself is never stored, so memory is one
           RNG block's Psi;
reduce     ``attgt-gram-sum`` (K' x K') and ``mboot-merge`` (B x K') along the RNG-block tree.
Only K-, K'xK'- and BxK'-sized arrays ever reach the driver.

This module is wiring only: the estimator is a cell kernel of :mod:`dte_dask.core.kernels`, picked
by :func:`dte_dask.core.routes.select` (balanced panels without covariates, with them, repeated cross
sections / unbalanced panels without and with them). Its passes are mapped over the blocks and
tree-reduced here; its ``solve`` (outcome regressions, the IRLS logit, the reg / ipw / dr algebra)
runs on the driver in core. A kernel with an affine influence form (cohort moments: balanced,
unclustered, no covariates) gives Psi'Psi from centred cohort second moments, and Psi is only
rebuilt one RNG block at a time for the bootstrap.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import dask
import numpy as np

from dte_dask.core.blocks import UnitBlock, rng_block_runs
from dte_dask.core.cells import Cells
from dte_dask.core.kernels import WARM_START_MIN_BLOCKS, CellKernel, influence_with_groups
from dte_dask.core.routes import select
from dte_dask.graph.reduce import DyadicCover, by_rng_block, compute, single_threaded_blas, tree_merge
from dte_dask.inference.bootstrap import boot_cover, boot_cover_apply, log_spans
from dte_dask.inference.variance import gram
from dte_dask.panel.panel import Panel


@dataclass(frozen=True)
class AttgtFit:
    att: np.ndarray  # (K,)
    ok: np.ndarray  # (K,) estimable
    n_treated: np.ndarray
    n_control: np.ndarray
    groups: np.ndarray  # group indices of the cohort columns appended to Psi
    pg: np.ndarray  # P(G = g), weighted, per group
    gram: np.ndarray  # (K', K') Psi'Psi (cluster sums when clustered)
    draws: np.ndarray | None  # (B, K') bootstrap perturbations of the estimates
    n: int
    n_clusters: int


# ----------------------------------------------------------------------------- block tasks
def _gram(block: UnitBlock, psi: np.ndarray, clustered: bool) -> np.ndarray:
    return gram(psi, block.rank, clustered)


def _moment_reductions(block: UnitBlock, cells: Cells, moment_stats, boot_apply, coef: tuple, block_size: int,
                       n_blocks: int, boot_kw: dict | None):
    """Affine-form moments (for Psi'Psi) and bootstrap draws of one partition, without forming Psi."""
    mom = by_rng_block(block, moment_stats, block_size, n_blocks, cells, *coef[:2])
    if boot_kw is None:
        return mom, None
    apply = boot_apply(block, cells, *coef)
    return mom, boot_cover_apply(block.rank, apply, coef[2].shape[2], order=apply.order, **boot_kw)


def _psi_reductions(block: UnitBlock, cells: Cells, est: dict, groups: np.ndarray, influence, clustered: bool,
                    block_size: int, n_blocks: int, boot_kw: dict | None):
    """Influence functions of one partition, reduced at once to its Gram and bootstrap covers.

    Psi is formed one RNG block at a time (n_rng_block x K') and reduced before the next, so
    memory stays at one RNG block's Psi, whatever the partition's size; the covers are the same
    as from the whole partition's Psi (every sum is per RNG block).
    """
    key, support = _cohort_support(block, cells, groups) if boot_kw is not None else (None, ())
    ids, grams, boots, spans = [], [], DyadicCover(n_blocks, {}), []
    for lo, hi, bid in rng_block_runs(block.rank, block_size):
        piece = block.take(slice(lo, hi))
        psi = influence_with_groups(piece, cells, est, groups, influence)  # one RNG block's rows
        ids.append(bid)
        if boot_kw is None:
            with single_threaded_blas():  # as by_rng_block
                grams.append(_gram(piece, psi, clustered))
            continue
        # the Gram from the bootstrap's cohort groups: each group's rows over its columns only
        rows_key = None if key is None else key[lo:hi]
        cover, g = boot_cover(psi, piece.rank, key=rows_key, support=support, with_gram=True, spans=spans, **boot_kw)
        boots, grams = boots.merge(cover), grams + [g]
    log_spans(spans)
    return DyadicCover.from_blocks(n_blocks, ids, grams), (boots if boot_kw is not None else None)


def _cohort_support(block: UnitBlock, cells: Cells, groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows keyed by their (effective) cohort, in ascending cohort order, and the columns of Psi
    each cohort can reach: the cells where it is treated or a control, and every cohort column
    (dense: ``1{G = g} w - P(G = g)``). A treated unit's influence lives in its own cohort's cells
    (and, with not-yet-treated controls, the cells it controls for); only controls are dense."""
    G = cells.effective_g(block.g)
    values, key = np.unique(G, return_inverse=True)  # sorted: the key orders rows by cohort
    reach = cells.treated(values) | cells.controls(values)
    tail = cells.K + np.arange(groups.size)
    return key.reshape(-1), [np.r_[np.flatnonzero(r), tail] for r in reach]


def _exact_sum(panel: Panel, func, *args, name: str):
    """Sum ``func(block, *args)`` over the panel, bit-identically for any partitioning."""
    parts = panel.map_blocks(by_rng_block, func, panel.rng_block_size, panel.n_rng_blocks, *args, name=name)
    return tree_merge(parts, name=f"{name}-sum")


def _rank_range(block: UnitBlock, lo: int, hi: int) -> UnitBlock:
    """The block's entities of ranks ``[lo, hi)`` (one RNG block)."""
    a, b = np.searchsorted(block.rank, [lo, hi])
    return block.take(slice(int(a), int(b)))


def sample_blocks(panel: Panel, k: int) -> list:
    """``k`` of the panel's RNG blocks, spread evenly over it (the first and the last among them),
    as delayed blocks: always the same ones, whatever the partitioning."""
    bs, n_blocks = panel.rng_block_size, panel.n_rng_blocks
    full = [j for j, s in enumerate(panel.summaries) if s.n_entities]
    firsts = np.array([panel.summaries[j].first_rank for j in full])
    take = dask.delayed(_rank_range, pure=True)
    out = []
    for b in np.unique(np.linspace(0, n_blocks - 1, k).round().astype(np.int64)):
        lo = int(b) * bs
        i = int(np.searchsorted(firsts, lo, side="right")) - 1  # partitions hold whole RNG blocks
        out.append(take(panel.blocks[full[max(i, 0)]], lo, lo + bs))
    return out


def run_kernel(panel: Panel, cells: Cells, kernel: CellKernel):
    """Every pass of ``kernel``: mapped over the blocks, reduced, handed back to its ``solve``. A
    kernel that starts a nuisance fit from a sample (``warm_sample`` RNG blocks) gets them first,
    on panels of at least ``WARM_START_MIN_BLOCKS`` RNG blocks."""
    k = getattr(kernel, "warm_sample", 0) if panel.n_rng_blocks >= WARM_START_MIN_BLOCKS else 0
    if k:
        kernel.sample = tuple(b for b in compute(*sample_blocks(panel, k)) if b.n)
    step = kernel.start()
    while step is not None:
        sums = compute(_exact_sum(panel, step.stats, cells, *step.args, name=f"attgt-{step.name}"))[0]
        step = kernel.solve(sums)
    return kernel.result()


# ----------------------------------------------------------------------------- the graph
def fit_cells(panel: Panel, cells: Cells, *, method: str, unbalanced: bool, groups: np.ndarray,
              n_boot: int, seed: int, boot_weights: str, label) -> AttgtFit:
    """Estimate every cell, keep Psi on the workers, return the small reduced arrays."""
    n = panel.n_units
    clustered = panel.spec.cluster is not None
    kernel = select(cells, method=method, p=len(panel.spec.covariates) + 1, repeated=unbalanced,
                    moments=not clustered, n=n, groups=groups, weighted=panel.spec.weights is not None,
                    cohorts=np.array(list(panel.cohort_sizes), dtype=float), label=label)
    fit = run_kernel(panel, cells, kernel).for_attgt(cells, n)

    boot_kw = None
    if n_boot > 0:
        boot_kw = dict(seed=seed, n_boot=n_boot, block_size=panel.rng_block_size, n_blocks=panel.n_rng_blocks,
                       n=n, kind=boot_weights)
    if kernel.affine:
        coef = kernel.coefficients(fit.est, groups)
        parts = panel.map_blocks(_moment_reductions, cells, kernel.moment_stats, kernel.boot_apply, coef,
                                 panel.rng_block_size, panel.n_rng_blocks, boot_kw, name="attgt-influence")
    else:
        parts = panel.map_blocks(_psi_reductions, cells, fit.est, groups, kernel.influence, clustered,
                                 panel.rng_block_size, panel.n_rng_blocks, boot_kw, name="attgt-influence")
    pick = dask.delayed(operator.getitem, pure=True)
    todo = [tree_merge([pick(p, 0, dask_key_name=f"attgt-gram-{p.key}") for p in parts], name="attgt-gram-sum")]
    if boot_kw is not None:
        todo.append(tree_merge([pick(p, 1, dask_key_name=f"mboot-{p.key}") for p in parts], name="mboot-merge"))
    results = compute(*todo)
    gram_total = kernel.gram(results[0], coef) if kernel.affine else results[0]
    return AttgtFit(att=fit.att, ok=fit.ok, n_treated=fit.stats["nD"], n_control=fit.stats["nC"], groups=groups,
                    pg=fit.est["pg"], gram=gram_total, draws=results[1] if n_boot > 0 else None, n=n,
                    n_clusters=panel.n_clusters if clustered else n)
