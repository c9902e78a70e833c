"""Driver-side steps of the within-unit least squares of :mod:`dte_dask.core.within` (numpy only):
assembling the designs' normal equations, solving them, per-unit scores of a block, the cluster
score "meat" and CRV1 covariances. :mod:`dte_dask.graph.regress` maps the block steps over the
partitions and reduces them.

A *part* is one design of a regression and the global column of each of its columns (``part.spec``,
``part.place``; :class:`dte_dask.graph.regress.Part`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dte_dask.core.blocks import entity_sums
from dte_dask.core.errors import EstimationError
from dte_dask.core.fused import add_at_rows
from dte_dask.core.normal_equations import crv1, solve_dropping_collinear
from dte_dask.core.within import DesignSpec, design_scores, unit_scores


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


def assemble(parts: list[Any], stats: tuple[dict, ...], m: int):
    """The global normal equations from the designs' statistics (placed by their columns)."""
    A, b, raw, present, n_obs, levels = np.zeros((m, m)), np.zeros(m), np.zeros(m), np.zeros(m, dtype=bool), 0.0, 0
    for p, st in zip(parts, stats):
        A[np.ix_(p.place, p.place)] += st["A"]
        b[p.place] += st["b"]
        raw[p.place] += st["raw"]
        present[p.place] |= present_columns(p.spec, st)
        n_obs += float(st["n_obs"])
        levels += int(np.count_nonzero(st["level_n"]))  # fixed-effect levels observed
    return A, b, raw, present, n_obs, levels


def solve_pooled(parts: list[Any], stats: tuple[dict, ...], names: list[str], nuisance: np.ndarray, what: str):
    """The pooled regression: its solution, observations and observed fixed-effect levels."""
    A, b, raw, present, n_obs, levels = assemble(parts, stats, len(names))
    if n_obs == 0:
        raise EstimationError("no observation is left in the regression (every unit is a singleton or dropped)")
    return solve_dropping_collinear(A, b, raw, names, nuisance, present, what), n_obs, levels


def present_columns(spec: DesignSpec, st: dict) -> np.ndarray:
    """Local columns that take part: dummies with observations, and every covariate."""
    present = st["col_n"] > 0
    present[spec.n_fe:spec.n_fe + spec.p] = True
    return present


def local_nuisance(spec: DesignSpec) -> np.ndarray:
    nuis = np.zeros(spec.m, dtype=bool)
    nuis[:spec.n_fe] = True
    return nuis


def solve_part(p: Any, st: dict, names: list[str]):
    local_names = [names[j] for j in p.place]
    try:
        return solve_dropping_collinear(st["A"], st["b"], st["raw"], local_names, local_nuisance(p.spec), present_columns(p.spec, st))
    except EstimationError:
        return None


def crv_fit(sol, meat: np.ndarray, n_obs: float, levels: int, G: float, units: float, nuisance: np.ndarray) -> CrvFit:
    df_k = int(np.count_nonzero(sol.kept & ~nuisance)) + levels
    cov, c = crv1(sol.inv, meat, n_obs, df_k, int(G))
    return CrvFit(beta=sol.beta, kept=sol.kept, cov=cov, n_obs=int(n_obs), n_clusters=int(G),
                  n_units=int(units), df_k=df_k, ssc=c)


def block_scores(block: Any, parts: list[Any], m: int, betas: list[np.ndarray], part_betas: list) -> np.ndarray:
    """(n, m + sum of per-design widths + 1 + per-design count) array: pooled scores in global
    columns (summed over designs), per-design scores at the per-design fits, then 0/1 flags of
    units used in the pooled fit and in each per-design fit (written in place: no concatenated copy)."""
    n = block.n
    fitted = [pb is not None for pb in part_betas]
    widths = [m] + [p.spec.m for p, f in zip(parts, fitted) if f]
    out = np.zeros((n, sum(widths) + 1 + sum(fitted)))
    off, flag_col, j = m, sum(widths), 0
    for p, beta, pb in zip(parts, betas, part_betas):
        sel, scores, used = unit_scores(block, p.spec, beta, *([] if pb is None else [pb]))
        add_at_rows(out, sel, p.place, scores[0])  # a design's scores into its units' rows and global columns
        out[sel[used], flag_col] = 1.0
        if pb is not None:
            out[sel if sel.size < n else slice(None), off:off + p.spec.m] = scores[1]
            out[sel[used], flag_col + 1 + j] = 1.0
            off += p.spec.m
            j += 1
    return out


def score_meat(chunk: Any, rows: np.ndarray, widths: list[int]) -> dict[str, np.ndarray]:
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


def scores_meat(chunk: Any, parts: list[Any], m: int, betas: list[np.ndarray], part_betas: list,
                widths: list[int], out: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`score_meat` of :func:`block_scores` on one RNG block (``chunk``), in one step; the
    pooled scores are written into ``out`` (n, m) when given (the bootstrap's input).

    Clustered by unit (every entity one unit), each design is within-transformed once for the
    pooled scores and its own fit's meat (:func:`dte_dask.core.within.design_scores`), which never
    forms the per-design scores; a single design whose pooled scores are not asked for (no ``out``)
    forms no scores at all."""
    n = chunk.n
    if not (n and bool(np.all(chunk.rank[1:] != chunk.rank[:-1]))):  # clusters of several units
        rows = block_scores(chunk, parts, m, betas, part_betas)
        if out is not None:
            out[...] = rows[:, :m]
        return score_meat(chunk, rows, widths)
    lone = len(parts) == 1 and out is None
    pooled = np.zeros((n, m)) if out is None else out
    used_any = np.zeros(n, dtype=bool)
    res: dict[str, np.ndarray] = {"meat0": np.zeros((m, m))}
    j = 1
    for p, beta, pb in zip(parts, betas, part_betas):
        own = () if pb is None else (pb,)
        direct = len(parts) == 1 and p.spec.m == m and bool(np.all(p.place == np.arange(m)))
        sel, scores, used, meats = design_scores(chunk, p.spec, () if lone else (beta,), ((beta,) if lone else ()) + own,
                                                 out=pooled if direct else None)
        if lone:
            res["meat0"][np.ix_(p.place, p.place)] = meats.pop(0)
        elif scores[0] is not pooled:
            add_at_rows(pooled, sel, p.place, scores[0])
        used_any[sel[used]] = True
        if pb is not None:
            res[f"meat{j}"] = meats[0]
            res[f"G{j}"] = res[f"units{j}"] = np.array(float(np.count_nonzero(used)))
            j += 1
    if not lone:
        res["meat0"] = pooled.T @ pooled
    res["G0"] = res["units0"] = np.array(float(np.count_nonzero(used_any)))
    return res


def coef_map(inv: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(m, k): maps a unit's pooled score ``s`` (m,) to its contribution ``s @ inv[:, cols]`` to the
    coefficients ``cols``. Applied before the multipliers, ``V @ (S @ A) = (V @ S) @ A``: the
    bootstrap multiplies a k-wide matrix instead of the m-wide scores (k: reported coefficients,
    m: every column, fixed-effect dummies included)."""
    return np.ascontiguousarray(inv[:, cols])


def coef_scores(scores: np.ndarray, cmap: np.ndarray) -> np.ndarray:
    """(n, k) per-unit contributions to the coefficients: ``scores @ cmap`` (:func:`coef_map`)."""
    return scores @ cmap
