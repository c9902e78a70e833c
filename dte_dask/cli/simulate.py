"""``dte-dask simulate``: write a simulated staggered panel as a parquet directory.

Each partition is simulated and written inside its own task on dask's local threaded scheduler
(no distributed ``Client`` is started), so memory stays at a few partitions whatever the size.
"""
from __future__ import annotations

import contextlib

import click

from dte_dask.exceptions import PanelError, SpecError
from dte_dask.storage import parse_storage_options


def _parse_cohorts(ctx: click.Context, param: click.Parameter, value: str | None):
    """Turn ``"4,7,10"`` into ``[4, 7, 10]``."""
    if value is None or value.strip() == "":
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integer periods such as 4,7,10, got {value!r}"
        ) from None


def _check_out(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A local directory (not an existing file), or an object-store URL taken as it is."""
    import os

    from dte_dask.storage import is_url

    if not is_url(value) and os.path.isfile(value):
        raise click.BadParameter(f"{value!r} is a file; expected a directory or an s3:// prefix")
    return value


@click.command(name="simulate")
@click.option("--units", "n_units", type=int, required=True, help="Number of units (patients).")
@click.option("--periods", "n_periods", type=int, default=None,
              help="Number of periods [default: 10; 24 with --preset medical].")
@click.option("--out", "out_dir", type=str, required=True, callback=_check_out,
              help="Output directory (parquet files part-*.parquet, _truth.csv, _dte_dask.json), "
                   "or an object-store prefix such as s3://bucket/prefix (pip install dte_dask[s3]).")
@click.option("--storage-option", "storage_options", multiple=True, callback=parse_storage_options,
              metavar="KEY=VALUE",
              help="Option of the object store's filesystem for an s3:// --out (repeatable), e.g. "
                   "endpoint_url=http://127.0.0.1:9000 or profile=NAME. Credentials come from the "
                   "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or a profile.")
@click.option("--seed", type=int, default=0, show_default=True, help="Root random seed.")
@click.option("--npartitions", type=int, default=None,
              help="Number of files/partitions [default: about 262k units each].")
@click.option("--preset", type=click.Choice(["medical"]), default=None,
              help="Parameter preset: 'medical' = blood-pressure (sbp) example with selection.")
@click.option("--selection/--no-selection", default=None,
              help="Selection on age/bmi (only conditional parallel trends hold) "
                   "[default: off; on with --preset medical].")
@click.option("--cohorts", callback=_parse_cohorts, default=None,
              help="Comma-separated first-treated periods, e.g. 4,7,10.")
@click.option("--never-treated-share", type=float, default=0.3, show_default=True)
@click.option("--unbalanced-share", type=float, default=0.0, show_default=True,
              help="Share of unit-period rows dropped at random.")
@click.option("--workers", "num_workers", type=int, default=None,
              help="Threads writing partitions at once [default: number of cores].")
@click.option("--overwrite", is_flag=True, help="Replace an earlier simulation in --out.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(n_units, n_periods, out_dir, storage_options, seed, npartitions, preset, selection, cohorts,
            never_treated_share, unbalanced_share, num_workers, overwrite, progress) -> None:
    """Simulate a staggered-adoption panel with known ATT(g,t) and write it to --out."""
    from dte_dask.simulate import write_panel

    bar = contextlib.nullcontext()
    if progress:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(dt=0.5)
    try:
        with bar:
            info = write_panel(
                out_dir, n_units, n_periods, overwrite=overwrite, scheduler="threads",
                num_workers=num_workers, seed=seed, npartitions=npartitions, preset=preset,
                selection=selection, cohorts=cohorts, never_treated_share=never_treated_share,
                unbalanced_share=unbalanced_share, storage_options=storage_options,
            )
    except SpecError as exc:
        raise click.UsageError(str(exc)) from None
    except PanelError as exc:  # the object store refused (credentials, a missing bucket...)
        raise click.ClickException(str(exc)) from None
    counts = info["cohort_counts"]
    cohorts_txt = ", ".join(f"g={g}: {c:,}" for g, c in counts.items() if g != 0)
    opts = info["options"]
    click.echo(
        f"wrote {info['n_rows']:,} rows ({info['n_units']:,} units x {info['n_periods']} periods"
        f"{', unbalanced' if opts['unbalanced_share'] > 0 else ''}) "
        f"in {len(info['files'])} files to {info['out_dir']} in {info['seconds']:.1f} s"
    )
    click.echo(f"outcome: {info['columns']['outcome']}   selection: {opts['selection']}   "
               f"seed: {info['seed']}")
    click.echo(f"never treated: {counts.get(0, 0):,}   cohorts: {cohorts_txt or 'none'}")
    click.echo("truth: _truth.csv   metadata: _dte_dask.json")
