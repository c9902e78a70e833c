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


def run_worker(script: str, spec: dict, timeout: float, on_poll=None):
    """Run ``python script --_worker SPEC_FILE`` in its own process session and wait for it: ``spec``
    (plus ``out``, the file the worker writes its JSON result to) goes to the worker; every 50 ms the
    RSS of its process tree is sampled and ``on_poll()`` called; after ``timeout`` s the session is
    killed. Returns the worker's JSON (or ``{"error": ...}`` if it wrote none) with ``peak_mib`` (the
    sampled peak, or the process's own ``ru_maxrss`` if higher), and the process's ``rusage``."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="bench_worker_") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps({**spec, "out": str(out_file)}))
        proc = subprocess.Popen([sys.executable, str(Path(script).resolve()), "--_worker", str(spec_file)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        start, peak = time.monotonic(), 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss(proc.pid))
            if on_poll is not None:
                on_poll()
            if time.monotonic() - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        out = json.loads(out_file.read_text()) if out_file.exists() else \
            {"error": f"worker died (exit {os.waitstatus_to_exitcode(status)}): {err.strip()[-300:]}"}
    out["peak_mib"] = max(peak, usage.ru_maxrss * 1024) / 2**20
    return out, usage
