"""Classify a stage of a run from its measured metrics, and give advice with the numbers behind it.

Pure functions over plain numbers (no dask): :class:`StageMetrics` is what
:class:`~dte_dask.diagnose.monitor.RunMonitor` measures for one stage; :func:`classify_stage`
returns its :class:`Finding` (one class per stage, the first that applies in this order):

``memory-bound``      workers spilled to disk, or their peak memory came within 15 % of the limit;
``scheduler-bound``   many tiny tasks (median under 20 ms) with the compute slots mostly idle;
``imbalanced``        one worker was busy 1.5x the mean of the workers, or more;
``cpu-contended``     tasks ran, but their processes got the CPU for under half of that time
                      while the host's CPUs were 90 % busy or more: other processes took them;
``io-bound``          tasks ran, but their processes used the CPU for under half of that time
                      (waiting on disk or network: the host's CPUs were not saturated);
``compute-bound``     the slots were busy (60 % or more) and burning CPU: more cores help;
``idle``              none of the above: the stage was short or the driver did the work.

:func:`diagnose_run` adds the whole run's class (that of the stage with the largest wall time),
core-hours (wall time x the threads of all workers) and, with a price, the cost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["StageMetrics", "Finding", "classify_stage", "diagnose_run", "format_diagnosis"]

MiB = 2**20
SMALL_TASK_S = 0.020
MANY_TASKS = 200
MEMORY_HEADROOM = 0.85
IMBALANCE = 1.5
HOST_SATURATED = 0.9
SCHEDULER_TASK_S = 0.001  # distributed documents about 1 ms of scheduler time per task


@dataclass
class StageMetrics:
    """What one stage of a run cost, summed over the workers unless said otherwise."""

    name: str
    wall_s: float
    workers: int = 0
    threads: int = 0  # compute slots: threads of all workers
    cpu_s: float = 0.0  # CPU seconds of the worker processes during the stage
    n_tasks: int = 0
    task_s: float = 0.0  # summed compute time of the stage's tasks
    median_task_s: float = 0.0
    busy_s_per_worker: dict[str, float] = field(default_factory=dict)
    peak_worker_memory: int = 0  # bytes, the largest worker
    memory_limit: int = 0  # bytes per worker (0: none)
    spilled_bytes: int = 0  # written to disk by the workers during the stage
    transferred_bytes: int = 0  # sent between workers during the stage
    partitions: int | None = None
    host_busy: float | None = None  # share of the workers' hosts' CPU time that was busy (any process)
    host_iowait: float | None = None  # share of it waiting on I/O
    bootstrap_s: float = 0.0  # wall seconds in which multipliers were drawn (``mboot`` tasks, draw events)

    @property
    def utilization(self) -> float:
        """Busy share of the compute slots over the stage's wall time."""
        return self.task_s / (self.wall_s * self.threads) if self.wall_s > 0 and self.threads else 0.0

    @property
    def cpu_share(self) -> float:
        """CPU time of the worker processes per second of task time (1: tasks only compute)."""
        return self.cpu_s / self.task_s if self.task_s > 0 else 0.0

    @property
    def scheduler_overhead_s(self) -> float:
        """Estimated scheduler time: about 1 ms per task (distributed's documented figure)."""
        return self.n_tasks * SCHEDULER_TASK_S


