"""The HTML page of :mod:`dte_dask.report`: sections, tables, preformatted text and bokeh figures.

Figures are embedded with ``bokeh.embed.components`` and bokeh's JavaScript is inlined (no CDN),
so the file opens offline. Every piece of text from the results is HTML-escaped.
"""
from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import pandas as pd

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:18px 32px}header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;opacity:.8}nav{padding:8px 32px;background:#e9eef3;font-size:14px}
nav a{margin-right:16px;color:#1f3b57}main{padding:8px 32px 48px;max-width:1240px}
h2{border-bottom:2px solid #1f3b57;padding-bottom:4px;margin-top:36px}h3{margin:28px 0 6px}
h3 small{font-weight:normal;color:#666;font-size:13px;margin-left:8px}
pre{background:#fff;border:1px solid #ddd;padding:10px;overflow-x:auto;font-size:12.5px;line-height:1.35}
table.tbl{border-collapse:collapse;font-size:13px;background:#fff;margin:6px 0 14px}
table.tbl th,table.tbl td{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.tbl th{background:#eef2f6}.figure{margin:10px 0 18px;background:#fff;padding:6px;border:1px solid #e3e3e3;
display:inline-block}.overall{font-size:15px;margin:6px 0}.note{color:#8a5a00;font-size:13px}
details summary{cursor:pointer;color:#1f3b57;margin:4px 0}
"""


class Page:
    """An HTML report assembled section by section; :meth:`render` returns the whole document."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str | int] = []
        self.figures: list[Any] = []
        self.nav: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ building blocks
    def section(self, title: str, *, anchor: str) -> None:
        self.nav.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')

    def subsection(self, title: str, *, note: str = "") -> None:
        small = f"<small>{html.escape(note)}</small>" if note else ""
        self.parts.append(f"<h3>{html.escape(title)}{small}</h3>")

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def figure(self, layout: Any) -> None:
        self.parts.append(len(self.figures))
        self.figures.append(layout)

    def table(self, df: pd.DataFrame, *, caption: str = "", collapsed: bool = False, max_rows: int = 500) -> None:
        more = f" (first {max_rows} of {len(df)} rows)" if len(df) > max_rows else ""
        body = df.head(max_rows).to_html(index=False, classes="tbl", border=0, na_rep="",
                                          float_format=lambda v: f"{v:.4f}", escape=True)
        if collapsed:
            self.parts.append(f"<details><summary>{html.escape(caption + more)}</summary>{body}</details>")
        else:
            self.parts.append(f"<p>{html.escape(caption + more)}</p>{body}")

    def overall(self, o: dict[str, Any]) -> None:
        def f(v: Any) -> str:
            return "NA" if v is None else f"{v:.4f}"
        self.parts.append(f'<p class="overall">Overall ATT ({html.escape(str(o.get("aggregation", "")))}): '
                          f'<b>{f(o.get("att"))}</b> (SE {f(o.get("se"))}; 95% CI [{f(o.get("ci_lower"))}, '
                          f'{f(o.get("ci_upper"))}])</p>')
        if o.get("suppressed"):
            self.note(f"Overall ATT suppressed (disclosure control): {o.get('suppression_reason')}")

    def panel(self, panel: dict[str, Any] | None, cols: dict[str, str]) -> None:
        if not panel:
            self.note("No panel description was saved with these results.")
            return
        rows = [("Units", panel.get("units")), ("Periods", f"{panel.get('periods')} "
                 f"({panel.get('first_period')} .. {panel.get('last_period')})"), ("Rows", panel.get("rows")),
                ("Balanced", panel.get("balanced")), ("Partitions", panel.get("partitions"))]
        if panel.get("clusters"):
            rows.append(("Clusters", panel["clusters"]))
        rows += [(f"{role} column", name) for role, name in cols.items()]
        self.table(pd.DataFrame(rows, columns=["", "value"]).astype(str), caption="Panel")
        cohorts = panel.get("cohorts") or {}
        if cohorts:
            units = pd.to_numeric(pd.Series(list(cohorts.values()), dtype=object), errors="coerce")
            n = units.sum() or 1  # sizes may be rounded or suppressed (None) by disclosure control
            df = pd.DataFrame({"cohort (first treated)": list(cohorts), "units": units.astype("Int64"),
                               "share": units / n})
            self.table(df, caption="Cohorts and their sizes")

    def compare_table(self, frames: dict[str, pd.DataFrame]) -> None:
        wide = None
        for name, df in frames.items():
            d = df[["event_time", "estimate", "se"]].rename(columns={"estimate": f"{name}", "se": f"{name} se"})
            wide = d if wide is None else wide.merge(d, on="event_time", how="outer")
        if wide is None:
            return
        wide = wide.sort_values("event_time").reset_index(drop=True)
        self.table(wide, caption="Event-study estimates side by side")
        est = wide[[c for c in wide.columns if c != "event_time" and not c.endswith(" se")]]
        if est.shape[1] > 1 and len(est) > 2:
            self.table(est.corr().reset_index().rename(columns={"index": ""}),
                       caption="Correlation of the estimates across event times")

    def metadata(self, meta: dict[str, Any]) -> None:
        versions = meta.get("versions") or {}
        if versions:
            self.table(pd.DataFrame({"package": list(versions), "version": list(versions.values())}),
                       caption="Versions")
        rows = [(k, meta[k]) for k in ("created", "platform") if meta.get(k)]
        if meta.get("seeds"):
            rows += [(f"seed ({k})", v) for k, v in meta["seeds"].items()]
        cluster = meta.get("cluster")
        rows.append(("cluster", "none (local scheduler)" if not cluster else
                     ", ".join(f"{k}: {v}" for k, v in cluster.items())))
        self.table(pd.DataFrame(rows, columns=["", "value"]).astype(str), caption="Run")
        timings = meta.get("timings") or {}
        if timings:
            df = pd.DataFrame(timings).T.reset_index().rename(columns={"index": "result"})
            self.table(df, caption="Timings (seconds)")
        rest = {k: v for k, v in meta.items() if k not in ("created", "platform", "seeds", "cluster", "timings",
                                                           "versions")}
        if rest:
            self.pre("Other metadata:\n" + json.dumps(rest, indent=2, default=str))

    # ------------------------------------------------------------------ output
    def render(self) -> str:
        script, divs = "", ()
        js = ""
        if self.figures:
            from bokeh.document import Document
            from bokeh.embed import components
            from bokeh.resources import Resources

            # One document holding every figure, its models collected once: ``components`` would add
            # the figures one by one and walk all models of the document after each (about 0.9 s of
            # a 4 s report with ~1,300 models).
            doc = Document()
            with doc.models.freeze():
                for fig in self.figures:
                    doc.add_root(fig)
            script, divs = components(self.figures)
            res = Resources(mode="inline", components=["bokeh"])
            js = res.render_js() + res.render_css()
        body = "\n".join(f'<div class="figure">{divs[p]}</div>' if isinstance(p, (int, np.integer)) else p
                         for p in self.parts)
        nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in self.nav)
        n_fig = len(self.figures)
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n{js}\n</head>\n<body>\n"
                f"<header><h1>{html.escape(self.title)}</h1><p>dte_dask results report: {n_fig} figures "
                f"(interactive: pan, zoom, hover)</p></header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
                f"{script}\n</body>\n</html>\n")
