"""The numeric core: pure numpy / scipy, no Dask and nothing above it (tests/test_import_rules.py).

Block types (:mod:`~dte_dask.core.blocks`), cells, nuisance fits (:mod:`~dte_dask.core.logit`,
:mod:`~dte_dask.core.regression`), per-estimator kernels behind one interface
(:mod:`~dte_dask.core.kernels`, picked by :mod:`~dte_dask.core.routes`), within-unit least squares
(:mod:`~dte_dask.core.within`, :mod:`~dte_dask.core.ols`), bit-identical sums
(:mod:`~dte_dask.core.dyadic`), bootstrap multipliers, errors and the label formatter.
"""