@dataclass
class Finding:
    """The class of a stage, the evidence (measured numbers) and the advice."""

    stage: str
    kind: str
    evidence: str
    advice: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def classify_stage(m: StageMetrics) -> Finding:
    """The class of one stage (see the module docstring for the rules, in order)."""
    util = m.utilization
    if m.spilled_bytes > 0 or (m.memory_limit and m.peak_worker_memory > MEMORY_HEADROOM * m.memory_limit):
        need = max(m.peak_worker_memory + m.spilled_bytes / max(m.workers, 1), m.peak_worker_memory) / MEMORY_HEADROOM
        return Finding(
            m.name, "memory-bound",
            f"workers spilled {_fmt_bytes(m.spilled_bytes)} to disk; the largest worker peaked at "
            f"{_fmt_bytes(m.peak_worker_memory)} of a {_fmt_bytes(m.memory_limit) if m.memory_limit else 'unlimited'} "
            "limit",
            f"give each worker at least {_fmt_bytes(need)} (memory_limit), or the same memory to fewer threads "
            "per worker, or cut the panel into more, smaller partitions (data.npartitions) so one task holds less")
    if m.n_tasks >= MANY_TASKS and m.median_task_s < SMALL_TASK_S and util < 0.5:
        per_slot = max(1, m.threads)
        target = max(per_slot * 2, 1)
        return Finding(
            m.name, "scheduler-bound",
            f"{m.n_tasks:,} tasks with a median of {m.median_task_s * 1e3:.1f} ms kept the {m.threads} slots "
            f"{util:.0%} busy ({m.n_tasks / m.wall_s:,.0f} tasks/s; about {m.scheduler_overhead_s:.1f} s of "
            "scheduler time)",
            f"use fewer, larger partitions (about {target} for {m.threads} slots: data.npartitions, or "
            "dte_dask.partition-units), so each task computes for 100 ms or more")
    busy = list(m.busy_s_per_worker.values())
    if len(busy) >= 2 and sum(busy) > 0:
        mean = sum(busy) / len(busy)
        worst = max(m.busy_s_per_worker, key=lambda w: m.busy_s_per_worker[w])
        if m.busy_s_per_worker[worst] >= IMBALANCE * mean and m.busy_s_per_worker[worst] - mean > 0.1:
            evidence = (f"worker {worst} was busy {m.busy_s_per_worker[worst]:.2f} s, "
                        f"{m.busy_s_per_worker[worst] / mean:.1f}x the mean of {mean:.2f} s over {len(busy)} workers")
            if m.partitions is not None and m.partitions < m.threads:
                return Finding(m.name, "imbalanced", f"{evidence}; the panel has {m.partitions} partition(s) for "
                               f"{m.threads} compute slots",
                               f"cut the panel into at least {m.threads} partitions (data.npartitions: {m.threads}, "
                               "or a smaller dte_dask.partition-units) so every slot gets work")
            return Finding(
                m.name, "imbalanced", evidence,
                "check that partitions are of similar size (more partitions than slots evens them out) and that "
                "this worker's host is not slower or oversubscribed (NUMA binding: cluster.pin_cpus / numactl)")
    if m.task_s > 0.5 and m.cpu_share < 0.5 and m.host_busy is not None and m.host_busy >= HOST_SATURATED:
        return Finding(
            m.name, "cpu-contended",
            f"the worker processes used {m.cpu_s:.2f} CPU-s in {m.task_s:.2f} s of task time ({m.cpu_share:.0%}) "
            f"while the host's CPUs were {m.host_busy:.0%} busy: other processes held the cores",
            "run the workers on dedicated cores (a Slurm allocation, an idle node, or NUMA pinning), or give the "
            "cluster fewer threads than the cores left free")
    if m.task_s > 0.5 and m.cpu_share < 0.5:
        iowait = f"; the host's CPUs waited on I/O {m.host_iowait:.0%} of the time" if m.host_iowait is not None else ""
        return Finding(
            m.name, "io-bound",
            f"the worker processes used {m.cpu_s:.2f} CPU-s in {m.task_s:.2f} s of task time "
            f"({m.cpu_share:.0%}): tasks mostly waited on disk or network{iowait}",
            "read from faster storage, split the input into more files read in parallel, or give workers more "
            "threads than cores for the load stage")
    if util >= 0.6 and m.cpu_share >= 0.7:
        return Finding(
            m.name, "compute-bound",
            f"the {m.threads} slots were {util:.0%} busy and the tasks computed {m.cpu_share:.0%} of their time",
            f"add cores: with one partition or more per slot this stage scales with workers x threads "
            f"(now {m.workers} x {max(m.threads // max(m.workers, 1), 1)}); on multi-socket nodes pin workers to "
            "NUMA nodes")
    return Finding(m.name, "idle",
                   f"{m.n_tasks} tasks kept the {m.threads} slots {util:.0%} busy for {m.wall_s:.2f} s",
                   "nothing to tune here: the stage is short or the time is spent on the driver")


def diagnose_run(stages: list[StageMetrics], *, total_wall_s: float | None = None,
                 price_per_core_hour: float | None = None) -> dict[str, Any]:
    """The run's diagnosis: per-stage metrics and findings, its class, core-hours and cost."""
    findings = [classify_stage(s) for s in stages]
    wall = total_wall_s if total_wall_s is not None else sum(s.wall_s for s in stages)
    threads = max((s.threads for s in stages), default=0)
    core_hours = wall * threads / 3600.0
    main = max(zip(stages, findings, strict=True), key=lambda sf: sf[0].wall_s, default=None)
    out: dict[str, Any] = {
        "class": main[1].kind if main else "idle",
        "bottleneck_stage": main[0].name if main else None,
        "wall_s": wall,
        "threads": threads,
        "core_hours": core_hours,
        "stages": [{**asdict(s), "share": s.wall_s / wall if wall > 0 else 0.0,
                    "utilization": s.utilization, "cpu_share": s.cpu_share,
                    "scheduler_overhead_s": s.scheduler_overhead_s, **{f"finding_{k}": v for k, v in
                                                                      f.as_dict().items() if k != "stage"}}
                   for s, f in zip(stages, findings, strict=True)],
    }
    if price_per_core_hour is not None:
        if not (math.isfinite(price_per_core_hour) and price_per_core_hour >= 0):
            raise ValueError(f"price_per_core_hour must be a non-negative number, got {price_per_core_hour!r}")
        out["price_per_core_hour"] = price_per_core_hour
        out["cost"] = core_hours * price_per_core_hour
    return out


def format_diagnosis(diag: dict[str, Any]) -> str:
    """A plain-text table of the stages and the advice (for ``dte-dask run``)."""
    lines = [f"{'stage':<22} {'wall s':>8} {'share':>5} {'CPU s':>8} {'busy':>5} {'peak MiB':>9} {'spill MiB':>9} "
             f"{'xfer MiB':>9} {'tasks':>7}  class"]
    for s in diag["stages"]:
        lines.append(f"{s['name'][:22]:<22} {s['wall_s']:8.2f} {s['share']:5.0%} {s['cpu_s']:8.2f} {s['utilization']:5.0%} "
                     f"{s['peak_worker_memory'] / MiB:9.0f} {s['spilled_bytes'] / MiB:9.0f} "
                     f"{s['transferred_bytes'] / MiB:9.0f} {s['n_tasks']:7d}  {s['finding_kind']}")
    cost = f", cost {diag['cost']:.4f} at {diag['price_per_core_hour']:g}/core-hour" if "cost" in diag else ""
    lines.append(f"run: {diag['class']} (largest stage: {diag['bottleneck_stage']}); {diag['wall_s']:.1f} s on "
                 f"{diag['threads']} threads = {diag['core_hours']:.4f} core-hours{cost}")
    for s in diag["stages"]:
        if s["finding_kind"] != "idle":
            lines.append(f"  {s['name']}: {s['finding_evidence']}. Advice: {s['finding_advice']}.")
    return "\n".join(lines)
