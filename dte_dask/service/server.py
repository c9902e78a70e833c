"""Run the service under uvicorn on sockets bound here (so ``--port 0`` works and is reported)."""
from __future__ import annotations

import dataclasses
import logging
import socket
import sys

from dte_dask.service.settings import ServiceSettings

logger = logging.getLogger("dte_dask.service")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket, scheme: str = "http") -> str:
    port = sock.getsockname()[1]
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{h}:{port}"


def serve(settings: ServiceSettings, *, host: str = "127.0.0.1", port: int = 8000, metrics_port: int | None = None,
          log_level: str = "info", access_log: bool = True, ssl_keyfile: str | None = None,
          ssl_certfile: str | None = None) -> None:
    """Bind, build the app and run it until SIGINT/SIGTERM (then jobs stop, the cluster closes).

    With ``ssl_keyfile`` and ``ssl_certfile`` (PEM) the sockets speak HTTPS only (uvicorn's TLS).
    """
    import uvicorn

    from dte_dask.service.app import create_app

    _configure_logging(log_level)
    sockets = [bind(host, port)]
    url = _url(host, sockets[0], "https" if ssl_certfile else "http")
    if metrics_port is not None:
        sockets.append(bind(host, metrics_port))
        metrics_port = sockets[1].getsockname()[1]
    settings = dataclasses.replace(settings, public_url=url, metrics_port=metrics_port)
    app = create_app(settings)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)),
                            server_header=False, proxy_headers=False, ssl_keyfile=ssl_keyfile,
                            ssl_certfile=ssl_certfile)
    server = uvicorn.Server(config)
    logger.info("dte-dask serve: listening on %s%s", url,
                f" (metrics also on port {metrics_port})" if metrics_port else "")
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(3)


def _configure_logging(level: str) -> None:
    log = logging.getLogger("dte_dask.service")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(h)
    log.setLevel(level.upper())
    log.propagate = False


