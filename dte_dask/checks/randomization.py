"""Randomization inference: permute cohort labels across units and re-estimate the aggregate ATT.

Under the sharp null of no effect for any unit, and if cohorts were assigned exchangeably across
units, every permutation of the cohort labels is as likely as the observed one, so the rank of
the observed statistic among the permuted ones gives an exact p-value (Fisher; for DiD see e.g.
MacKinnon & Webb 2020, Roth et al. 2023 §6).

Randomness
----------
``SeedSequence(seed).spawn(n_perm)`` gives one stream per permutation r; a permutation is drawn
without ever gathering labels on the driver: the r-th child's first grandchild allocates the
cohort labels to the panel's RNG blocks (sequential multivariate hypergeometric draws over the
fixed blocks of ``rng_block_size`` units), and grandchild ``1 + b`` shuffles the labels given to
RNG block b among its units. This is an exactly uniform random permutation, and it does not depend
on the number of partitions, workers or threads.

Tasks: one per (partition, chunk of ``perms_per_task`` permutations) and pass, each summing the
cell statistics of its units under every permutation of its chunk with ``att_gt``'s kernels
(:mod:`dte_dask.checks._engine`: any ``est_method``, with or without covariates; ``ipw`` / ``dr``
with covariates take one more pass per Newton step of the propensity logit and one for the
propensity-weighted moments); the sums are tree-reduced per chunk and the driver turns them into
aggregate ATTs (:func:`dte_dask.results.aggregate.aggregate_map`), exactly ``att_gt``'s numbers
on the permuted data.

With a regression estimator (``estimator="event_study" | "stacked_did" | "sun_abraham"``) the
estimator itself runs on each permuted panel (same permutations, one estimator graph per
permutation: keep ``n_perm`` moderate), and the statistic is the mean of its post-treatment
(event time >= 0) coefficients.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.checks._base import CheckResult
from dte_dask.checks._engine import (
    Prepared,
    check_estimator,
    check_positive_int,
    compute,
    derived_panel,
    fit,
    post_mean,
    prepare,
    run_regression,
    with_g,
)
from dte_dask.core.cells import Cells
from dte_dask.exceptions import EstimationError, SpecError
from dte_dask.core.blocks import UnitBlock, rng_block_runs
from dte_dask.results.aggregate import AggKind, aggregate_map


@dataclass(frozen=True, repr=False, eq=False)
class RandomizationResult(CheckResult):
    """Observed aggregate ATT, its permutation distribution and the randomization p-value."""

    check_kind = "randomization"

    statistic: str
    observed: float
    draws: np.ndarray  # (n_perm,) the statistic under each permutation (NaN if not estimable)
    p_value: float
    n_perm: int
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_valid(self) -> int:
        return int(np.isfinite(self.draws).sum())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"statistic": [self.statistic], "observed": [self.observed], "p_value": [self.p_value],
                             "n_perm": [self.n_perm], "n_valid": [self.n_valid], "seed": [self.seed]})

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"table": self.to_frame(), "draws": pd.DataFrame({"statistic": self.draws})}

    def summary(self) -> str:
        lines = [f"Randomization inference: {self.statistic} ATT under {self.n_perm} permutations of cohort labels",
                 f"  observed ATT:        {self.observed: .6f}",
                 f"  two-sided p-value:   {self.p_value:.4f}   (1 + #|ATT_perm| >= |ATT_obs|) / (1 + valid permutations)",
                 f"  valid permutations:  {self.n_valid} of {self.n_perm}, seed {self.seed}",
                 f"  estimator:           {self.options.get('estimator', '')}, control group "
                 f"{str(self.options.get('control_group', '')).replace('_', ' ')}"]
        return "\n".join(lines)

    def plot(self, *, backend: str = "bokeh") -> Any:
        from dte_dask.plotting import plot_randomization

        return plot_randomization(self.draws, self.observed, p_value=self.p_value, statistic=self.statistic,
                                  backend=backend)  # type: ignore[arg-type]


def randomization_check(
    data: Any, *, outcome: str | None = None, unit: str | None = None, time: str | None = None,
    group: str | None = None, treatment: str | None = None, covariates: Sequence[str] | str | None = None,
    weights: str | None = None, control_group: str = "never_treated", base_period: str = "varying",
    aggregate: AggKind = "simple", n_perm: int = 999, seed: int | None = None, perms_per_task: int = 64,
    est_method: str = "dr", estimator: str = "att_gt", estimator_options: dict[str, Any] | None = None,
    npartitions: int | None = None,
) -> RandomizationResult:
    """Randomization-inference p-value of the aggregate ATT (``aggregate`` as in ``att_gt(...).aggregate``).

    Parameters
    ----------
    data, outcome, unit, time, group, treatment, covariates, weights : as for :func:`dte_dask.att_gt`
    control_group, base_period, est_method : as for :func:`dte_dask.att_gt`
    aggregate : "simple" | "dynamic" | "group" | "calendar"
        Which overall ATT is the test statistic (default: the simple weighted average of post cells).
    n_perm : int
        Number of permutations R. The p-value is ``(1 + #{r: |T_r| >= |T_obs|}) / (1 + R_valid)``.
    seed : int, optional
        Root of the ``SeedSequence``; drawn and recorded if None.
    perms_per_task : int
        Permutations evaluated per task (tasks = partitions x ceil(R / perms_per_task) per pass).
    estimator : "att_gt" | "event_study" | "stacked_did" | "sun_abraham"
        With a regression estimator the statistic is the mean of its post-treatment event-time
        coefficients (``aggregate`` must stay "simple").
    estimator_options : dict, optional
        Further options of the regression estimator (e.g. ``window`` of stacked_did).

    Notes
    -----
    Labels are permuted across units, so the test is exact when cohorts are exchangeable across
    units (e.g. randomized adoption dates). With a ``cluster`` column the assignment is usually by
    cluster, which this check does not model, so clustered panels are rejected.
    """
    from dte_dask.estimators.options import InferenceOptions, parse_options

    parse_options(InferenceOptions, seed=seed)  # a non-negative integer or None, refused before any work
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise SpecError(f"n_perm must be a positive integer, got {n_perm!r}")
    n_perm = check_positive_int("n_perm", n_perm)
    perms_per_task = check_positive_int("perms_per_task", perms_per_task)
    if aggregate not in ("simple", "dynamic", "group", "calendar"):
        raise SpecError(f"aggregate={aggregate!r} is not one of ['simple', 'dynamic', 'group', 'calendar']")
    opts = check_estimator(estimator, est_method, estimator_options)
    if estimator != "att_gt" and aggregate != "simple":
        raise SpecError(f"aggregate={aggregate!r} applies to att_gt; with estimator={estimator!r} the statistic is "
                        "the mean of the post-treatment event-time coefficients (leave aggregate='simple')")
    prep = prepare(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                   covariates=covariates, weights=weights, control_group=control_group, base_period=base_period,
                   npartitions=npartitions, est_method=est_method, estimator=estimator)
    if prep.panel.spec.cluster is not None:
        raise SpecError("randomization_check permutes labels across units; load the panel without a cluster column")
    seed = int(np.random.SeedSequence().entropy) if seed is None else int(seed)
    panel = prep.panel
    codes = np.array(sorted(panel.cohort_sizes))  # every cohort value present, inf = never treated
    bs = panel.rng_block_size
    (counts,) = compute(panel.map_blocks(_block_counts, codes, bs, name="ri-counts"))
    block_counts: dict[int, np.ndarray] = {}
    for d in counts:
        block_counts.update(d)
    blocks = np.array(sorted(block_counts))
    alloc = _allocate(seed, n_perm, blocks, np.array([block_counts[b] for b in blocks]))
    chunks = [range(lo, min(lo + perms_per_task, n_perm)) for lo in range(0, n_perm, perms_per_task)]
    allocs = [{int(b): alloc[rr.start:rr.stop, i] for i, b in enumerate(blocks)} for rr in chunks]
    if estimator == "att_gt":
        # batch 0: the observed data; batch 1 + c: chunk c of the permutations
        batches = [Permutations(None, 0, seed, codes, bs, prep.cells)]
        batches += [Permutations(a, rr.start, seed, codes, bs, prep.cells) for a, rr in zip(allocs, chunks)]
        sizes = [1] + [len(rr) for rr in chunks]
        fits = fit(panel, batches, sizes, [[prep.cells] * m for m in sizes], prep.p, prep.method, groups=prep.groups,
                   name="ri")
        observed = _statistic(*fits[0][0], prep, panel.n_units, aggregate)
        draws = [_statistic(att, est, prep, panel.n_units, aggregate) for batch in fits[1:] for att, est in batch]
        statistic = aggregate
    else:
        observed = post_mean(run_regression(estimator, panel, opts))[0]
        draws = []
        for a, rr in zip(allocs, chunks):
            for j, r in enumerate(rr):
                perm = derived_panel(panel, _PermutedBlock(a, j, r, seed, codes, bs), name=f"ri-panel-{r}")
                try:
                    draws.append(post_mean(run_regression(estimator, perm, opts))[0])
                except EstimationError:
                    draws.append(float("nan"))
        statistic = "post-treatment mean"
    draws_a = np.array(draws, dtype=float)
    ok = np.isfinite(draws_a)
    tol = 1e-12 * max(1.0, abs(observed))
    p = float((1 + np.sum(np.abs(draws_a[ok]) >= abs(observed) - tol)) / (1 + ok.sum()))
    return RandomizationResult(statistic=statistic, observed=float(observed), draws=draws_a, p_value=p,
                               n_perm=n_perm, seed=seed, options={**prep.options, "aggregate": statistic,
                                                                  "perms_per_task": perms_per_task,
                                                                  "estimator_options": opts})


# ----------------------------------------------------------------------------- driver helpers
def _statistic(att: np.ndarray, est: dict[str, Any], prep: Prepared, n: int, kind: AggKind) -> float:
    c = prep.cells
    panel = prep.panel
    if np.isnan(att[~c.reference]).all():
        return float("nan")
    att = np.where(c.reference, 0.0, att)
    try:
        m = aggregate_map(kind, att=att, group=c.g.astype(float), time=c.t.astype(float),
                          event=(c.t - c.g).astype(float), groups=prep.groups.astype(float),
                          pg=est["stats"]["Swg"] / n, last_time=float(panel.n_periods - 1), first_time=0.0,
                          na_rm=True)
    except EstimationError:  # nothing estimable under this permutation
        return float("nan")
    return float(m.overall_att)


def _allocate(seed: int, n_perm: int, blocks: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(n_perm, n_blocks, n_codes) label counts per RNG block: a uniform permutation's block margins."""
    total = counts.sum(axis=0)
    sizes = counts.sum(axis=1)
    out = np.empty((n_perm, len(blocks), counts.shape[1]), dtype=np.int64)
    for r, child in enumerate(np.random.SeedSequence(seed).spawn(n_perm)):
        rng = np.random.default_rng(child.spawn(1)[0])
        left = total.copy()
        for i, size in enumerate(sizes):
            if i == len(sizes) - 1:
                out[r, i] = left
                break
            draw = rng.multivariate_hypergeometric(left, int(size)) if left.sum() else np.zeros_like(left)
            out[r, i] = draw
            left = left - draw
    return out


# ----------------------------------------------------------------------------- kernels
def _block_counts(block: UnitBlock, codes: np.ndarray, bs: int) -> dict[int, np.ndarray]:
    """Units of each cohort code in each RNG block of this partition."""
    out = {}
    for a, b, bid in rng_block_runs(block.rank, bs):
        out[bid] = np.array([(block.g[a:b] == c).sum() for c in codes], dtype=np.int64)
    return out


def _permuted_g(block: UnitBlock, alloc: dict[int, np.ndarray], j: int, r: int, seed: int, codes: np.ndarray,
                bs: int) -> np.ndarray:
    """Cohorts of this block's units under permutation ``r`` (row ``j`` of the chunk's allocation)."""
    g = np.empty(block.n)
    perm_seq = np.random.SeedSequence(seed, spawn_key=(r,))
    for a, b, bid in rng_block_runs(block.rank, bs):
        labels = np.repeat(codes, alloc[bid][j])
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(*perm_seq.spawn_key, 1 + bid)))
        g[a:b] = rng.permutation(labels)
    return g


