"""Outcome changes of a design (core.covariates.design_dy) against the plain definition Y_t - Y_base.

design_dy forms them from column slices (runs of consecutive periods) and, for column-major
outcomes, gathers each period's column straight into its output; whatever the cell layout (varying
or universal base, never-treated or not-yet-treated controls, anticipation), the outcome layout
(row- or column-major) or the output given (fresh, or a column block of a wider row-major array),
the numbers must be those of the definition, bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import make_cells
from dte_dask.core.covariates import design_dy, designs


def _block(order: str, n: int = 300, T: int = 9, seed: int = 0) -> UnitBlock:
    rng = np.random.default_rng(seed)
    g = rng.choice([2.0, 4.0, 5.0, 7.0, np.inf], size=n)
    y = np.asarray(rng.normal(size=(n, T)) * 10 + 140, order=order)
    x = rng.normal(size=(n, 2))
    return UnitBlock(np.arange(n), np.arange(n), g, np.ones(n), None, y, x)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("control_group,base_period,anticipation", [
    ("never_treated", "varying", 0), ("not_yet_treated", "varying", 0),
    ("never_treated", "universal", 0), ("not_yet_treated", "universal", 1)])
def test_design_dy_is_the_outcome_change(order, control_group, base_period, anticipation):
    block = _block(order)
    cells = make_cells([2.0, 4.0, 5.0, 7.0], 9, control_group=control_group, anticipation=anticipation,
                       base_period=base_period)
    for ks in designs(cells, False):
        m = cells.design_rows(block, ks)[0]
        ref = block.y[m][:, cells.t[ks]] - block.y[m][:, cells.base[ks]]
        np.testing.assert_array_equal(design_dy(block, cells, m, ks), ref)
        wide = np.full((m.sum(), ks.size + 3), np.nan)  # a row-major column block, as the influence pass gives
        design_dy(block, cells, m, ks, out=wide[:, :ks.size])
        np.testing.assert_array_equal(wide[:, :ks.size], ref)
        assert np.isnan(wide[:, ks.size:]).all()


def test_design_dy_any_cell_order():
    """Cells in an arbitrary order (no runs of consecutive periods) still give Y_t - Y_base."""
    block = _block("F", seed=1)
    cells = make_cells([4.0], 9, control_group="never_treated", anticipation=0, base_period="varying")
    perm = np.random.default_rng(2).permutation(cells.K)
    m = cells.design_rows(block, perm)[0]
    ref = block.y[m][:, cells.t[perm]] - block.y[m][:, cells.base[perm]]
    np.testing.assert_array_equal(design_dy(block, cells, m, perm), ref)
