"""The web process's access log: one structlog line per request, nothing secret in it.

Instead of uvicorn's access log, which prints the request line (query
strings included) and runs outside our redaction: this one logs the method,
the path without its query, the status and the time taken; never a header
(``Authorization``) and never a body (docs/security.md).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notifier.logs import get_logger

__all__ = ["AccessLog"]


class AccessLog:
    """Log ``web.request`` (method, path, status, ms) for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # unless a response starts

        async def watching_send(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            get_logger().info(
                "web.request",
                method=scope.get("method", ""),
                path=scope.get("path", "")[:200],
                status=code,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
