"""Rendering: one Jinja2 environment per process, strict and cached.

HTML is autoescaped; every undefined variable is an error, not an empty
string; compiled templates are cached and never re-read (``auto_reload`` off).
``NOTIFIER_TEMPLATE_DIR`` is searched before the packaged templates so an
operator can restyle messages without forking. That directory is trusted
(it is code); template *source* never comes from event data.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    select_autoescape,
)
from markupsafe import escape

from notifier.errors import ConfigurationError, PermanentError
from notifier.planner import Delivery

__all__ = ["PACKAGED_TEMPLATES", "RenderedEmail", "Renderer", "describe_lifetime"]

PACKAGED_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """The three parts of an email, ready for MIME."""

    subject: str
    text: str
    html: str


def describe_lifetime(remaining: timedelta) -> str:
    """'1 hour', '45 minutes', '1 hour 30 minutes': rounded up to the minute.

    Rounding up keeps the default reset link saying "1 hour" although a few
    seconds passed between the request and the send.
    """
    minutes = max(1, math.ceil(remaining.total_seconds() / 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = []
    for amount, unit in ((days, "day"), (hours, "hour"), (minutes, "minute")):
        if amount:
            parts.append(f"{amount} {unit}{'' if amount == 1 else 's'}")
    return " ".join(parts)


def _single_line(value: str, what: str) -> str:
    value = value.strip()
    if any(char in value for char in "\r\n"):
        raise PermanentError(f"{what} must be one line (CR/LF would inject a mail header)")
    return value


def _sms_clean(value: str) -> str:
    # Line breaks are wanted in an SMS; every other control character is not.
    kept = (
        char for char in value if char == "\n" or not unicodedata.category(char).startswith("C")
    )
    lines = "".join(kept).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


class Renderer:
    """Renders email and SMS templates for a delivery."""

    def __init__(self, override_dir: Path | None = None) -> None:
        loaders = [FileSystemLoader(str(PACKAGED_TEMPLATES))]
        if override_dir is not None:
            if not override_dir.is_dir():
                raise ConfigurationError(f"NOTIFIER_TEMPLATE_DIR {override_dir} is not a directory")
            loaders.insert(0, FileSystemLoader(str(override_dir)))
        self.environment = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
            cache_size=-1,
        )

    def context(self, delivery: Delivery, now: datetime | None = None) -> dict[str, Any]:
        """The variables a template sees: the event, ``recipient``, and derived values."""
        context = dict(delivery.event)
        context["recipient"] = delivery.recipient
        expires_at = context.get("expires_at")
        if isinstance(expires_at, str):
            moment = now or datetime.now().astimezone()
            context["expires_in"] = describe_lifetime(datetime.fromisoformat(expires_at) - moment)
        return context

    def render(self, name: str, context: dict[str, Any]) -> str:
        """Render one template file by its path under the template root."""
        return self._render(name, self._variables(context))

    def _variables(self, context: dict[str, Any]) -> dict[str, Any]:
        # What Template.render would build: the environment's globals, then ours.
        return {**self.environment.globals, **context}

    def _render(self, name: str, variables: dict[str, Any]) -> str:
        # Template.render copies its variables twice per call, a third of the
        # cost of a short template (benchmark, bench/README.md); a shared
        # context uses ``variables`` as given, so email() merges once for its
        # three parts. Templates cannot write to it: a {% set %} lands in the
        # template's own context.
        try:
            template = self.environment.get_template(name)
            try:
                context = template.new_context(variables, shared=True)
                return self.environment.concat(template.root_render_func(context))
            except Exception:  # noqa: BLE001 - re-raised by handle_exception
                # As Template.render does: point the traceback at the template line.
                self.environment.handle_exception()
        except TemplateError as exc:
            # A broken or missing template will not fix itself on retry.
            raise PermanentError(f"template {name}: {type(exc).__name__}: {exc}") from exc

    def email(self, template: str, context: dict[str, Any]) -> RenderedEmail:
        """Subject, text and HTML of an email template."""
        variables = self._variables(context)
        subject = self._render(f"email/{template}.subject", variables)
        return RenderedEmail(
            subject=_single_line(subject, f"subject of {template}"),
            text=self._render(f"email/{template}.txt", variables),
            html=self._render(f"email/{template}.html", variables),
        )

    def sms_as_email(self, template: str, context: dict[str, Any]) -> RenderedEmail:
        """A failed SMS's text as an email (the SMS-to-email fallback): email subject, SMS body."""
        subject = self.render(f"email/{template}.subject", context)
        text = self.sms(template, context)
        html = "<br>\n".join(str(escape(line)) for line in text.split("\n"))
        return RenderedEmail(
            subject=_single_line(subject, f"subject of {template}"),
            text=text,
            html=f'<!DOCTYPE html>\n<html lang="en"><body><p>{html}</p></body></html>',
        )

    def sms(self, template: str, context: dict[str, Any]) -> str:
        """The body of an SMS template, with control characters stripped."""
        return _sms_clean(self.render(f"sms/{template}.txt", context))
