"""Which column plays which role in a panel."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dte_dask.exceptions import SpecError


@dataclass(frozen=True)
class PanelSpec:
    """Column roles of a long panel (one row per unit and period).

    Exactly one of ``group`` (first treated period; 0, NaN or +inf = never treated) and
    ``treatment`` (an absorbing 0/1 indicator) must be given. ``cluster`` equal to ``unit`` is
    the default clustering by unit (R ``did``'s ``clustervars = idname``, fixest's ``~unit``) and
    is stored as no cluster column.

    ``repeated_cross_section``: every row is its own observation (R ``did``'s ``panel=FALSE``);
    ``unit`` is then a row id, one per row (a generated one when the data has none).
    """

    unit: str
    time: str
    outcome: str
    group: str | None = None
    treatment: str | None = None
    covariates: tuple[str, ...] = field(default_factory=tuple)
    weights: str | None = None
    cluster: str | None = None
    repeated_cross_section: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "covariates", _as_tuple(self.covariates))
        if self.cluster is not None and self.cluster == self.unit:
            object.__setattr__(self, "cluster", None)  # clustering by unit is the default
        if (self.group is None) == (self.treatment is None):
            raise SpecError("give exactly one of `group` (first treated period) and `treatment` (0/1 indicator)")
        roles = {"unit": self.unit, "time": self.time, "outcome": self.outcome}
        for name, col in roles.items():
            if not isinstance(col, str) or not col:
                raise SpecError(f"`{name}` must be a column name, got {col!r}")
        core = [self.unit, self.time, self.outcome, self.group_source]
        named = core + [c for c in (*self.covariates, self.weights, self.cluster) if c is not None]
        dup = sorted({c for c in core if named.count(c) > 1} | {c for c in self.covariates if list(self.covariates).count(c) > 1})
        if dup:
            raise SpecError(f"column(s) {dup} given for more than one role")

    @property
    def group_source(self) -> str:
        return self.group if self.group is not None else self.treatment  # type: ignore[return-value]

    @property
    def entity(self) -> str:
        """The column whose values are kept whole in one partition (cluster if given, else unit)."""
        return self.cluster or self.unit

    @property
    def columns(self) -> list[str]:
        cols = [self.unit, self.time, self.outcome, self.group_source, *self.covariates]
        cols += [c for c in (self.weights, self.cluster) if c is not None]
        return list(dict.fromkeys(cols))  # a weight may also be a covariate


def _as_tuple(cols: Sequence[str] | str | None) -> tuple[str, ...]:
    if cols is None:
        return ()
    if isinstance(cols, str):
        return (cols,)
    return tuple(cols)
