"""Gardner (2021) two-stage difference-in-differences: ``two_stage_did``."""
from __future__ import annotations

import time as _time
from collections.abc import Sequence
from typing import Any

from dte_dask.estimators.event_study import resolve_panel
from dte_dask.estimators.imputation import fit_imputation
from dte_dask.estimators.options import TwoStageOptions, parse_options
from dte_dask.regression_results import RegressionResult


def two_stage_did(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    covariates: Sequence[str] | str | None = None,
    weights: str | None = None,
    cluster: str | None = None,
    horizons: Sequence[int] | None = None,
    pretrends: int = 0,
    allow_unbalanced_panel: bool | None = None,
    alpha: float = 0.05,
    npartitions: int | None = None,
) -> RegressionResult:
    """Two-stage DiD of Gardner (2021) with the Butts–Gardner GMM covariance.

    Stage 1: :math:`y_{it} = \\alpha_i + \\lambda_t + x_{it}'\\delta + \\varepsilon_{it}` on the untreated
    observations; stage 2: regress :math:`\\tilde y_{it} = y_{it} - \\hat\\alpha_i - \\hat\\lambda_t -
    x_{it}'\\hat\\delta` (all observations) without intercept on the event-time dummies
    :math:`1\\{t - G_i = h\\}`, h >= 0 (the event-time specification, reported at ``event_time``) and
    on the treatment dummy :math:`D_{it}` (the static specification: ``other``'s ``ATT`` row).

    Parameters
    ----------
    see :func:`dte_dask.imputation_did` (``horizons``: the event-time dummies of stage 2; None:
    every horizon observed; ``pretrends``: pre-treatment coefficients as ``imputation_did``'s, BJS
    Test 1, reported at negative event times, for pre-trend tests and ``honest_did``).

    Returns
    -------
    RegressionResult

    Notes
    -----
    The stage-2 coefficients are the sampling-weighted means of :math:`\\tilde y_{it}` over the
    treated observations of each horizon (and over all of them): exactly the imputation estimates
    of :func:`dte_dask.imputation_did` (the first stages coincide). The covariance propagates the
    first stage (Butts & Gardner 2022; R ``did2s``, pyfixest ``did2s``):

    .. math:: V = (X_2'WX_2)^{-1}\\sum_c \\psi_c\\psi_c'(X_2'WX_2)^{-1},\\quad
              \\psi_c = \\sum_{it\\in c} w_{it}\\big(x_{2,it}\\hat e_{2,it}
              - (X_2'WX_1)(X_{10}'WX_{10})^{-1}x_{1,it}\\hat\\varepsilon_{1,it}\\big),

    with no small-sample factor. The unit-effect block of :math:`(X_{10}'WX_{10})^{-1}` is never
    formed: first-stage residuals sum to zero within units, so only the within-unit (time dummy and
    covariate) block enters, solved on the driver at the size of the time effects. Stage-2 dummies
    for pre-treatment event times (did2s's leads) are not offered; ``pretrends`` adds BJS Test 1's.
    Units never observed untreated are dropped with a warning.
    """
    t0 = _time.perf_counter()
    opt = parse_options(TwoStageOptions, horizons=horizons, pretrends=pretrends)
    panel, cov_idx = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group,
                                   covariates=covariates, weights=weights, cluster=cluster,
                                   allow_unbalanced_panel=allow_unbalanced_panel, npartitions=npartitions)
    options = dict(estimator="two_stage_did", outcome=panel.spec.outcome, unit=panel.spec.unit, time=panel.spec.time,
                   group=panel.spec.group_source, covariates=[panel.spec.covariates[j] for j in cov_idx],
                   weights=panel.spec.weights, cluster=panel.spec.cluster, horizons=opt.horizons,
                   pretrends=opt.pretrends)
    return fit_imputation(panel, cov_idx, horizons=opt.horizons, pretrends=opt.pretrends, aux_partition="horizon",
                          leave_out=False, alpha=alpha, options=options, t0=t0, two_stage=True,
                          name="two_stage_did")
