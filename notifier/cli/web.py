"""``notifier web``: the status API and Twilio's status callback (docs/DESIGN.md §9)."""

from __future__ import annotations

import typer

from notifier.cli import output
from notifier.errors import ConfigurationError

__all__ = ["web"]


def web() -> None:
    """Serve GET /v1/events/{id}, POST /twilio/status and /healthz on NOTIFIER_WEB_HOST:PORT.

    Exit 2 when the settings do not allow it (a non-loopback host without NOTIFIER_API_KEY).
    """
    # Imported here: `notifier --help` and the other commands don't load FastAPI.
    from notifier.logs import configure_logging, route_stdlib_logging
    from notifier.settings import get_settings
    from notifier.web.server import check_bind, serve

    try:
        settings = get_settings()
        check_bind(settings)
    except ConfigurationError as exc:
        output.line(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings)
    route_stdlib_logging(settings)
    serve(settings)
