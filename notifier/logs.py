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

__all__ = ["configure_logging", "get_logger", "redact_processor", "route_stdlib_logging"]


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact addresses and phone numbers in every string value."""
    for key, value in event_dict.items():
        event_dict[key] = _redact(value)
    return event_dict


def _redact(value: object) -> object:
    # Lists and dicts too: a rejected event logs its validation errors as a list.
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact(item) for key, item in value.items()}
    return value


def _renderer(settings: Settings) -> Any:
    if settings.notifier_log_format == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.processors.JSONRenderer()


def configure_logging(settings: Settings) -> None:
    """Configure structlog for this process from ``NOTIFIER_LOG_LEVEL``/``_FORMAT``."""
    level = logging.getLevelNamesMapping().get(settings.notifier_log_level.upper(), logging.INFO)
    renderer = _renderer(settings)
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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, like structlog's loggers."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def route_stdlib_logging(settings: Settings, level: int | str = logging.INFO) -> None:
    """Send stdlib logging (Celery's, kombu's) through our processors and renderer.

    A ``celery worker`` calls this instead of configuring its own handlers, so
    every line it writes has one format (JSON lines in production) and goes
    through the same redaction as ours.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            _renderer(settings),
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # The twilio client logs every request's headers at INFO: noise, not news.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
