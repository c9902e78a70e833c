"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""
from __future__ import annotations


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of process ``pid`` and all its descendants (0 if it is gone)."""
    try:
        import psutil
    except ImportError:
        return 0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def median_timings(run, repeats: int):
    """Call ``run()`` ``repeats`` times; ``run`` returns ``(parts, value)`` with ``parts`` optional
    ``load`` / ``fit`` seconds. Returns the median ``seconds`` (whole call) and the median of each part
    reported, and the last ``value``."""
    import statistics
    import time

    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        parts, value = run()
        times.append({"total": time.perf_counter() - t0, **parts})
    medians = {"seconds": statistics.median(t["total"] for t in times)}
    for k in ("load", "fit"):
        if k in times[0]:
            medians[k] = statistics.median(t[k] for t in times)
    return medians, value
