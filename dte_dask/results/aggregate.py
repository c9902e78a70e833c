"""Aggregations of ATT(g,t) (R ``did::aggte``): simple, dynamic, group, calendar.

Everything here is driver-side algebra on small arrays. Each aggregate is a linear map of the
augmented influence functions [Psi_cells, H_groups] (H_g = w 1{G=g} - P(G=g)), so its analytic
variance is c' Sigma c and its bootstrap draws are draws @ c, with no new pass over the data.
The coefficient on H reproduces R's estimated-weight term ``wif`` (REFERENCE §1.6).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dte_dask.exceptions import EstimationError, SpecError, examples

AggKind = Literal["simple", "dynamic", "group", "calendar"]


@dataclass(frozen=True)
class AggMap:
    """Estimates and their influence-function coefficients for one aggregation."""

    keys: np.ndarray  # event times / group labels / period labels (empty for simple)
    att: np.ndarray  # (m,)
    coef: np.ndarray  # (K', m)
    overall_att: float
    overall_coef: np.ndarray  # (K',)


def _weighted(sel: np.ndarray, att: np.ndarray, pg_cell: np.ndarray, gpos: np.ndarray, K: int, n_groups: int):
    """theta = sum_S a_k att_k, a = pg/sum_S pg, and its IF coefficients incl. the wif term."""
    coef = np.zeros(K + n_groups)
    tot = pg_cell[sel].sum()
    a = pg_cell[sel] / tot
    theta = float(a @ att[sel])
    coef[np.flatnonzero(sel)] = a
    np.add.at(coef, K + gpos[sel], att[sel] / tot)
    np.add.at(coef, K + gpos[sel], -float(att[sel] @ pg_cell[sel]) / tot**2)
    return theta, coef


def aggregate_map(
    kind: AggKind, *, att: np.ndarray, group: np.ndarray, time: np.ndarray, event: np.ndarray,
    groups: np.ndarray, pg: np.ndarray, last_time: float, first_time: float,
    min_e: float | None = None, max_e: float | None = None, balance_e: float | None = None,
    na_rm: bool = False, cell_labels: Sequence[tuple[Any, Any]] | None = None,
) -> AggMap:
    """Build the aggregation ``kind`` from cell estimates (all in label units of the time axis).

    ``cell_labels``: the (group, time) labels the user sees for each cell (as ``to_frame``), used
    in messages; the indices themselves otherwise.
    """
    K, G = att.size, groups.size
    nan = np.isnan(att)
    if nan.any() and not na_rm:
        idx = np.flatnonzero(nan)
        bad = [cell_labels[k] if cell_labels is not None else (group[k], time[k]) for k in idx]
        raise EstimationError(f"cannot aggregate: ATT(g,t) is NaN for cells (g, t) {examples(bad)}; "
                              "pass na_rm=True to drop them")
    usable = ~nan  # universal-base reference cells (att = 0) stay in, as in R
    gpos = np.searchsorted(groups, group)
    pg_cell = pg[gpos]
    max_e_ = np.inf if max_e is None else max_e
    min_e_ = -np.inf if min_e is None else min_e
    if kind == "simple":
        sel = usable & (group <= time) & (time <= group + max_e_)
        if not sel.any():
            raise EstimationError("no post-treatment cells to aggregate")
        theta, coef = _weighted(sel, att, pg_cell, gpos, K, G)
        return AggMap(np.empty(0), np.empty(0), np.empty((K + G, 0)), theta, coef)
    if kind == "dynamic":
        incl = usable.copy()
        eseq = np.unique(event[incl])
        if balance_e is not None:
            incl &= (last_time - group) >= balance_e
            eseq = np.unique(event[incl])
            eseq = eseq[(eseq <= balance_e) & (eseq >= balance_e - (last_time - first_time))]
        eseq = eseq[(eseq >= min_e_) & (eseq <= max_e_)]
        cols = [_weighted(incl & (event == e), att, pg_cell, gpos, K, G) for e in eseq]
        return _overall_mean(eseq, cols, eseq >= 0, K + G)
    if kind == "group":
        keep = [g for g in np.unique(group[usable]) if np.any(usable & (group == g) & (group <= time) & (time <= group + max_e_))]
        thetas, coefs = [], []
        for g in keep:
            sel = usable & (group == g) & (group <= time) & (time <= group + max_e_)
            c = np.zeros(K + G)
            c[np.flatnonzero(sel)] = 1.0 / sel.sum()
            thetas.append(float(att[sel].mean()))
            coefs.append(c)
        if not keep:
            raise EstimationError("no post-treatment cells to aggregate by group")
        thetas_a, C = np.array(thetas), np.column_stack(coefs)
        gp = np.searchsorted(groups, np.array(keep))
        pgg = pg[gp]
        tot = pgg.sum()
        overall = float(thetas_a @ pgg / tot)
        oc = C @ (pgg / tot)
        oc[K + gp] += thetas_a / tot - float(thetas_a @ pgg) / tot**2
        return AggMap(np.array(keep), thetas_a, C, overall, oc)
    if kind == "calendar":
        min_g = group.min()
        tseq = np.unique(time[usable & (time >= min_g)])
        cols = []
        keys = []
        for t in tseq:
            sel = usable & (time == t) & (group <= t) & (t <= group + max_e_)
            if sel.any():
                cols.append(_weighted(sel, att, pg_cell, gpos, K, G))
                keys.append(t)
        return _overall_mean(np.array(keys), cols, np.ones(len(keys), dtype=bool), K + G)
    raise SpecError(f"unknown aggregation {kind!r}; use 'simple', 'dynamic', 'group' or 'calendar'")


def _overall_mean(keys: np.ndarray, cols: list, post: np.ndarray, width: int) -> AggMap:
    if not cols:
        raise EstimationError("nothing to aggregate: the window leaves no cells")
    thetas = np.array([c[0] for c in cols])
    C = np.column_stack([c[1] for c in cols])
    if not post.any():
        return AggMap(keys, thetas, C, float("nan"), np.full(width, np.nan))
    return AggMap(keys, thetas, C, float(thetas[post].mean()), C[:, post].mean(axis=1))
