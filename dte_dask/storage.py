"""Panels in object storage: ``s3://bucket/prefix/`` (any fsspec URL) for reading and writing.

Local paths never come here: :func:`is_url` tells them apart, and the loader and the simulator
keep their plain ``os``/``glob`` code for them. A URL goes through fsspec (``s3fs`` for ``s3://``,
installed by ``pip install 'dte_dask[s3]'``); ``storage_options`` are passed to the filesystem
and to dask's readers unchanged.

Credentials come from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``...) or a named profile (``storage_options={"profile": ...}``).
Job specs and command lines may carry only non-secret options: :func:`check_no_secrets`.

The object store's own errors (botocore's ``PermissionError``, ``NoCredentialsError``, a missing
bucket...) become :class:`~dte_dask.exceptions.PanelError` naming the URL and the endpoint.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dte_dask.exceptions import PanelError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# fsspec protocols whose first path component is a bucket / container
_BUCKETED = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss", "r2"}
_EXTRA = {"s3": "s3", "s3a": "s3"}  # protocol -> dte_dask extra that installs its filesystem

# option names that hold a credential: refused in job bodies and on command lines
_SECRET = re.compile(r"(^key$|secret|token|passw|passphrase|credential|access_key|private_key|api_key|account_key"
                     r"|connection_string|^sas$|authorization|cookie)", re.I)

CREDENTIALS_HINT = ("set credentials in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                    "or AWS_PROFILE) or name a profile with storage_options profile=NAME")


def is_url(path: Any) -> bool:
    """True for ``proto://...`` strings (``s3://``, ``gs://``, ``memory://``...), False for local paths."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


def secret_keys(options: Any, prefix: str = "") -> list[str]:
    """Dotted names of the options (nested mappings too) that look like credentials."""
    found: list[str] = []
    if isinstance(options, Mapping):
        for k, v in options.items():
            name = f"{prefix}{k}"
            if _SECRET.search(str(k)):
                found.append(name)
            else:
                found += secret_keys(v, f"{name}.")
    elif isinstance(options, (list, tuple)):
        for i, v in enumerate(options):
            found += secret_keys(v, f"{prefix}{i}.")
    return found


def check_no_secrets(options: Any, where: str | None = None) -> None:
    """Refuse credentials in ``options`` (a job body, a command line): they would be stored in clear text.

    Raises ``ValueError`` naming the offending keys (dotted for nested ones), prefixed by ``where``.
    """
    bad = secret_keys(options)
    if bad:
        names = ", ".join(repr(b) for b in bad)
        verb = "looks like a credential" if len(bad) == 1 else "look like credentials"
        raise ValueError(f"{where + ': ' if where else ''}{names} {verb}, which must not be written in clear text "
                         f"in a job or a command line; {CREDENTIALS_HINT}")


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path without protocol)`` for ``url``, with a clear error when a package is missing."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec comes with dask[dataframe]
        raise PanelError(f"reading {url!r} needs fsspec: pip install fsspec") from None
    proto = protocol(url)
    try:
        return url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        extra = _EXTRA.get(proto)
        how = f"pip install 'dte_dask[{extra}]'" if extra else f"install the fsspec filesystem for {proto}://"
        raise PanelError(f"{url!r}: the {proto}:// filesystem is not installed ({exc}); {how}") from None
    except ValueError as exc:
        raise PanelError(f"{url!r}: unsupported URL ({exc})") from None
    except TypeError as exc:
        raise PanelError(f"{url!r}: invalid storage_options ({exc})") from None


def endpoint(fs: Any) -> str:
    """Where the filesystem talks to, for messages: the S3 endpoint URL or the protocol."""
    for get in (lambda: fs.s3.meta.endpoint_url,
                lambda: (fs.client_kwargs or {}).get("endpoint_url"),
                lambda: getattr(fs, "endpoint_url", None)):
        try:
            value = get()
        except Exception:  # noqa: BLE001 - not connected yet / not an S3 filesystem
            value = None
        if value:
            return str(value)
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "AWS S3" if proto in ("s3", "s3a") else f"{proto}://"


def bucket(fs: Any, path: str) -> str | None:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path.strip("/").split("/", 1)[0] if proto in _BUCKETED else None


