"""Cell enumeration against R `did`'s rules (compute.att_gt.R; REFERENCE §1.2, §1.7)."""
from __future__ import annotations

import numpy as np
import pytest

from dte_dask.core.cells import make_cells


def _table(c):
    return [(int(g), int(t), int(b), float(m), bool(r)) for g, t, b, m, r in zip(c.g, c.t, c.base, c.ctrl_min, c.reference)]


def test_varying_base_never_treated():
    c = make_cells([2.0], 5, control_group="never_treated", anticipation=0, base_period="varying")
    # pre cells compare t with t-1; post cells with g-1
    assert _table(c) == [(2, 1, 0, np.inf, False), (2, 2, 1, np.inf, False), (2, 3, 1, np.inf, False), (2, 4, 1, np.inf, False)]


def test_universal_base_emits_reference_cell():
    c = make_cells([2.0], 4, control_group="never_treated", anticipation=0, base_period="universal")
    assert [(g, t, b, r) for g, t, b, _, r in _table(c)] == [(2, 0, 1, False), (2, 1, 1, True), (2, 2, 1, False), (2, 3, 1, False)]


def test_not_yet_treated_threshold_uses_later_of_current_and_base():
    c = make_cells([3.0], 5, control_group="not_yet_treated", anticipation=1, base_period="varying")
    tab = {(t, b): m for _, t, b, m, _ in _table(c)}
    # anticipation 1: base of g=3 is 3-1-1 = 1; controls need G > max(t, base) + 1
    assert tab[(3, 1)] == 4 and tab[(4, 1)] == 5
    assert tab[(1, 0)] == 2  # pre-period cell vs t-1
    assert tab[(2, 1)] == 3  # within the anticipation window: pseudo-ATT vs t-1


def test_controls_and_treated_masks():
    c = make_cells([2.0, 3.0], 5, control_group="not_yet_treated", anticipation=0, base_period="varying")
    G = np.array([2.0, 3.0, 4.0, np.inf])
    k = [i for i, (g, t) in enumerate(zip(c.g, c.t)) if g == 2 and t == 2][0]
    assert c.treated(G)[:, k].tolist() == [True, False, False, False]
    assert c.controls(G)[:, k].tolist() == [False, True, True, True]
    k = [i for i, (g, t) in enumerate(zip(c.g, c.t)) if g == 2 and t == 3][0]
    assert c.controls(G)[:, k].tolist() == [False, False, True, True]


def test_group_without_pre_period_is_skipped():
    c = make_cells([0.0, 2.0], 4, control_group="never_treated", anticipation=0, base_period="varying")
    assert set(c.g.tolist()) == {2}


@pytest.mark.parametrize("alias", [3.0])
def test_coerced_cohort_is_never_treated(alias):
    c = make_cells([2.0], 3, control_group="never_treated", anticipation=0, base_period="varying", never_alias=alias)
    G = np.array([2.0, 3.0])
    assert c.controls(G)[:, 0].tolist() == [False, True]
