"""The console's pages: one Jinja2 environment, autoescaped, and the filters that make
stored text inert.

Templates live in ``notifier/web/console/templates/`` (package data), beside the
code that renders them and apart from the message templates in
``notifier/templates/`` (which operators may override; these they may not).
Everything from the store goes through a filter before autoescaping:

* ``inert``: terminal escapes and other control or bidi characters written as
  their escapes (``notifier.inert``), as the CLI prints them;
* ``redacted``: addresses and numbers in free text redacted, then inert;
* ``address``: a recipient redacted (``a***@example.com``), then inert.

Autoescaping then makes ``<script>`` text. The security headers every console
response carries are here too (docs/console.md, "Security").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from notifier.inert import inert
from notifier.redaction import redact_address, redact_text

__all__ = ["SECURITY_HEADERS", "TEMPLATES", "Pages"]

TEMPLATES = Path(__file__).parent / "templates"

SECURITY_HEADERS = {
    # No script at all: the console works without one, so none may run.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def _text(value: object) -> str:
    return "-" if value is None else inert(str(value))


def _redacted(value: object) -> str:
    return "-" if value is None else inert(redact_text(str(value)))


def _address(value: object) -> str:
    return "-" if value is None else inert(redact_address(str(value)))


def _number(value: int) -> str:
    return f"{value:,}"


def _short(value: str, length: int = 100) -> str:
    return value if len(value) <= length else value[: length - 1] + "…"


class Pages:
    """Renders the console's templates into HTML responses."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.environment = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.environment.filters.update(
            inert=_text,
            redacted=_redacted,
            address=_address,
            num=_number,
            short=_short,
            urlpart=lambda value: quote(str(value), safe=""),
        )
        self.environment.globals["base"] = prefix

    def html(self, name: str, context: dict[str, Any]) -> str:
        """A template rendered to text."""
        return self.environment.get_template(name).render(context)

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """A page as a response (``csrf`` is "" on pages without a session)."""
        context.setdefault("csrf", "")
        context.setdefault("signed_in", bool(context["csrf"]))
        return HTMLResponse(self.html(name, context), status_code=status_code)

    def error(self, status_code: int, detail: str, *, signed_in: bool = False) -> HTMLResponse:
        """An error page."""
        return self.render(
            "error.html", status_code, status=status_code, detail=detail, signed_in=signed_in
        )
