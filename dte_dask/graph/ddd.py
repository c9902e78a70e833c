"""The triple-differences task graph (wiring only; the estimator is in :mod:`dte_dask.core.ddd` and
:mod:`dte_dask.core.ddd_kernel`).

designs      every comparison design's rows (and outcome changes) picked once per RNG block and
             persisted on the workers for all the passes below;
passes 1..k  the DRDID kernel of every 2x2 comparison (:class:`dte_dask.core.ddd_kernel.DddCovKernel`
             on the comparison set): outcome regressions and the cohorts' weighted sizes, the
             propensity logits (one per design), weighted moments;
cells        only with several comparison cohorts per cell (not-yet-treated controls: the Gram and
             sums of the per-cohort DDD influence functions, for the GMM weights) or an unbalanced
             panel (units of each cell); a balanced panel's cell sizes are sums of cohort sizes;
influence    Psi (rows of one RNG block x (K + groups)) formed per design and reduced on the worker
             to Psi'Psi and the block's bootstrap draws, one RNG block at a time.
Every reduction goes through the RNG-block tree: bit-identical for any partitioning.
"""
from __future__ import annotations

import contextlib
import functools
import operator
from dataclasses import dataclass, replace

import dask
import dask.base
import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.ddd import (
    cell_sizes,
    cell_stats,
    combination,
    ddd_estimates,
    design_block,
    gmm_weights,
    layout,
)
from dte_dask.core.ddd_kernel import DddCovKernel, ddd_psi
from dte_dask.core.kernels import KernelArgs
from dte_dask.graph.attgt import AttgtFit, run_kernel
from dte_dask.graph.reduce import DyadicCover, by_rng_block, compute, single_threaded_blas, tree_merge
from dte_dask.inference.bootstrap import boot_cover, log_spans
from dte_dask.inference.variance import gram
from dte_dask.panel.panel import Panel


@dataclass(frozen=True)
class DddFit:
    fit: AttgtFit
    se_gmm: np.ndarray  # (K,) triplediff's GMM standard error of cells with several comparison cohorts
    n_comparisons: np.ndarray  # (K,) comparison cohorts combined per cell


def local_passes(panel: Panel):
    """Context for the passes of a single-partition panel on dask's default scheduler: the
    synchronous one (one block per pass leaves the threads nothing to share, and each hand-off to a
    pool thread is a wait for a core on a loaded machine). A configured scheduler or an active
    distributed Client is always respected; the numbers are the same either way."""
    if panel.npartitions == 1 and dask.base.get_scheduler() is None:
        return dask.config.set(scheduler="synchronous")
    return contextlib.nullcontext()


