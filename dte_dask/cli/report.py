"""``dte-dask report RESULTS_DIR -o report.html``: one self-contained HTML file from saved results."""
from __future__ import annotations

import click


@click.command(name="report")
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output HTML file [default: RESULTS_DIR/report.html].")
@click.option("--title", default=None, help="Title of the report [default: 'dte_dask report'].")
def command(results_dir: str, output: str | None, title: str | None) -> None:
    """Build the HTML report of RESULTS_DIR (written by `dte-dask run` or dte_dask.report.save_results).

    The file opens offline: bokeh's JavaScript is inlined and nothing is fetched from the network.
    """
    import os

    from dte_dask.exceptions import DteDaskError
    from dte_dask.report import write_report

    out = output or os.path.join(results_dir, "report.html")
    try:
        path = write_report(results_dir, out, title=title)
    except DteDaskError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"report written to {path}")
