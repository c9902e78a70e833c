"""ASGI middleware of the service: the request-body limit (413) and the metrics-port filter."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse

DRAIN_FACTOR = 64  # a refused body is read and dropped up to 64 x the limit (16 MiB at 256 KiB) ...
DRAIN_SECONDS = 5.0  # ... and for at most this long


class BodySizeLimit:
    """413 for request bodies over ``limit`` bytes (Content-Length or counted while streaming)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                too_big = int(cl) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                return await self._reject(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await self._reject(scope, receive, send, more=bool(msg.get("more_body")))
            chunks.append(body)
            if not msg.get("more_body"):
                break
        whole = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, scope: dict[str, Any], receive: Any, send: Any, *, more: bool = True) -> None:
        # Read (and drop) what the client is still sending, up to DRAIN_FACTOR x the limit and
        # DRAIN_SECONDS, before answering: a server that answers mid-upload and closes makes most
        # clients see a reset connection instead of the 413. Past either bound the connection is
        # closed anyway. ``more``: whether the client has more body to send (False once its last
        # chunk was read).
        budget = DRAIN_FACTOR * self.limit
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while more and budget > 0:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                msg = await asyncio.wait_for(receive(), timeout=left)
            except asyncio.TimeoutError:
                break
            if msg["type"] == "http.disconnect":
                return None
            budget -= len(msg.get("body", b""))
            more = bool(msg.get("more_body"))
        resp = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413,
                            headers={"Connection": "close"})
        await resp(scope, receive, send)


class MetricsPortOnly:
    """On the separate metrics port, serve only ``/metrics`` and ``/health``."""

    def __init__(self, app: Any, port: int | None) -> None:
        self.app, self.port = app, port

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (self.port and scope["type"] == "http" and (scope.get("server") or (None, None))[1] == self.port
                and scope.get("path") not in ("/metrics", "/health")):
            resp = JSONResponse({"detail": "Not Found"}, status_code=404)
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)
