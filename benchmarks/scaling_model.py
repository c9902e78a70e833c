"""Scaling study, the task-stream cost model: per-prefix task costs fitted on the 1x1 runs, replayed
for N slots, C cores and P partitions (the formula is in scaling.py's docstring), and the memory
projection per worker."""
from __future__ import annotations

import math

from scaling_common import REDUCE_SUFFIXES, MiB


# ------------------------------------------------------------------------------------ model
def _is_reduce(prefix: str) -> bool:
    return prefix.endswith(REDUCE_SUFFIXES)


def fit_costs(rows: list[dict], step: str, periods: int) -> dict[str, tuple[float, float]]:
    """Per prefix ``(c, w)``: task seconds = c + w * units per partition, from the 1x1 runs."""
    import numpy as np

    pts: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        if r["step"] != step or r["periods"] != periods or r["config"] != "1x1" or "error" in r:
            continue
        u = r["units"] / r["partitions"]
        for ps in r["passes"]:
            for p, d in ps["prefixes"].items():
                if not _is_reduce(p):
                    pts.setdefault(p, []).append((u, d["compute"] / d["tasks"], d["tasks"]))
    costs = {}
    for p, v in pts.items():
        u, t, n = (np.array(x, dtype=float) for x in zip(*v))
        if len(set(u)) < 2:
            costs[p] = (0.0, float(np.average(t, weights=n) / u.mean()))
            continue
        A = np.c_[np.ones_like(u), u] * np.sqrt(n)[:, None]
        c, w = np.linalg.lstsq(A, t * np.sqrt(n), rcond=None)[0]
        if c < 0:  # no measurable fixed cost: proportional
            c, w = 0.0, float(np.sum(n * t * u) / np.sum(n * u * u))
        costs[p] = (float(c), float(max(w, 0.0)))
    return costs


def reference(rows: list[dict], step: str, periods: int, units: int | None = None) -> dict | None:
    """The 1x1 run of ``step`` used as the pass template: the one nearest to ``units`` (log scale),
    the largest if ``units`` is None."""
    cand = [r for r in rows if r["step"] == step and r["periods"] == periods and r["config"] == "1x1"
            and "error" not in r and not r.get("partition_units")]
    if not cand:
        return None
    if units is None:
        return max(cand, key=lambda r: r["units"])
    return min(cand, key=lambda r: (abs(math.log(r["units"] / units)), -r["units"]))


def contention(rows: list[dict], step: str, periods: int) -> float:
    """Slow-down of the tasks when every core is busy: summed compute of the widest single-threaded
    layout (``Cx1``, C = cores) over that of ``1x1``, at the largest size measured with both."""
    def compute(r):
        return sum(d["compute"] for ps in r["passes"] for p, d in ps["prefixes"].items() if not _is_reduce(p))

    best = None
    for r in rows:
        if (r["step"] != step or r["periods"] != periods or "error" in r or r.get("partition_units")
                or r["threads"] != 1 or r["workers"] != r["cores"] or r["workers"] < 2):
            continue
        ref = [q for q in rows if q["step"] == step and q["periods"] == periods and q["config"] == "1x1"
               and q["units"] == r["units"] and "error" not in q and not q.get("partition_units")]
        if ref and (best is None or r["units"] > best[0]):
            best = (r["units"], compute(r) / compute(ref[0]))
    return max(1.0, best[1]) if best else 1.0


