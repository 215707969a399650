"""A producer's callback endpoint for tests: a real HTTP server in a thread.

It checks every request's ``Notifier-Signature`` with ``verify_signature`` (as
a receiver would, docs/operations.md) and records what arrived. Behaviour is
set per test: answer a status, hang until released, or redirect elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from notifier.callbacks import SIGNATURE_HEADER, verify_signature

__all__ = ["CallbackEndpoint", "ReceivedCallback"]


@dataclass(frozen=True)
class ReceivedCallback:
    """One request as the endpoint saw it."""

    path: str
    body: bytes
    signature: str
    signed: bool
    """Whether ``verify_signature`` accepted it with the endpoint's secret, just now."""

    @property
    def payload(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # the stdlib's name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        signature = self.headers.get(SIGNATURE_HEADER) or ""
        endpoint = self.server.endpoint
        signed = verify_signature(endpoint.secret, signature, body, time.time())
        endpoint.record(ReceivedCallback(self.path, body, signature, signed))
        if endpoint.hang:
            # Until the test ends (or lets it go): longer than any callback timeout.
            endpoint.released.wait(timeout=60)
        self.send_response(endpoint.status)
        if endpoint.location is not None:
            self.send_header("Location", endpoint.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's names
        pass  # quiet test output


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: CallbackEndpoint


class CallbackEndpoint:
    """``with CallbackEndpoint(secret) as endpoint:`` serves on ``endpoint.url``."""

    def __init__(
        self,
        secret: str,
        *,
        status: int = 200,
        hang: bool = False,
        location: str | None = None,
    ) -> None:
        self.secret = secret
        self.status = status
        self.hang = hang
        self.location = location
        self.released = threading.Event()
        self._received: list[ReceivedCallback] = []
        self._lock = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.endpoint = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/notifier"

    def record(self, received: ReceivedCallback) -> None:
        with self._lock:
            self._received.append(received)
            self._lock.notify_all()

    @property
    def received(self) -> list[ReceivedCallback]:
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedCallback]:
        """The first ``count`` requests; ``TimeoutError`` if fewer arrive within ``timeout``."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._received) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._received)} of {count} callbacks arrived within {timeout:g}s"
                )
            return list(self._received[:count])

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
