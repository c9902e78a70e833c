"""``dte-dask doctor``: print this machine's description and a recommended worker layout."""
from __future__ import annotations

import json

import click

from dte_dask.cluster.numa import SYSFS_NODE_ROOT


@click.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--sysfs-root", type=click.Path(file_okay=False, dir_okay=True),
              default=SYSFS_NODE_ROOT, show_default=True,
              help="NUMA node directory to read (a missing one means a single node).")
@click.option("--periods", type=click.IntRange(min=1), default=24, show_default=True,
              help="Periods T of the panel, used for the partition-size recommendation.")
def command(as_json: bool, sysfs_root: str, periods: int) -> None:
    """Describe CPUs, NUMA nodes, memory, BLAS and versions; recommend a worker layout."""
    from dte_dask import doctor
    from dte_dask.exceptions import DteDaskError

    try:
        info = doctor.collect(sysfs_root, periods=periods)
    except DteDaskError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(doctor.format_report(info), nl=False)