class Permutations:
    """One chunk of permutations of a block (``alloc=None``: the observed data, one experiment)."""

    def __init__(self, alloc: dict[int, np.ndarray] | None, r0: int, seed: int, codes: np.ndarray, bs: int,
                 cells: Cells) -> None:
        self.alloc, self.r0, self.seed, self.codes, self.bs, self.cells = alloc, int(r0), int(seed), codes, int(bs), cells

    def __call__(self, block: UnitBlock) -> list[tuple[UnitBlock, Cells]]:
        if self.alloc is None:
            return [(block, self.cells)]
        n_r = next(iter(self.alloc.values())).shape[0]
        return [(with_g(block, _permuted_g(block, self.alloc, j, self.r0 + j, self.seed, self.codes, self.bs)),
                 self.cells) for j in range(n_r)]

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("ri-permutations", tokenize(self.alloc), self.r0, self.seed, tokenize(self.codes), self.bs,
                tokenize(self.cells))


class _PermutedBlock:
    """The block under one permutation (for the regression estimators, via a derived panel)."""

    def __init__(self, alloc: dict[int, np.ndarray], j: int, r: int, seed: int, codes: np.ndarray, bs: int) -> None:
        self.alloc, self.j, self.r, self.seed, self.codes, self.bs = alloc, int(j), int(r), int(seed), codes, int(bs)

    def __call__(self, block: UnitBlock) -> UnitBlock:
        return with_g(block, _permuted_g(block, self.alloc, self.j, self.r, self.seed, self.codes, self.bs))

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("ri-permuted-block", tokenize({b: a[self.j] for b, a in self.alloc.items()}), self.r, self.seed,
                tokenize(self.codes), self.bs)
