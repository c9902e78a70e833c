"""A terminal progress bar (with ETA) for everything the cluster runs while a job is active.

A small :class:`SchedulerPlugin` counts tasks as graphs arrive and as they finish; the client
polls those counts and renders them with ``rich``. Estimators submit several graphs one after
the other (statistics passes, influence, bootstrap), so the total grows as the job proceeds.
"""
from __future__ import annotations

import threading
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

PLUGIN_NAME = "dte-dask-progress"


class TaskCounter(SchedulerPlugin):
    """Counts tasks that start and finish, per task prefix (the dashboard's progress bars).

    Keys, not transitions, are counted: a task whose result was lost with a worker and is
    computed again counts once in the total, and leaves the finished ones until it is done again.
    """

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.added: dict[str, set[Any]] = {}
        self.done: dict[str, set[Any]] = {}
        self.erred = 0

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        from dask.utils import key_split

        if start == "released" and finish in ("waiting", "queued", "processing", "no-worker"):
            prefix = key_split(key)
            self.added.setdefault(prefix, set()).add(key)  # new work (data already in memory is not counted)
            self.done.get(prefix, set()).discard(key)  # (re)computed: a lost result is not done
        elif start == "processing" and finish == "memory":
            self.done.setdefault(key_split(key), set()).add(key)
        elif finish == "erred":
            self.erred += 1

    def snapshot(self) -> dict[str, Any]:
        return {"added": {p: len(k) for p, k in self.added.items()},
                "done": {p: len(k) for p, k in self.done.items()}, "erred": self.erred}


def _snapshot(dask_scheduler: Any) -> dict[str, Any] | None:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    if plugin is None:
        return None
    statuses = [ws.status.name for ws in dask_scheduler.workers.values()]
    return {**plugin.snapshot(), "workers": len(statuses), "paused": statuses.count("paused")}


def describe(stage: str, snap: dict[str, Any]) -> str:
    """The bar's text: the stage, the task prefix that runs now, and paused workers if any
    (a paused worker runs nothing until its memory falls below distributed's pause line)."""
    running = [p for p in snap["added"] if snap["done"].get(p, 0) < snap["added"][p]]
    what = running[-1] if running else "idle"
    what = "bootstrap" if "mboot" in what else what
    paused = snap.get("paused", 0)
    note = f" ({paused}/{snap['workers']} workers paused: memory)" if paused else ""
    return f"{stage}: {what}{note}"


class ProgressMonitor:
    """Context manager: register the counter and draw ``[stage] done/total ETA`` until exit."""

    def __init__(self, client: Any, *, enabled: bool = True, interval: float = 0.25,
                 plan: list[str] | None = None) -> None:
        self.client, self.enabled, self.interval = client, enabled, interval
        self.plan = list(plan or [])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stage = "starting"
        self._end = "done"  # the bar's last word: "stopped" when the job raised

    def set_stage(self, name: str) -> None:
        """Name the job's current stage (load, an estimator, checks) in front of the task prefix.

        With a ``plan`` (the job's stage names in order) the stage is shown as ``[i/n] name``.
        """
        self.stage = f"[{self.plan.index(name) + 1}/{len(self.plan)}] {name}" if name in self.plan else name

    def __enter__(self) -> ProgressMonitor:
        if not self.enabled:
            return self
        self.client.register_plugin(TaskCounter(), name=PLUGIN_NAME)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dte-dask-progress")
        self._thread.start()
        return self

    def _loop(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cols = [TextColumn("[bold]{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*cols, transient=False) as bar:
            task = bar.add_task("starting", total=None)
            while not self._stop.wait(self.interval):
                snap = self._poll()
                if snap is None:
                    continue
                total, done = sum(snap["added"].values()), sum(snap["done"].values())
                bar.update(task, total=max(total, 1), completed=done, description=describe(self.stage, snap))
            snap = self._poll()
            if snap is not None:
                total = sum(snap["added"].values())
                bar.update(task, total=max(total, 1), completed=sum(snap["done"].values()), description=self._end)

    def _poll(self) -> dict[str, Any] | None:
        try:
            return self.client.run_on_scheduler(_snapshot)
        except Exception:  # noqa: BLE001 - the scheduler may be busy or closing; try again later
            return None

    def __exit__(self, *exc: Any) -> None:
        self._end = "stopped" if exc and exc[0] is not None else "done"
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
