"""Multiplier bootstrap with streams keyed by RNG block, so draws never depend on partitioning.

Entity (unit, or cluster when clustering) with stable index r belongs to RNG block
b = r // block_size. Draws ``[c*CHUNK, (c+1)*CHUNK)`` of block b come from
``SeedSequence(seed, spawn_key=(b, c))``: a matrix (CHUNK x block_size) whose column r - b*block_size
is entity r's multiplier. Each partition turns its blocks into B x K partial sums
``sum_i V_ib psi_i / n``, and partial sums are added along the fixed tree of
:class:`~dte_dask.core.dyadic.DyadicCover`: the draws are bit-identical for any number of
partitions, workers or threads.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from dte_dask import config
from dte_dask.core.blocks import rng_block_runs
from dte_dask.core.dyadic import DyadicCover
from dte_dask.core.multipliers import (CHUNK, BootWeights, DenseMultipliers, Multipliers, key_runs, multipliers,
                                       rademacher_bits)
from dte_dask.exceptions import SpecError
from dte_dask.inference.signs import SignBits
from dte_dask.inference.support import support_rows
from dte_dask.inference.threads import single_threaded_blas
from dte_dask.inference.variance import entity_sums

__all__ = ["CHUNK", "EVENT", "RATE", "BootWeights", "boot_cover", "boot_cover_apply", "check_bootstrap_cost",
           "log_spans", "multipliers"]

EVENT = "dte-dask-bootstrap"  # worker event topic: the spans of a task's draws, for the job's stage table

RATE = {"rademacher": 2e8, "mammen": 1e8}  # multipliers per core-second (order of magnitude, to state a cost)

# Rademacher draws from the bits (tables of 2^8 signed sums per 8 entities, ~(256 + B) w additions)
# beat float multipliers times psi (16 B w flops, plus drawing the floats) from about 100 (w = 17)
# to 200 (w = 120) draws on a 2-core EPYC; below this many draws the dense product is kept (and
# numba, ~75 MB private and ~130 MB shared per process once loaded, is never imported).
BITS_MIN_DRAWS = 256


def check_bootstrap_cost(n_boot: int, *, n_entities: int | None, width: int | None, kind: str,
                         block_size: int | None = None) -> None:
    """Refuse a bootstrap beyond the limits ``dte_dask.bootstrap.*`` before any work starts.

    Multipliers are drawn for whole RNG blocks, CHUNK draws at a time (one CHUNK x block_size
    matrix in memory, whatever ``n_boot``); what grows with ``n_boot`` is the work,
    ``n_boot x n_blocks x block_size`` multipliers, and the ``n_boot x width`` draws that come back
    to the driver. Both are checked against the configured limits. ``n_entities`` / ``width``
    None (not known yet, before the panel is loaded): one RNG block and one column, a lower bound.

    Raises
    ------
    SpecError
        Stating the estimated cost, the limit and how to raise it.
    """
    bs = int(config.get("rng-block-size", block_size))
    bound = "at least " if n_entities is None or width is None else ""
    n_blocks = max(1, -(-int(n_entities or 1) // bs))
    work = float(n_boot) * n_blocks * bs
    mem = float(n_boot) * max(int(width or 1), 1) * 8.0
    max_work = float(config.get("bootstrap.max-multipliers"))
    max_mem = float(config.get("bootstrap.max-draws-bytes"))
    over = []
    if work > max_work:
        over.append(("max-multipliers", f"{max_work:.3g} multipliers"))
    if mem > max_mem:
        over.append(("max-draws-bytes", f"{_gib(max_mem)}"))
    if not over:
        return
    secs = work / RATE.get(kind, 1e8)
    keys = " and ".join(f"dte_dask.bootstrap.{k} ({lim})" for k, lim in over)
    env = ", ".join(f"DASK_DTE_DASK__BOOTSTRAP__{k.upper().replace('-', '_')}" for k, _ in over)
    raise SpecError(
        f"n_boot={n_boot} is too costly: {bound}about {work:.3g} multipliers to draw ({n_blocks} RNG block(s) of "
        f"{bs} entities x {n_boot} draws; roughly {_duration(secs)} of one core) and {bound}{_gib(mem)} of draws "
        f"({n_boot} x {width or 1}) on the driver, beyond {keys}. Lower n_boot, or raise the limit with "
        f"dask.config.set({{'dte_dask.bootstrap.{over[0][0]}': ...}}) or the environment variable(s) {env}")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def _duration(secs: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if secs >= size:
            return f"{secs / size:.3g} {unit}"
    return f"{secs:.3g} seconds"


def boot_cover(
    psi: np.ndarray, rank: np.ndarray, *, seed: int, n_boot: int, block_size: int, n_blocks: int,
    n: int, kind: BootWeights, key: np.ndarray | None = None, support: Sequence[np.ndarray | None] = (),
    with_gram: bool = False, spans: list[tuple[float, float]] | None = None,
) -> DyadicCover | tuple[DyadicCover, np.ndarray]:
    """Per-RNG-block partial draws ``sum_i V_bi psi_i / n`` of one partition, as a cover.

    ``key`` (per row, ints) and ``support`` (per key, the columns where rows of that key may be
    nonzero; None: all) describe a sparse Psi: within each RNG block the entities are grouped by
    key (ascending, then by rank: an order defined by the data, never by the partitioning) and each
    group's rows multiply only its columns. An entity whose rows have different keys (clusters
    mixing them), or a group with a nonzero outside its support, takes every column.
    ``with_gram``: also S'S (S: Psi, or its cluster sums; :func:`dte_dask.inference.variance.gram`),
    formed group by group over the same supports (each group's block of the Gram only).
    ``spans``: see :func:`boot_cover_apply`.
    """
    width = psi.shape[1]
    if psi.shape[0] == 0:
        empty = DyadicCover(n_blocks, {})
        return (empty, np.zeros((width, width))) if with_gram else empty
    starts = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]])
    S = entity_sums(psi, rank)
    kw = dict(seed=seed, n_boot=n_boot, block_size=block_size, n_blocks=n_blocks, n=n, kind=kind, spans=spans)
    if key is None:
        cover = boot_cover_apply(rank[starts], lambda M, a, b: M.matmul(0, b - a, S[a:b]), width, **kw)
        if not with_gram:
            return cover
        with single_threaded_blas():
            return cover, S.T @ S
    ekey = np.asarray(key)[starts]
    if starts.size < key.shape[0]:  # clusters: a cluster whose units differ in key is dense
        mixed = np.minimum.reduceat(key, starts) != np.maximum.reduceat(key, starts)
        ekey = np.where(mixed, -1, ekey)
    plan = _SupportPlan(S, ekey, support, with_gram)
    cover = boot_cover_apply(rank[starts], plan.apply, width, order=plan.order, **kw)
    return (cover, plan.gram) if with_gram else cover


class _SupportPlan:
    """``V @ S[a:b]`` for the entities of one RNG block, group by group over their support (and,
    ``with_gram``, S'S accumulated the same way: ``gram``)."""

    def __init__(self, S: np.ndarray, ekey: np.ndarray, support: Sequence[np.ndarray | None],
                 with_gram: bool = False) -> None:
        self.S, self.ekey = S, ekey
        every = np.arange(S.shape[1])
        # a support of every column, in order, is no support: the group's rows are taken whole
        self.support = [None if c is None or (c.size == every.size and np.array_equal(c, every)) else c
                        for c in support]
        self.groups: list[tuple[int, int, np.ndarray | None, np.ndarray]] = []
        self.gram = np.zeros((S.shape[1], S.shape[1])) if with_gram else None

    def order(self, a: int, b: int) -> np.ndarray:
        """Entities a..b-1 (offsets) grouped by key; prepares each group's rows and columns.

        Each group's rows are gathered over its support only, and checked in the same pass
        (:func:`~dte_dask.inference.support.support_rows`): a group with a nonzero outside its
        support takes every column."""
        perm, runs = key_runs(self.ekey[a:b])
        rows = a + perm
        groups = []
        for lo, hi, g in runs:
            cols = self.support[g] if 0 <= g < len(self.support) else None
            if cols is not None:
                sub, inside = support_rows(self.S, rows[lo:hi], cols)
                if not inside:  # a nonzero outside the support stated: every column
                    cols = None
            if cols is None:
                sub = self.S.take(rows[lo:hi], axis=0)
            groups.append((lo, hi, cols, sub))
        self.groups = groups
        if self.gram is not None:
            for _, _, cols, sub in groups:
                if cols is None:
                    self.gram += np.dot(sub.T, sub)
                else:
                    self.gram[np.ix_(cols, cols)] += np.dot(sub.T, sub)
        return perm

    def apply(self, M: Multipliers, a: int, b: int) -> np.ndarray:
        out = np.zeros((M.n_draws, self.S.shape[1]))
        for lo, hi, cols, rows in self.groups:
            if cols is None:
                out += M.matmul(lo, hi, rows)
            else:
                out[:, cols] += M.matmul(lo, hi, rows)
        return out


def boot_cover_apply(
    ent_rank: np.ndarray, apply: Callable[[Multipliers, int, int], np.ndarray], width: int, *, seed: int,
    n_boot: int, block_size: int, n_blocks: int, n: int, kind: BootWeights,
    order: Callable[[int, int], np.ndarray] | None = None, spans: list[tuple[float, float]] | None = None,
) -> DyadicCover:
    """Draws of one partition, given how to apply multipliers to its entities.

    ``ent_rank`` holds the sorted stable indices of the partition's entities; ``apply(M, a, b)``
    returns ``V @ psi[a:b]`` (width columns) for the multipliers ``M`` of entities ``a..b-1``
    (:class:`~dte_dask.core.multipliers.Multipliers`: ``M.matmul(lo, hi, rows)`` is ``V[:, lo:hi] @ rows``
    for ``M.n_draws`` draws), however the caller represents their influence functions. Rademacher
    multipliers come as bits for all draws of an RNG block at once
    (:class:`~dte_dask.inference.signs.SignBits`) when ``n_boot >= BITS_MIN_DRAWS``, others as
    float chunks of CHUNK draws. With
    ``order``, ``order(a, b)`` is called once per RNG block (entities ``a..b-1``) and returns a
    permutation of ``0..b-a-1``: the multipliers' entities then come in that order.
    The draws' span (start, stop) is told to the scheduler (:func:`log_spans`), or appended to
    ``spans`` when given: a task that draws RNG block by RNG block tells them all at once.
    """
    t0 = time.time()
    ids, leaves = [], []
    with single_threaded_blas():  # same kernel (and rounding) in every process and thread
        for a, b, bid in rng_block_runs(ent_rank, block_size):
            pos = ent_rank[a:b] - bid * block_size
            if order is not None:
                pos = pos[order(a, b)]
            elif pos[-1] - pos[0] + 1 == pos.size:  # contiguous entities (the usual case): a view, no copy
                pos = slice(int(pos[0]), int(pos[-1]) + 1)
            if kind == "rademacher" and n_boot >= BITS_MIN_DRAWS:  # all draws at once, from the bits
                out = apply(SignBits(*rademacher_bits(seed, bid, n_boot, block_size, cols=pos)), a, b)
            else:
                out = np.empty((n_boot, width))
                for c, lo in enumerate(range(0, n_boot, CHUNK)):
                    hi = min(lo + CHUNK, n_boot)
                    V = multipliers(seed, bid, c, hi - lo, block_size, kind, cols=pos)
                    out[lo:hi] = apply(DenseMultipliers(V), a, b)
            ids.append(bid)
            out /= n  # in place: one n_boot x width array per RNG block, no second copy
            leaves.append(out)
    if spans is None:
        log_spans([(t0, time.time())])
    else:
        spans.append((t0, time.time()))
    return DyadicCover.from_blocks(n_blocks, ids, leaves)


def log_spans(spans: Sequence[tuple[float, float]]) -> None:
    """Tell the scheduler (topic :data:`EVENT`, one event) when this task drew multipliers: the
    draws run inside the tasks that form the influence functions, so the task stream alone cannot
    time them. One event per task, not per RNG block: each event wakes the worker's event loop."""
    if not spans:
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a distributed worker (synchronous scheduler, tests)
        return
    worker.log_event(EVENT, {"spans": [[float(a), float(b)] for a, b in spans]})
