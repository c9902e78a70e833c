"""Which ATT(g,t) cells exist: base periods, control sets and anticipation (pure metadata).

Follows R ``did`` 2.5 (``compute.att_gt``): periods and groups are period *indices* here
(0..T-1; never treated = ``inf``).

* ``varying`` base: for current periods c = 1..T-1, a pre-period cell (c < g) compares c with
  c-1; a post cell compares c with the last period before anticipation, g - delta - 1.
* ``universal`` base: every period c = 0..T-1 is compared with g - delta - 1; the cell c = g-delta-1
  is the reference and is reported as 0 with a zero influence function.
* controls: ``never_treated`` -> G = inf; ``not_yet_treated`` -> G > max(c, base) + delta and
  G != g (never-treated units included).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dte_dask.core.blocks import UnitBlock

ControlGroup = Literal["never_treated", "not_yet_treated"]
BasePeriod = Literal["varying", "universal"]


@dataclass(frozen=True)
class Cells:
    """K cells as parallel arrays (period indices)."""

    g: np.ndarray  # (K,) group index
    t: np.ndarray  # (K,) current period index
    base: np.ndarray  # (K,) base period index
    ctrl_min: np.ndarray  # (K,) controls have G > ctrl_min (inf -> never treated only)
    reference: np.ndarray  # (K,) bool: universal-base reference cell (att = 0)
    never_above: float = np.inf  # groups > this index count as never treated (T_max + delta)
    never_alias: float = np.nan  # a cohort coerced to never treated (no never-treated units)

    @property
    def K(self) -> int:
        return int(self.g.shape[0])

    @property
    def event_time(self) -> np.ndarray:
        return self.t - self.g

    def effective_g(self, G: np.ndarray) -> np.ndarray:
        """Groups as the estimator sees them: late or coerced cohorts become never treated."""
        if self.never_above == np.inf and np.isnan(self.never_alias):
            return G  # nothing to coerce (G > inf and G == nan are never true)
        return np.where((G > self.never_above) | (G == self.never_alias), np.inf, G)

    def treated(self, G: np.ndarray) -> np.ndarray:
        """(n, K) treated indicators."""
        return self.effective_g(G)[:, None] == self.g[None, :]

    def controls(self, G: np.ndarray) -> np.ndarray:
        """(n, K) control indicators."""
        G = self.effective_g(G)
        never = np.isinf(G)[:, None]
        nyt = (G[:, None] > self.ctrl_min[None, :]) & (G[:, None] != self.g[None, :])
        return np.where(np.isinf(self.ctrl_min)[None, :], never, nyt)

    def designs(self, x_varying: bool) -> list[np.ndarray]:
        """Cell indices grouped by design (treated cohort, control threshold, covariate period):
        the cells of a design share their units, covariates and nuisance fits."""
        xper = np.minimum(self.base, self.t) if x_varying else np.zeros(self.K, dtype=np.int64)
        keys: dict[tuple, list[int]] = {}
        for k, key in enumerate(zip(self.g.tolist(), self.ctrl_min.tolist(), xper.tolist())):
            keys.setdefault(key, []).append(k)
        return [np.array(v) for v in keys.values()]

    def design_rows(self, block: UnitBlock, ks: np.ndarray, buf: np.ndarray | None = None,
                    G: np.ndarray | None = None):
        """Rows of a design: mask, X = [1, covariates] (earlier period of the 2x2, as R did), d, w.
        ``buf``: a flat float array of at least n_m (p + 1) elements to hold X (the caller's,
        reused across designs); ``G``: ``self.effective_g(block.g)``, when the caller has it."""
        k0 = int(ks[0])
        G = self.effective_g(block.g) if G is None else G
        D = G == self.g[k0]
        C = np.isinf(G) if np.isinf(self.ctrl_min[k0]) else (G > self.ctrl_min[k0]) & ~D
        m = D | C
        idx = np.flatnonzero(m)
        x = block.x_at(int(min(self.base[k0], self.t[k0])))
        shape = (idx.size, x.shape[1] + 1)  # with_intercept(x[m]), written in place
        X = np.empty(shape) if buf is None else buf[:shape[0] * shape[1]].reshape(shape)
        X[:, 0] = 1.0
        np.take(x, idx, axis=0, out=X[:, 1:], mode="clip")  # (np.take: several times faster than x[idx])
        return m, X, D[idx].astype(float), block.w[idx]


def make_cells(
    groups: list[float],
    n_periods: int,
    *,
    control_group: ControlGroup,
    anticipation: int,
    base_period: BasePeriod,
    never_above: float = np.inf,
    never_alias: float = np.nan,
) -> Cells:
    """Enumerate cells for treated ``groups`` (sorted period indices, each > ``anticipation``)."""
    rows: list[tuple[int, int, int, float, bool]] = []
    for g in groups:
        pret = math.ceil(g - anticipation) - 1  # last period index p with p + delta < g
        if pret < 0:
            continue
        currents = range(1, n_periods) if base_period == "varying" else range(n_periods)
        for c in currents:
            if base_period == "varying" and g > c:
                base = c - 1
            else:
                base = pret
            ref = base_period == "universal" and c == pret
            if control_group == "never_treated":
                cmin = math.inf
            else:
                cmin = max(c, base) + anticipation
            rows.append((int(g), c, base, float(cmin), ref))
    if not rows:
        arrays = [np.empty(0, dtype=d) for d in (np.int64, np.int64, np.int64, float, bool)]
    else:
        g_, t_, b_, c_, r_ = zip(*rows)
        arrays = [np.array(g_, dtype=np.int64), np.array(t_, dtype=np.int64), np.array(b_, dtype=np.int64),
                  np.array(c_, dtype=float), np.array(r_, dtype=bool)]
    return Cells(*arrays, never_above=float(never_above), never_alias=float(never_alias))
