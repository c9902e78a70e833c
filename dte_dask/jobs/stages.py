"""A job's stages with their share of the wall time: ``summary.json``'s ``stages`` and the final table.

A job runs in stages: ``cluster_start`` (when the job starts its own cluster), ``load``, one
stage per estimator (named as in the spec, aggregations included), ``NAME.bootstrap`` where the
estimator drew bootstrap multipliers, ``checks``, ``save``, ``report``. The
remainder of the wall time (the driver between stages) is the stage ``other``, so the shares
sum to 1.

Bootstrap time is the wall time during which the estimator drew multipliers: its ``mboot``
tasks (the merge of the per-partition draw sums) and the spans in which the tasks that form the
influence functions or scores (``attgt-influence``, ``<prefix>-scores``) ran their draws, which
those tasks report as worker events (:data:`dte_dask.inference.bootstrap.EVENT`; no per-unit
array leaves them). It is taken out of the estimator's own stage.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StageClock:
    """Wall seconds per stage, in the order the stages ran; the job's total since construction."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.kinds: dict[str, str] = {}
        self.bootstrap: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, kind: str | None = None) -> Iterator[None]:
        """Time the block as ``name`` (kind: load, estimator, checks, save, report, cluster)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            self.kinds[name] = kind or name

    def table(self) -> list[dict[str, Any]]:
        """The stages (bootstrap split out), each with ``seconds`` and ``share`` of the total so far."""
        total = time.perf_counter() - self.t0
        rows: list[dict[str, Any]] = []
        for name, secs in self.seconds.items():
            boot = min(self.bootstrap.get(name, 0.0), secs)
            rows.append({"name": name, "kind": self.kinds[name], "seconds": secs - boot})
            if boot > 0:
                rows.append({"name": f"{name}.bootstrap", "kind": "bootstrap", "seconds": boot, "estimator": name})
        rows.append({"name": "other", "kind": "other", "seconds": max(0.0, total - sum(r["seconds"] for r in rows))})
        total = max(total, sum(r["seconds"] for r in rows))
        for r in rows:
            r["share"] = r["seconds"] / total if total > 0 else 0.0
        return rows


def format_stages(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the stages: name, seconds and share of the job's wall time."""
    lines = [f"{'job stage':<30} {'seconds':>9} {'share':>6}"]
    for r in rows:
        lines.append(f"{r['name'][:30]:<30} {r['seconds']:9.2f} {r['share']:6.1%}")
    lines.append(f"{'total':<30} {sum(r['seconds'] for r in rows):9.2f} {sum(r['share'] for r in rows):6.1%}")
    return "\n".join(lines)
