"""Results on disk and the self-contained HTML report built from them.

:func:`save_results` writes a RESULTS_DIR (``dte-dask run`` uses it too)::

    RESULTS_DIR/
      summary.json                  format "dte_dask.results/1": metadata (versions, seeds,
                                    cluster, timings, user keys), panel description, column
                                    names, and one entry per estimator and per check (kind,
                                    summary text, overall ATT, pre-test, files below)
      estimators/NAME.csv|.parquet  the result's ``to_frame()`` (the schema of dte_dask.results.base)
      estimators/NAME.event_study.csv   canonical event-study frame (event_time, estimate, se,
                                    ci_lower, ci_upper [pointwise], band_lower, band_upper [uniform])
      estimators/NAME.cells.csv     ATT(g,t) results: canonical cells (group, time + the above)
      estimators/NAME.AGG.csv       ATT(g,t) results: the registered aggregations (dynamic, group, calendar)
      estimators/NAME.by_cohort.csv stacked DiD: per-sub-experiment estimates (``by_cohort()``)
      checks/NAME.csv|.parquet      a check's table; checks/NAME.PART.csv its other frames
      checks/NAME.html|.png         the plot of a check that saves one (honest_did, pretest_power)

:func:`write_report` turns such a directory into one HTML file that opens offline (bokeh's JS is
inlined; no network access): the panel description, each estimator's table and plots, the
estimators overlaid, the checks, and the run metadata. Only frames are read back, never pickles.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping
from importlib import metadata as _md
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.labels import plain
from dte_dask.exceptions import SpecError

FORMAT = "dte_dask.results/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PACKAGES = ("dte_dask", "dask", "distributed", "numpy", "numba", "pandas", "scipy", "pyarrow", "bokeh")


# ----------------------------------------------------------------------------- saving
def save_results(results: Mapping[str, Any], out_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
                 *, disclosure: Any = None) -> dict[str, Any]:
    """Write ``{name: result}`` (estimator results, aggregations, check results or frames) to ``out_dir``.

    ``metadata`` (JSON-able: job spec, cluster profile, ...) is merged over what is collected
    automatically (package versions, platform, time, each result's seed and timings, the active
    ``Client``'s scheduler and workers, if a client is active). Returns the summary also written
    to ``summary.json``.

    ``disclosure`` (a :class:`dte_dask.disclosure.DisclosureSpec` or its mapping) suppresses small
    cells and rounds counts in every file and in the summary (:mod:`dte_dask.disclosure`).
    """
    from dte_dask.checks import CheckResult
    from dte_dask.disclosure import DisclosureSpec

    pol = disclosure if isinstance(disclosure, DisclosureSpec) else DisclosureSpec.model_validate(disclosure or {})

    out = os.fspath(out_dir)
    for sub in ("estimators", "checks"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    summary: dict[str, Any] = {"format": FORMAT, "estimators": {}, "checks": {}}
    seeds, timings, panel, columns = {}, {}, None, {}
    for name, obj in results.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"result name {name!r} must match {_NAME.pattern} (it becomes a file name)")
        if isinstance(obj, CheckResult):
            summary["checks"][name] = _save_check(out, name, obj, pol)
            continue
        entry = _save_estimator(out, name, obj, pol)
        summary["estimators"][name] = entry
        seed = _seed(obj)
        if seed is not None:
            seeds[name] = seed
        if getattr(obj, "timings", None):
            timings[name] = dict(obj.timings)
        if panel is None and isinstance(getattr(obj, "panel", None), Mapping) and obj.panel:
            panel = dict(obj.panel)
        if not columns:
            from dte_dask.plotting import axis_names

            columns = axis_names(obj)
    for entry in summary["checks"].values():
        if not columns and entry.get("options"):
            columns = {k: entry["options"][k] for k in ("outcome", "unit", "time") if entry["options"].get(k)}
    meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
            "platform": platform.platform(), "seeds": seeds, "timings": timings, "cluster": _cluster_info()}
    user = dict(metadata or {})
    from dte_dask.disclosure import panel_description

    summary["panel"] = panel_description(user.pop("panel", None) or panel, pol)
    if pol.active:
        summary["disclosure"] = {**pol.model_dump(), "description": pol.describe()}
    summary["columns"] = user.pop("columns", None) or columns
    if user.get("diagnosis") is not None:  # a job's run diagnosis (dte_dask.diagnose): top level
        summary["diagnosis"] = user.pop("diagnosis")
    summary["metadata"] = {**meta, **user}
    summary = _jsonable(summary)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
    return summary


def _write(out: str, rel: str, df: pd.DataFrame, pol: Any, parquet: bool = False) -> dict[str, str]:
    from dte_dask.disclosure import apply_frame

    df = apply_frame(df, pol).reset_index(drop=True)
    df.to_csv(os.path.join(out, rel + ".csv"), index=False)
    files = {"csv": rel + ".csv"}
    if parquet:
        df.to_parquet(os.path.join(out, rel + ".parquet"), index=False)
        files["parquet"] = rel + ".parquet"
    return files


def _save_check(out: str, name: str, obj: Any, pol: Any) -> dict[str, Any]:
    from dte_dask.disclosure import apply_frame, table_text

    files = {}
    for part, df in obj.frames().items():
        rel = f"checks/{name}" if part == "table" else f"checks/{name}.{part}"
        files[part] = _write(out, rel, df, pol, parquet=part == "table")["csv"]
    entry = {"kind": obj.check_kind, "class": type(obj).__name__, "summary": obj.summary(), "files": files,
             "options": dict(getattr(obj, "options", {}) or {})}
    for attr in ("alpha", "threshold", "observed", "p_value", "statistic", "n_perm", "seed", "wald"):
        if hasattr(obj, attr):
            entry[attr] = getattr(obj, attr)
    if hasattr(obj, "passed"):
        entry["passed"] = obj.passed
    entry.update(obj.facts())
    if obj.save_plots:
        files.update(_save_plots(out, f"checks/{name}", obj, entry))
    if pol.active:
        table = apply_frame(obj.to_frame(), pol)
        entry["summary"] = table_text(table, pol, f"{type(obj).__name__} ({obj.check_kind})")
        if "suppressed" in table and table["suppressed"].any():  # a verdict over a suppressed row
            for attr in ("observed", "p_value", "statistic", "passed"):
                if attr in entry:
                    entry[attr] = None
            entry["suppressed"] = True
    return entry


def _save_plots(out: str, rel: str, obj: Any, entry: dict[str, Any]) -> dict[str, str]:
    """The check's ``plot()`` as ``rel.html`` (bokeh, opens offline) and ``rel.png`` (matplotlib)."""
    from dte_dask.plotting import save_figure

    files = {"plot_html": save_figure(obj.plot(backend="bokeh"), os.path.join(out, rel + ".html"))}
    try:
        files["plot_png"] = save_figure(obj.plot(backend="matplotlib"), os.path.join(out, rel + ".png"))
    except ImportError as exc:  # matplotlib is an optional extra
        entry.setdefault("notes", []).append(f"no PNG plot: {exc}")
    return {k: os.path.relpath(v, out).replace(os.sep, "/") for k, v in files.items()}


def _save_estimator(out: str, name: str, obj: Any, pol: Any) -> dict[str, Any]:
    entry = _save_estimator_files(out, name, obj, pol)
    if pol.active:
        _disclose_entry(entry, obj, pol)
    return entry


def _disclose_entry(entry: dict[str, Any], obj: Any, pol: Any) -> None:
    """The summary entry of a result under disclosure control: its text from the disclosed
    table, its overall estimate, pre-test and post-period average judged by their own counts."""
    from dte_dask.disclosure import apply_frame, entry_values, frame_counts, table_text

    table = obj if isinstance(obj, pd.DataFrame) else obj.to_frame()
    entry["summary"] = table_text(apply_frame(table, pol), pol, str(entry.get("class", "")))
    if entry.get("overall") is not None:
        src = obj.aggregate("simple", na_rm=True) if getattr(obj, "result_kind", None) == "cells" else obj
        entry["overall"] = entry_values(entry["overall"], getattr(src, "overall_n_treated", None),
                                        getattr(src, "overall_n_control", None), pol)
    if "event_time" in table.columns:
        et = table["event_time"].to_numpy()
        for key, rows in (("pretrend", et < 0), ("post_average", et >= 0)):
            if isinstance(entry.get(key), Mapping):
                entry[key] = entry_values(entry[key], *frame_counts(table, rows), pol)
    for key in ("pretrend", "post_average"):
        if isinstance(entry.get(key), Mapping) and "suppressed" not in entry[key]:
            entry[key] = entry_values(entry[key], None, None, pol)


def _save_estimator_files(out: str, name: str, obj: Any, pol: Any) -> dict[str, Any]:
    from dte_dask import plotting

    rel = f"estimators/{name}"
    table = obj if isinstance(obj, pd.DataFrame) else obj.to_frame()
    files = {"table": _write(out, rel, table, pol, parquet=True)["csv"]}
    entry: dict[str, Any] = {"class": type(obj).__name__, "files": files}
    if hasattr(obj, "summary") and callable(obj.summary):
        entry["summary"] = obj.summary()
    result_kind = None if isinstance(obj, pd.DataFrame) else getattr(obj, "result_kind", None)
    if result_kind == "cells":
        from dte_dask.registry import get

        entry["kind"] = "attgt"
        files["cells"] = _write(out, f"{rel}.cells", plotting.attgt_frame(obj), pol)["csv"]
        for kind in (k for k in get(obj.estimator).aggregations if k != "simple"):
            try:
                agg = obj.aggregate(kind, na_rm=True)
            except Exception as exc:  # noqa: BLE001 - an aggregation may not exist for this design
                entry.setdefault("notes", []).append(f"{kind} aggregation not available: {exc}")
                continue
            files[kind] = _write(out, f"{rel}.{kind}", agg.to_frame(), pol)["csv"]
            if kind == "dynamic":
                files["event_study"] = _write(out, f"{rel}.event_study", plotting.event_study_frame(agg), pol)["csv"]
        simple = obj.aggregate("simple", na_rm=True)
        lo, hi = simple.overall_ci
        entry["overall"] = {"att": simple.overall_att, "se": simple.overall_se, "ci_lower": lo, "ci_upper": hi,
                            "aggregation": "simple"}
        entry["pretrend"] = obj.pretrend_test()
        entry["options"] = dict(obj.options)
        return entry
    if result_kind == "aggregate":
        entry["kind"] = f"aggregate:{obj.kind}"
        lo, hi = obj.overall_ci
        entry["overall"] = {"att": obj.overall_att, "se": obj.overall_se, "ci_lower": lo, "ci_upper": hi,
                            "aggregation": obj.kind}
        if obj.kind == "dynamic":
            files["event_study"] = _write(out, f"{rel}.event_study", plotting.event_study_frame(obj), pol)["csv"]
        return entry
    entry["kind"] = "table" if isinstance(obj, pd.DataFrame) else str(getattr(obj, "estimator", "regression"))
    if result_kind:
        entry["result_kind"] = result_kind
    try:
        files["event_study"] = _write(out, f"{rel}.event_study", plotting.event_study_frame(obj), pol)["csv"]
    except SpecError:
        pass
    overall_frame = getattr(obj, "overall_frame", None)
    if callable(overall_frame):  # overall parameters beyond one ATT (continuous_did: ATT^o and ACRT^o)
        ov = overall_frame()
        files["overall"] = _write(out, f"{rel}.overall", ov, pol)["csv"]
        lo, hi = float(ov["ci_lower"].iloc[0]), float(ov["ci_upper"].iloc[0])
        entry["overall"] = {"att": float(ov["estimate"].iloc[0]), "se": float(ov["se"].iloc[0]), "ci_lower": lo,
                            "ci_upper": hi, "aggregation": str(ov["parameter"].iloc[0])}
    by_event_time = "event_time" in table.columns
    for attr in ("by_cohort", "pretrend_test", "post_average"):
        fn = getattr(obj, attr, None)
        if not callable(fn) or (attr != "by_cohort" and not by_event_time):
            continue  # a pre-trend test or post-period average needs estimates by event time
        try:
            val = fn()
        except Exception as exc:  # noqa: BLE001 - record, do not fail the save
            if attr == "by_cohort" and isinstance(exc, SpecError):
                continue  # a result without cohorts (an event study): nothing to save, and nothing failed
            entry.setdefault("notes", []).append(f"{attr}() failed: {exc}")
            continue
        if attr == "by_cohort":
            val = val if isinstance(val, pd.DataFrame) else val.to_frame()
            files["by_cohort"] = _write(out, f"{rel}.by_cohort", val, pol)["csv"]
        else:
            entry["pretrend" if attr == "pretrend_test" else "post_average"] = _plain_value(val)
    for attr in ("options", "name", "alpha"):
        if getattr(obj, attr, None) is not None and not callable(getattr(obj, attr)):
            entry[attr] = getattr(obj, attr)
    return entry


def _seed(obj: Any) -> int | None:
    """The bootstrap seed of a result: its ``seed``, or (regression results) ``options['seed']`` when
    it drew multipliers."""
    if getattr(obj, "seed", None) is not None:
        return obj.seed
    opts = getattr(obj, "options", None)
    if isinstance(opts, Mapping) and opts.get("n_boot") and opts.get("seed") is not None:
        return opts["seed"]
    return None


def _plain_value(v: Any) -> Any:
    if isinstance(v, pd.DataFrame):
        return v.to_dict(orient="records")
    if hasattr(v, "_asdict"):
        return v._asdict()
    if hasattr(v, "__dataclass_fields__"):
        return {k: getattr(v, k) for k in v.__dataclass_fields__}
    return v


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in _PACKAGES:
        try:
            out[pkg] = _md.version(pkg)
        except _md.PackageNotFoundError:
            continue
    return out


def _cluster_info() -> dict[str, Any] | None:
    """The active distributed Client, if any (never creates one)."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client

        client = default_client()
        info = client.scheduler_info()
    except Exception:  # noqa: BLE001 - no client, or it is not reachable
        return None
    workers = info.get("workers", {})
    return {"scheduler": info.get("address"), "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
            "dashboard": getattr(client, "dashboard_link", None)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, (pd.Timestamp, _dt.date, np.datetime64)):
        return plain(pd.Timestamp(v).to_datetime64())  # the one date formatter (core.labels)
    return str(v)


# ----------------------------------------------------------------------------- loading
def load_summary(results_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``summary.json`` of a RESULTS_DIR (checking its format)."""
    path = os.path.join(os.fspath(results_dir), "summary.json")
    if not os.path.isfile(path):
        raise SpecError(f"{os.fspath(results_dir)!r} is not a results directory: no summary.json")
    with open(path, encoding="utf-8") as fh:
        summary = json.load(fh)
    if summary.get("format") != FORMAT:
        raise SpecError(f"{path}: unsupported format {summary.get('format')!r} (expected {FORMAT!r})")
    return summary


def _frame(results_dir: str, rel: str | None) -> pd.DataFrame | None:
    if not rel:
        return None
    path = os.path.join(results_dir, rel)
    return pd.read_csv(path) if os.path.isfile(path) else None


# ----------------------------------------------------------------------------- the report
def write_report(results_dir: str | os.PathLike, output: str | os.PathLike, *, title: str | None = None) -> str:
    """Build the report of ``results_dir`` and write it to ``output``; returns the output path."""
    page = build_report(results_dir, title=title)
    out = os.fspath(output)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(page)
    return out


def build_report(results_dir: str | os.PathLike, *, title: str | None = None) -> str:
    """The report of ``results_dir`` as one self-contained HTML string."""
    from dte_dask._report_html import Page

    rd = os.fspath(results_dir)
    s = load_summary(rd)
    cols = s.get("columns") or {}
    page = Page(title or "dte_dask report")
    if s.get("disclosure"):
        page.note(f"{s['disclosure'].get('description')}. Suppressed estimates are not drawn (grey marks on "
                  "the zero line) and are NaN in the tables, with suppressed = True and suppression_reason.")
    page.section("Panel", anchor="panel")
    page.panel(s.get("panel"), cols)
    es_frames: dict[str, pd.DataFrame] = {}
    if s["estimators"]:
        page.section("Estimators", anchor="estimators")
    for name, e in s["estimators"].items():
        _estimator_section(page, rd, name, e, cols, es_frames)
    if len(es_frames) > 1:
        from dte_dask.plotting import plot_event_study

        page.section("Estimators compared", anchor="compare")
        page.figure(plot_event_study(es_frames, outcome=cols.get("outcome"), time=cols.get("time")))
        page.compare_table(es_frames)
    if s["checks"]:
        page.section("Identification checks", anchor="checks")
    for name, c in s["checks"].items():
        _check_section(page, rd, name, c, cols)
    if s.get("diagnosis"):
        _diagnosis_section(page, s["diagnosis"])
    page.section("Run", anchor="run")
    page.metadata(s.get("metadata") or {})
    return page.render()


def _diagnosis_section(page: Any, diag: dict[str, Any]) -> None:
    """Per-stage figures, the class of each stage with its evidence and advice, core-hours, cost."""
    page.section("Run diagnosis", anchor="diagnosis")
    cost = f"; cost {diag['cost']:.4f} at {diag['price_per_core_hour']:g} per core-hour" if "cost" in diag else ""
    page.note(f"Class: {diag['class']} (largest stage: {diag['bottleneck_stage']}); {diag['wall_s']:.1f} s on "
              f"{diag['threads']} threads = {diag['core_hours']:.4f} core-hours{cost}.")
    cols = ["name", "wall_s", "cpu_s", "utilization", "n_tasks", "median_task_s", "peak_worker_memory",
            "spilled_bytes", "transferred_bytes", "finding_kind", "finding_evidence", "finding_advice"]
    page.table(pd.DataFrame([{c: st.get(c) for c in cols} for st in diag.get("stages", [])], columns=cols),
               caption="stages (bytes; seconds); classes and advice from dte_dask.diagnose")


def _estimator_section(page: Any, rd: str, name: str, e: dict[str, Any], cols: dict[str, str],
                       es_frames: dict[str, pd.DataFrame]) -> None:
    from dte_dask import plotting

    files = e.get("files", {})
    page.subsection(f"{name}", note=f"{e.get('class', '')} ({e.get('kind', '')})")
    if e.get("overall"):
        page.overall(e["overall"])
    if e.get("summary"):
        page.pre(e["summary"])
    kw = {"outcome": cols.get("outcome"), "time": cols.get("time")}
    overall = _frame(rd, files.get("overall"))
    if overall is not None and len(overall):
        page.table(overall, caption=f"{name}: overall parameters")
    table = _frame(rd, files.get("table"))
    if e.get("result_kind") == "dose_response" and table is not None and len(table):
        ylabel = "ACRT" if (e.get("options") or {}).get("target") == "slope" else "ATT"
        page.figure(plotting.plot_curve(table, key="dose", ylabel=ylabel, title=f"{ylabel}(d) by dose with "
                                        f"pointwise intervals and uniform bands: {name}"))
    es = _frame(rd, files.get("event_study"))
    if es is not None and len(es):
        es_frames[name] = es
        page.figure(plotting.plot_event_study(es, labels=[name], title=f"Event study: {name}", **kw))
    cells = _frame(rd, files.get("cells"))
    if cells is not None and len(cells):
        page.figure(plotting.plot_attgt(cells, title=f"ATT(g, t) by cohort: {name}", **kw))
        page.figure(plotting.plot_cohorts(cells, title=f"Cohorts compared on event time: {name}", **kw))
    by_cohort = _frame(rd, files.get("by_cohort"))
    if by_cohort is not None and len(by_cohort) and "estimate" in by_cohort.columns:
        page.figure(plotting.plot_cohorts(by_cohort, title=f"Sub-experiments by cohort: {name}", **kw))
    if table is not None:
        page.table(table, caption=f"{name}: table ({files.get('table')})", collapsed=True)
    for note in e.get("notes", []):
        page.note(note)


def _check_section(page: Any, rd: str, name: str, c: dict[str, Any], cols: dict[str, str]) -> None:
    from dte_dask import plotting

    files = c.get("files", {})
    kind = c.get("kind")
    page.subsection(f"{name}", note=f"{c.get('class', '')} ({kind})")
    if c.get("summary"):
        page.pre(c["summary"])
    table = _frame(rd, files.get("table"))
    fig = None
    if kind == "placebo" and table is not None and len(table):
        fig = plotting.plot_placebo(table, outcome=cols.get("outcome"))
    elif kind == "randomization":
        draws = _frame(rd, files.get("draws"))
        if draws is not None and c.get("observed") is not None:
            fig = plotting.plot_randomization(draws, c["observed"], p_value=c.get("p_value"),
                                              statistic=str(c.get("statistic", "ATT")))
    elif kind == "balance" and table is not None and len(table):
        fig = plotting.plot_balance(table, threshold=float(c.get("threshold", 0.1)))
    elif kind == "pretrends":
        est = _frame(rd, files.get("estimates"))
        if est is not None and len(est):
            fig = plotting.plot_pretrends(est, outcome=cols.get("outcome"), time=cols.get("time"))
    elif kind == "honest_did" and table is not None and len(table):
        bd = c.get("breakdown")
        page.note(f"Breakdown value ({c.get('delta')}, {c.get('method')}, {c.get('target')}): "
                  + (f"{bd:.4g}" if bd is not None else "none on the grid (the interval at the smallest M covers 0)"))
        fig = plotting.plot_honest_did(table, breakdown=bd, outcome=cols.get("outcome"),
                                       m_name="M" if c.get("restriction") == "smoothness" else "Mbar",
                                       title=f"Sensitivity to parallel-trends violations: {name}")
    elif kind == "pretest_power":
        curve = _frame(rd, files.get("curve"))
        if curve is not None and len(curve):
            fig = plotting.plot_pretest_power(curve, {float(k): v for k, v in (c.get("slope_for_power") or {}).items()})
    if fig is not None:
        page.figure(fig)
    for note in c.get("notes") or []:
        page.note(note)
    if table is not None:
        page.table(table, caption=f"{name}: table ({files.get('table')})",
                   collapsed=kind not in ("pretrends", "honest_did"))

