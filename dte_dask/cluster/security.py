"""TLS for Dask clusters: a small CA + one certificate, and the matching ``Security`` object.

:func:`generate_certificates` writes ``ca.pem`` (CA certificate), ``ca-key.pem`` (CA key),
``cert.pem`` and ``key.pem`` (a certificate signed by the CA, used by scheduler, workers and
client alike) into a directory, with the ``cryptography`` package when it is installed and the
``openssl`` command otherwise. :func:`make_security` builds the
:class:`distributed.security.Security` (mutual TLS, encryption required) from a profile's
``security`` section, generating missing files when asked to.

Distributed checks the peer's certificate against the CA (``CERT_REQUIRED`` on both sides) but
not its host name, so one certificate serves every host; the SANs (localhost, 127.0.0.1, this
host, extra names) are there for other TLS tools.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dte_dask.cluster.schema import ProfileError, SecuritySpec

logger = logging.getLogger(__name__)

__all__ = [
    "CertPaths", "generate_certificates", "cert_paths", "make_security", "tls_config",
    "default_tls_directory", "cryptography_available",
]

Backend = Literal["auto", "cryptography", "openssl"]

CA_NAME = "dte_dask cluster CA"
CERT_NAME = "dte_dask cluster"


@dataclass(frozen=True)
class CertPaths:
    """Where the TLS files of a cluster are (absolute paths)."""

    ca_file: str
    cert: str
    key: str
    ca_key: str | None = None

    def exist(self) -> bool:
        """Whether the CA, certificate and key files all exist."""
        return all(os.path.isfile(p) for p in (self.ca_file, self.cert, self.key))


def cryptography_available() -> bool:
    """Whether the ``cryptography`` package can be imported."""
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        return False
    return True


def default_tls_directory() -> str:
    """``dask.config["dte_dask.cluster.tls-directory"]`` with ``~`` expanded."""
    import dask.config

    from dte_dask import config as _config  # noqa: F401  (registers the defaults)

    d = dask.config.get("dte_dask.cluster.tls-directory", default=None) or "~/.config/dte_dask/tls"
    return os.path.abspath(os.path.expanduser(str(d)))


def cert_paths(directory: str | os.PathLike[str]) -> CertPaths:
    """The file names :func:`generate_certificates` writes in ``directory``."""
    d = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    return CertPaths(ca_file=os.path.join(d, "ca.pem"), cert=os.path.join(d, "cert.pem"),
                     key=os.path.join(d, "key.pem"), ca_key=os.path.join(d, "ca-key.pem"))


def _san_names(hostnames: Iterable[str]) -> list[str]:
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    try:
        names.append(socket.getfqdn())
    except OSError:  # pragma: no cover
        pass
    names.extend(hostnames)
    out: list[str] = []
    for n in names:
        n = str(n).strip()
        if n and n not in out:
            out.append(n)
    return out


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _generate_cryptography(paths: CertPaths, names: list[str], days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)

    def pem_key(k: Any) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject).issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAME)]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=True, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    assert paths.ca_key is not None
    _write_private(Path(paths.ca_key), pem_key(ca_key))
    _write_private(Path(paths.key), pem_key(key))
    Path(paths.ca_file).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    Path(paths.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _openssl(args: list[str], cwd: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise ProfileError("cannot generate TLS certificates: neither the 'cryptography' "
                           "package nor the 'openssl' command is available "
                           "(pip install cryptography)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProfileError(f"openssl {' '.join(args[:2])} failed (rc {proc.returncode}): "
                           f"{proc.stderr.strip()[-800:]}")


def _generate_openssl(paths: CertPaths, names: list[str], days: int) -> None:
    assert paths.ca_key is not None
    san = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    with tempfile.TemporaryDirectory(prefix="dte-dask-certs-") as tmp:
        leaf_ext = Path(tmp, "leaf.ext")
        leaf_ext.write_text("basicConstraints=critical,CA:FALSE\n"
                            "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement\n"
                            "extendedKeyUsage=serverAuth,clientAuth\n"
                            f"subjectAltName={san}\n"
                            "authorityKeyIdentifier=keyid\n")
        ca_key, key = Path(tmp, "ca-key.pem"), Path(tmp, "key.pem")
        ca_pem, csr, cert = Path(tmp, "ca.pem"), Path(tmp, "cert.csr"), Path(tmp, "cert.pem")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(["req", "-x509", "-new", *ec, "-keyout", str(ca_key), "-out", str(ca_pem),
                  "-days", str(days), "-subj", f"/CN={CA_NAME}", "-sha256",
                  "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                  "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign"], tmp)
        _openssl(["req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
                  "-subj", f"/CN={CERT_NAME}", "-sha256"], tmp)
        _openssl(["x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
                  "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-out", str(cert),
                  "-days", str(days), "-sha256", "-extfile", str(leaf_ext)], tmp)
        _write_private(Path(paths.ca_key), ca_key.read_bytes())
        _write_private(Path(paths.key), key.read_bytes())
        Path(paths.ca_file).write_bytes(ca_pem.read_bytes())
        Path(paths.cert).write_bytes(cert.read_bytes())


def generate_certificates(
    directory: str | os.PathLike[str],
    *,
    hostnames: Iterable[str] = (),
    days: int = 365,
    overwrite: bool = False,
    backend: Backend = "auto",
) -> CertPaths:
    """Create a CA and a certificate signed by it for a Dask cluster.

    Parameters
    ----------
    directory : path
        Created (mode 0700) if missing. Receives ``ca.pem``, ``ca-key.pem``, ``cert.pem``,
        ``key.pem`` (keys mode 0600).
    hostnames : iterable of str
        Extra subject alternative names (DNS names or IP addresses); ``localhost``,
        ``127.0.0.1`` and this host's names are always included.
    days : int
        Validity of both certificates.
    overwrite : bool
        Replace existing files; otherwise existing complete sets are kept and returned.
    backend : "auto" | "cryptography" | "openssl"
        ``auto`` uses ``cryptography`` when installed, else the ``openssl`` command.

    Returns
    -------
    CertPaths

    Raises
    ------
    ProfileError
        If neither backend is available or ``openssl`` fails.
    """
    if days < 1:
        raise ProfileError(f"days must be >= 1, got {days}")
    paths = cert_paths(directory)
    if paths.exist() and not overwrite:
        logger.info("TLS files already in %s; kept", directory)
        return paths
    d = Path(paths.cert).parent
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = _san_names(hostnames)
    if backend == "auto":
        backend = "cryptography" if cryptography_available() else "openssl"
    if backend == "cryptography":
        if not cryptography_available():
            raise ProfileError("backend='cryptography' but the package is not installed")
        _generate_cryptography(paths, names, days)
    elif backend == "openssl":
        _generate_openssl(paths, names, days)
    else:
        raise ProfileError(f"unknown certificate backend {backend!r}")
    logger.info("wrote TLS CA and certificate to %s (%s; SANs %s)", d, backend, names)
    return paths


def _resolve_paths(spec: SecuritySpec) -> CertPaths:
    directory = spec.directory or default_tls_directory()
    base = cert_paths(directory)

    def pick(value: str | None, default: str) -> str:
        return os.path.abspath(os.path.expanduser(value)) if value else default

    return CertPaths(ca_file=pick(spec.ca_file, base.ca_file), cert=pick(spec.cert, base.cert),
                     key=pick(spec.key, base.key), ca_key=base.ca_key)


def resolve_certificates(spec: SecuritySpec) -> CertPaths:
    """The files a TLS ``security`` section names, generated first when missing and allowed.

    Raises
    ------
    ProfileError
        If files are missing and ``generate`` is false (or only some of them exist).
    """
    paths = _resolve_paths(spec)
    if paths.exist():
        return paths
    missing = [p for p in (paths.ca_file, paths.cert, paths.key) if not os.path.isfile(p)]
    explicit = any((spec.ca_file, spec.cert, spec.key))
    if not spec.generate or explicit or len(missing) < 3:
        raise ProfileError(
            f"TLS is enabled but {', '.join(missing)} do(es) not exist; create them with "
            "`dte-dask certs --dir DIR` (or set security.generate: true with no explicit files)")
    generated = generate_certificates(Path(paths.cert).parent, hostnames=spec.hostnames)
    return generated


def tls_config(paths: CertPaths, require_encryption: bool = True) -> dict[str, Any]:
    """``dask.config`` keys (``distributed.comm.*``) equivalent to :func:`make_security`.

    Processes started with this configuration (e.g. SSHCluster's remote scheduler and workers,
    which inherit the caller's dask config) use TLS with these files.
    """
    cfg: dict[str, Any] = {
        "distributed.comm.require-encryption": bool(require_encryption),
        "distributed.comm.tls.ca-file": paths.ca_file,
    }
    for role in ("scheduler", "worker", "client"):
        cfg[f"distributed.comm.tls.{role}.cert"] = paths.cert
        cfg[f"distributed.comm.tls.{role}.key"] = paths.key
    return cfg


def make_security(spec: SecuritySpec | Mapping[str, Any] | bool | None) -> Any:
    """A :class:`distributed.security.Security` for a profile's ``security`` section.

    Parameters
    ----------
    spec : SecuritySpec, mapping, bool or None
        ``None``/``False``/``tls: false`` -> ``None`` (plain TCP); ``True`` -> TLS with the
        default directory.

    Returns
    -------
    distributed.security.Security or None
    """
    from distributed.security import Security

    if spec is None or spec is False:
        return None
    if spec is True:
        spec = SecuritySpec(tls=True)
    elif isinstance(spec, Mapping):
        spec = SecuritySpec(**spec)
    if not spec.tls:
        return None
    paths = resolve_certificates(spec)
    return Security(
        require_encryption=spec.require_encryption,
        tls_ca_file=paths.ca_file,
        tls_client_cert=paths.cert, tls_client_key=paths.key,
        tls_scheduler_cert=paths.cert, tls_scheduler_key=paths.key,
        tls_worker_cert=paths.cert, tls_worker_key=paths.key,
    )