@contextlib.contextmanager
def errors(url: str, fs: Any, action: str = "reading") -> Iterator[None]:
    """Turn the object store's errors into a :class:`PanelError` naming ``url`` (no botocore traceback)."""
    try:
        yield
    except PanelError:
        raise
    except PermissionError as exc:
        raise PanelError(f"{action} {url!r}: the object store at {endpoint(fs)} refused the credentials "
                         f"({exc}); {CREDENTIALS_HINT}") from None
    except FileNotFoundError as exc:
        raise missing(url, fs, detail=str(exc)) from None
    except Exception as exc:  # botocore's NoCredentialsError, EndpointConnectionError, ProfileNotFound...
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            raise PanelError(f"{action} {url!r}: no credentials for the object store at {endpoint(fs)} ({exc}); "
                             f"{CREDENTIALS_HINT}") from None
        if name == "ProfileNotFound":
            raise PanelError(f"{action} {url!r}: {exc}; name a profile of ~/.aws/config or set credentials in "
                             "the environment") from None
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError",
                    "ConnectionRefusedError", "ReadTimeoutError"):
            raise PanelError(f"{action} {url!r}: cannot reach the object store at {endpoint(fs)} ({exc})") from None
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs", "aiohttp", "fsspec"):
            raise PanelError(f"{action} {url!r}: the object store at {endpoint(fs)} answered {name}: {exc}") from None
        raise


def missing(url: str, fs: Any, detail: str = "") -> PanelError:
    """The error for a URL that matches nothing: a missing bucket, or no such object under it."""
    path = fs._strip_protocol(url)
    b = bucket(fs, path)
    if b is not None:
        with errors(url, fs):
            exists = bucket_exists(fs, b)
        if not exists:
            return PanelError(f"{url!r}: bucket {b!r} does not exist at {endpoint(fs)}")
    return PanelError(f"{url!r}: no such object or prefix (no file or directory matches)")


def bucket_exists(fs: Any, name: str) -> bool:
    try:
        fs.ls(name, detail=False)
        return True
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Source:
    """A panel in object storage, resolved: its files (full URLs), the kind and what dask should read."""

    url: str
    fs: Any
    files: list[str]
    kind: str  # "parquet" | "csv"
    target: str | list[str]  # a directory / file URL, or the list of matched files


def resolve(url: str, storage_options: Mapping[str, Any] | None = None) -> Source:
    """Glob / check ``url`` through fsspec: the files it names and their format (parquet or CSV).

    Raises
    ------
    PanelError
        Refused credentials, a missing bucket, no matching object, an unsupported file type.
    """
    fs, path = filesystem(url, storage_options)
    with errors(url, fs):  # one listing (a glob) or one HEAD/listing (a path): cheap on many files
        if any(ch in path for ch in "*?["):
            found = fs.glob(path, detail=True)
            if not found:
                raise missing(url, fs)
            files = sorted(found)
            is_dir = found[files[0]].get("type") == "directory"
        else:
            info = fs.info(path)  # FileNotFoundError: a missing bucket or prefix, told apart by errors()
            files = [path]
            is_dir = info.get("type") == "directory"
        first = files[0]
    full = [fs.unstrip_protocol(f) for f in files]
    if first.endswith((".csv", ".csv.gz")):
        return Source(url, fs, full, "csv", full)
    if is_dir or first.endswith((".parquet", ".pq")):
        return Source(url, fs, full, "parquet", full if len(full) > 1 else full[0])
    raise PanelError(f"unsupported file type for {url!r}: expected .parquet, a parquet directory or .csv")


def columns(src: Source) -> list[str]:
    """Column names of ``src``, read cheaply (a CSV header, a parquet schema)."""
    first = src.files[0]
    with errors(src.url, src.fs):
        if src.kind == "csv":
            import pandas as pd

            with src.fs.open(first, "rb", compression="infer") as fh:
                return list(pd.read_csv(fh, nrows=0).columns)
        import pyarrow.dataset as ds

        path = src.fs._strip_protocol(first)
        return list(ds.dataset(path, filesystem=src.fs, format="parquet", partitioning="hive").schema.names)


def parse_storage_options(ctx: Any, param: Any, value: tuple[str, ...]) -> dict[str, Any] | None:
    """A click callback: ``("endpoint_url=http://...", "anon=false")`` as a mapping (values read as
    YAML scalars); used by ``dte-dask simulate --storage-option`` and ``dte-dask serve --bucket-option``."""
    import click
    import yaml

    options = {}
    for item in value:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            options[key.strip()] = raw
    try:
        check_no_secrets(options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return options or None