def predict(ref: dict, costs: dict, *, units: int, partitions: int, slots: int, cores: int,
            bandwidth: float = 1.25e9, hop: float | None = None, kappa: float = 1.0,
            sched: float = 1e-3) -> float:
    """Seconds for the step of ``ref`` at ``units`` with ``partitions`` on ``slots`` compute slots.

    ``kappa``: slow-down of a task while more than one core computes (shared memory bandwidth);
    ``sched``: seconds of the (single) scheduler's time per task (distributed documents about 1 ms);
    ``bandwidth``: bytes/s between workers for the reduction tree (10 GbE).
    """
    P_ref = ref["partitions"]
    total = 0.0
    for ps in ref["passes"]:
        n_red = sum(d["tasks"] for p, d in ps["prefixes"].items() if _is_reduce(p))
        n_map = ps["tasks"] - n_red
        # measured per-task round trip on one thread: wall not spent computing, per task
        rt = max(0.0, (ps["wall"] - ps["latency"] - ps["compute"]) / max(1, ps["tasks"]))
        h = rt if hop is None else hop
        a = 0.0
        out_bytes = 0.0
        for p, d in ps["prefixes"].items():
            if _is_reduce(p):
                continue
            k = d["tasks"] / P_ref
            c, w = costs.get(p, (0.0, d["compute"] / d["tasks"] / (ref["units"] / P_ref)))
            a += k * (c + w * units / partitions)
        # what travels up the tree: the partial sums (about the size of the reduction's own results);
        # the big per-partition intermediates (scores, long frames) stay on their worker
        out_bytes = max([d["nbytes"] for p, d in ps["prefixes"].items() if _is_reduce(p)], default=0.0)
        a += h * (n_map / P_ref)  # a partition's tasks follow each other, one round trip each
        makespan, left = 0.0, partitions
        while left > 0:
            active = min(slots, left)
            makespan += a * max(1.0, active / cores) * (kappa if min(active, cores) > 1 else 1.0)
            left -= active
        depth = math.ceil(math.log(partitions, 8)) + 1 if partitions > 1 else (1 if n_red else 0)
        reduce_t = depth * (h + 8 * out_bytes / bandwidth) if n_red else 0.0
        n_tasks = partitions * n_map / P_ref + (partitions / 7 + depth) * (n_red > 0)
        sched_t = sched * n_tasks  # the scheduler handles one task at a time, overlapping the compute
        total += ps["gap"] + ps["latency"] + max(makespan, sched_t) + reduce_t
        total += ps.get("tail", 0.0)
    return total


MODEL_KW: dict = {}


def predict_step(rows, step, periods, units, partitions, slots, cores, **kw):
    ref = reference(rows, step, periods, units)
    if ref is None:
        return None
    kw = {**MODEL_KW, **kw}
    kw.setdefault("kappa", contention(rows, step, periods))
    return predict(ref, fit_costs(rows, step, periods), units=units, partitions=partitions, slots=slots,
                   cores=cores, **kw)


def default_partitions(units: int, partition_units: int = 262144, block: int = 16384) -> int:
    n_blocks = -(-units // block)
    return -(-n_blocks // (partition_units // block))


def memory_projection(rows: list[dict], units: int, periods: int, workers: int) -> dict | None:
    """Peak MiB per worker for N single-threaded workers, from the 1x1 run at ``units``:
    an idle worker (the smallest 1x1 measurement's worker RSS) + the panel blocks / N + the transient
    of the most demanding step (1x1 peak - idle - blocks), scaled by the partition size."""
    r1 = [r for r in rows if r["config"] == "1x1" and r["units"] == units and r["periods"] == periods
          and "error" not in r and not r.get("partition_units")]
    tiny = [r for r in rows if r["config"] == "1x1" and "error" not in r and r.get("peak_workers_mib")]
    if not r1 or not tiny:
        return None
    idle = min(r["peak_workers_mib"] for r in tiny)
    blocks = r1[0]["block_bytes"] / MiB
    transient = max(r["peak_workers_mib"] for r in r1) - idle - blocks
    p_def = r1[0]["partitions"]
    p_n = min(max(workers, p_def), -(-units // 16384))
    return {"workers": workers, "idle": idle, "blocks": blocks,
            "default": idle + blocks / min(workers, p_def) + transient,
            "scaled": idle + blocks / min(workers, p_n) + transient * p_def / p_n, "partitions": p_n}