def _reductions(block: UnitBlock, cells: Cells, est: dict, groups: np.ndarray, clustered: bool,
                block_size: int, n_blocks: int, boot_kw: dict | None):
    """The cells' influence functions of one partition, one RNG block at a time (a DesignBlock's
    pieces), each reduced at once to its Gram and bootstrap draws: Psi never spans more than one
    RNG block, so no partition-sized array is allocated (and first touched) in this pass."""
    if block.n == 0:
        return DyadicCover(n_blocks, {}), (DyadicCover(n_blocks, {}) if boot_kw is not None else None)
    ids, grams, boots, spans = [], [], [], []
    with single_threaded_blas():  # many small products: threads would only oversubscribe
        for piece in block.pieces():
            psi = ddd_psi(piece, cells, est, groups)
            ids.append(int(piece.rank[0]) // block_size)
            grams.append(gram(psi, piece.rank, clustered))
            if boot_kw is not None:
                boots.append(boot_cover(psi, piece.rank, spans=spans, **boot_kw))
    log_spans(spans)
    b = functools.reduce(DyadicCover.merge, boots) if boots else None
    return DyadicCover.from_blocks(n_blocks, ids, grams), b


def _sum(panel: Panel, func, *args, name: str):
    parts = panel.map_blocks(by_rng_block, func, panel.rng_block_size, panel.n_rng_blocks, *args, name=name)
    return tree_merge(parts, name=f"{name}-sum")


def fit_ddd(panel: Panel, cells: Cells, *, qcol: int, method: str, groups: np.ndarray, n_boot: int, seed: int,
            boot_weights: str, label) -> DddFit:
    """Estimate every DDD cell; influence functions stay on the workers."""
    n = panel.n_units
    clustered = panel.spec.cluster is not None
    sizes: dict[float, int] = {}
    for g, c in panel.cohort_sizes.items():
        key = float(np.inf if g > cells.never_above or g == cells.never_alias else g)
        sizes[key] = sizes.get(key, 0) + c
    lay = layout(cells, sorted(sizes), qcol, complete_cases=not panel.is_balanced)
    # every comparison's rows picked once per RNG block and kept on the workers for all passes
    panel = replace(panel, blocks=tuple(dask.persist(*panel.map_blocks(design_block, lay.comp, panel.rng_block_size,
                                                                       name="ddd-designs"))))
    # one propensity logit per design; the first pass also sums the cohorts' weighted sizes
    kernel = DddCovKernel(KernelArgs(lay.comp, method, len(panel.spec.covariates), n, groups,
                                     panel.spec.weights is not None, None, label),
                          x_varying=any(s.x_varying for s in panel.summaries))
    kfit = run_kernel(panel, lay.comp, kernel)
    att_d, ok_d = ddd_estimates(lay, kfit.att, kfit.ok)
    K = cells.K
    gmm = bool(np.bincount(lay.cell[ok_d], minlength=K).max(initial=0) > 1)
    gram_d = sum_d = None
    if gmm or not panel.is_balanced:
        s = compute(_sum(panel, cell_stats, cells, lay, kfit.est, gmm, name="ddd-cells"))[0]
        n_cell = s["n_cell"]
        if gmm:
            gram_d, sum_d = s["gram"], s["sum"]
    else:  # every unit observed: the cells' sizes are sums of cohort sizes
        n_cell = cell_sizes(cells, lay, sizes)
    W, att, ok, se_gmm = gmm_weights(lay, K, att_d, ok_d, gram_d, sum_d, n_cell, n)
    ok &= ~cells.reference
    att = np.where(cells.reference, 0.0, att)
    pg = kfit.stats["Swg"] / n
    est = {"comp": lay.comp, "kernel": kfit.est, "A": combination(lay, W), "pg": pg}

    boot_kw = None
    if n_boot > 0:
        boot_kw = dict(seed=seed, n_boot=n_boot, block_size=panel.rng_block_size, n_blocks=panel.n_rng_blocks,
                       n=n, kind=boot_weights)
    parts = panel.map_blocks(_reductions, cells, est, groups, clustered, panel.rng_block_size, panel.n_rng_blocks,
                             boot_kw, name="ddd-influence")
    pick = dask.delayed(operator.getitem, pure=True)
    todo = [tree_merge([pick(p, 0, dask_key_name=f"ddd-gram-{p.key}") for p in parts], name="ddd-gram-sum")]
    if boot_kw is not None:
        todo.append(tree_merge([pick(p, 1, dask_key_name=f"ddd-mboot-{p.key}") for p in parts], name="ddd-mboot"))
    results = compute(*todo)
    n_treated = np.zeros(K)
    for d in range(lay.cell.size):  # the treated-and-eligible units of the cell
        n_treated[lay.cell[d]] = kfit.stats["nD"][np.flatnonzero(lay.comb[:, d])[0]]
    n_control = np.where(n_cell > 0, n_cell - n_treated, 0.0)  # every other unit of the cell
    fit = AttgtFit(att=att, ok=ok, n_treated=n_treated, n_control=n_control, groups=groups, pg=pg,
                   gram=results[0], draws=results[1] if boot_kw is not None else None, n=n,
                   n_clusters=panel.n_clusters if clustered else n)
    return DddFit(fit, se_gmm, np.bincount(lay.cell[ok_d], minlength=K))
