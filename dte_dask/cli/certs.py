"""``dte-dask certs``: create the TLS CA and certificate used by the SSH and Slurm profiles."""
from __future__ import annotations

import click


@click.command(name="certs")
@click.option("--dir", "directory", type=click.Path(file_okay=False, dir_okay=True),
              default=None,
              help="Where to write ca.pem, ca-key.pem, cert.pem, key.pem "
                   "[default: dask.config dte_dask.cluster.tls-directory].")
@click.option("--hostname", "hostnames", multiple=True, metavar="NAME",
              help="Extra DNS name or IP address for the certificate (repeatable); "
                   "localhost, 127.0.0.1 and this host are always included.")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True,
              help="Validity of the CA and the certificate.")
@click.option("--force", is_flag=True, help="Replace existing files.")
@click.option("--backend", type=click.Choice(["auto", "cryptography", "openssl"]),
              default="auto", show_default=True,
              help="auto: the cryptography package if installed, else the openssl command.")
def command(directory: str | None, hostnames: tuple[str, ...], days: int, force: bool,
            backend: str) -> None:
    """Create a small CA and one certificate for TLS between scheduler, workers and client.

    Copy the directory to the same path on every host of an SSH cluster (a shared home
    directory on Slurm clusters does this for you); profiles with `security: {tls: true}` use
    it.
    """
    from dte_dask.cluster.schema import ProfileError
    from dte_dask.cluster.security import cert_paths, default_tls_directory, generate_certificates

    target = directory or default_tls_directory()
    existed = cert_paths(target).exist()
    try:
        paths = generate_certificates(target, hostnames=hostnames, days=days, overwrite=force,
                                      backend=backend)  # type: ignore[arg-type]
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from exc
    if existed and not force:
        click.echo(f"TLS files already exist in {target} (use --force to replace them):")
    else:
        click.echo(f"wrote TLS CA and certificate to {target}:")
    click.echo(f"  CA certificate : {paths.ca_file}")
    click.echo(f"  certificate    : {paths.cert}")
    click.echo(f"  private key    : {paths.key}  (keep secret; mode 0600)")
    click.echo(f"  CA private key : {paths.ca_key}  (only needed to sign more certificates)")
