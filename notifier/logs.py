"""structlog set-up: JSON lines (or console), with personal data redacted.

Every string value of every log line passes through ``redact_text``, so an
address that sneaks into an error message is redacted too, not only the
fields we know carry one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from notifier.redaction import redact_text
from notifier.settings import Settings

__all__ = ["configure_logging", "get_logger", "redact_processor"]


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact addresses and phone numbers in every string value."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def configure_logging(settings: Settings) -> None:
    """Configure structlog for this process from ``NOTIFIER_LOG_LEVEL``/``_FORMAT``."""
    level = logging.getLevelNamesMapping().get(settings.notifier_log_level.upper(), logging.INFO)
    renderer: Any
    if settings.notifier_log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger() -> Any:
    """The notifier logger (a structlog BoundLogger)."""
    return structlog.get_logger("notifier")
