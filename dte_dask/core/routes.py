"""Which ATT(g,t) kernel estimates a panel: one table instead of string dispatch (numpy only)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dte_dask.core.cells import Cells
from dte_dask.core.kernels import (
    CellKernel,
    KernelArgs,
    Label,
    MomentsKernel,
    RcsKernel,
    UncondKernel,
)
from dte_dask.core.kernels_cov import PanelCovKernel
from dte_dask.core.kernels_rc import RcCovKernel

# (repeated cross sections, covariates, cohort moments allowed) -> kernel
ROUTES: dict[tuple[bool, bool, bool], Callable[[KernelArgs], CellKernel]] = {
    (False, False, True): MomentsKernel,
    (False, False, False): UncondKernel,
    (False, True, True): PanelCovKernel,
    (False, True, False): PanelCovKernel,
    (True, False, True): RcsKernel,
    (True, False, False): RcsKernel,
    (True, True, True): RcCovKernel,
    (True, True, False): RcCovKernel,
}


def select(cells: Cells, *, method: str, p: int, repeated: bool, moments: bool, n: float,
           groups: np.ndarray | None = None, weighted: bool = False, cohorts: np.ndarray | None = None,
           label: Label | None = None) -> CellKernel:
    """The kernel of a route (:data:`ROUTES`).

    ``method``: est_method ("dr", "ipw", "reg"); ``p``: 1 + number of covariates; ``repeated``:
    repeated cross sections (or an unbalanced panel, estimated as R did does); ``moments``: the
    cohort-moment form may be used (balanced, unclustered; ``cohorts`` = the panel's cohort
    indices); ``n``: scale of the influence functions (units; 1 for the estimate's scale);
    ``groups``: cohorts whose weighted sizes the first pass also sums; ``weighted``: sampling
    weights; ``label``: period label for warnings (None: no warnings).
    """
    return ROUTES[(bool(repeated), p > 1, bool(moments))](
        KernelArgs(cells, method, p, n, groups, weighted, cohorts, label))
