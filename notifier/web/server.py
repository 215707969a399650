"""Serving the web app with uvicorn: the bind check, the process, and a thread for tests/demo.

uvicorn configures no logging of its own (``log_config=None``) and its access
log is off: its records go through ``notifier.logs`` like every other
library's, and the access log is ours (``notifier.web.access``), which never
prints a header or a query string.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from notifier.errors import ConfigurationError
from notifier.health import CHECK_TIMEOUT, Check, check_redis, describe_redis_url
from notifier.receipts import TwilioReceipt, apply_receipt
from notifier.redis_clients import quick_redis
from notifier.runtime import Runtime
from notifier.settings import Settings
from notifier.web.app import WebParts, create_app
from notifier.web.console.wiring import production_ports

__all__ = ["ServerThread", "check_bind", "production_parts", "serve", "uvicorn_config"]


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name may resolve to any address


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback ``NOTIFIER_WEB_HOST`` without ``NOTIFIER_API_KEY`` (§9)."""
    host = settings.notifier_web_host
    if not _loopback(host) and settings.notifier_api_key is None:
        raise ConfigurationError(
            f"NOTIFIER_WEB_HOST {host} is not a loopback address: set NOTIFIER_API_KEY "
            "first, or bind 127.0.0.1 (docs/security.md)"
        )


def production_parts(settings: Settings) -> tuple[WebParts, Callable[[], None]]:
    """The real parts for these settings, and how to close them.

    The Runtime is a Celery client's (``notifier.app``): the receipts' fallback
    emails are published with its scheduler, as ``dlq replay`` publishes.
    """
    from notifier.app import create_app as celery_app

    app = celery_app(settings)
    rt: Runtime = app.runtime
    master = settings.notifier_redis_master_name
    where = describe_redis_url(settings.redis_url, master)
    # Its own client for /healthz, failing fast as `notifier health`'s does: the
    # runtime's retries ride out a Redis restart, longer than a probe may wait.
    probe = quick_redis(settings.redis_url, timeout=CHECK_TIMEOUT, master_name=master)

    def health() -> list[Check]:
        return [check_redis(probe, where)]

    def close() -> None:
        probe.close()
        app.close_runtime()

    receipts: Callable[[TwilioReceipt], object] = partial(apply_receipt, rt=rt)
    parts = WebParts(
        settings=settings,
        status=rt.status,
        health=health,
        apply_receipt=receipts,
        console=production_ports(settings, app),
    )
    return parts, close


def serve(settings: Settings) -> None:
    """Run ``notifier web`` in this process until SIGINT/SIGTERM (``check_bind`` first)."""
    check_bind(settings)
    parts, close = production_parts(settings)
    try:
        config = uvicorn_config(
            create_app(parts), settings.notifier_web_host, settings.notifier_web_port
        )
        uvicorn.Server(config).run()
    finally:
        close()


def uvicorn_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for our app: our logging, no access log, no lifespan."""
    # Off for good, not only handler-less: uvicorn logs the request line (query
    # string included) whenever the logger has a handler anywhere, and a handler
    # can be added later (pytest's log capture adds one to every quiet logger).
    logging.getLogger("uvicorn.access").disabled = True
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        # A status callback or a status read is small and quick: a client that
        # holds a connection open idle is let go soon.
        timeout_keep_alive=5,
    )


class ServerThread:
    """uvicorn serving ``app`` in a daemon thread (tests and ``notifier demo``)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        from notifier.testing.ports import free_port

        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(uvicorn_config(app, self.host, self.port))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The origin it serves, e.g. ``http://127.0.0.1:8808``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        """Serve; return once the port accepts connections."""
        thread = threading.Thread(target=self._server.run, name=f"web-{self.port}", daemon=True)
        thread.start()
        self._thread = thread
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the web server on {self.url} exited at start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the web server on {self.url} did not start in {timeout:g}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (open connections are closed) and wait for the thread."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
