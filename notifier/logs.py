"""structlog set-up: JSON lines (or console), with personal data redacted, each line bounded.

Every string value of every log line passes through ``redact_text``, so an
address that sneaks into an error message is redacted too, not only the
fields we know carry one.

A line is at most ``MAX_RECORD_BYTES`` (8 KiB), newline included: values are
cut (``…[truncated N bytes]``) after redaction, so a cut never leaves half an
address unredacted. Each line goes out in one ``write`` call, so the lines of
processes sharing one stderr do not run into each other.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from notifier.redaction import redact_text
from notifier.settings import Settings
from notifier.truncation import mark, truncate, utf8_size

__all__ = [
    "MAX_RECORD_BYTES",
    "configure_logging",
    "get_logger",
    "redact_processor",
    "route_stdlib_logging",
]

MAX_RECORD_BYTES = 8 * 1024
"""The longest log line, newline included (docs/DESIGN.md §10)."""

# Bytes each value may keep, tried in turn until the line fits. Most records have
# a dozen short fields: the first cap already fits all but the field that was huge.
_VALUE_CAPS = (2048, 512, 128)
# What a record keeps when even the smallest cap is not enough (thousands of fields).
_ESSENTIAL = ("timestamp", "level", "logger", "event")


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


Renderer = Callable[[WrappedLogger, str, EventDict], str | bytes]


class CappedRenderer:
    """A renderer whose lines are at most ``limit`` bytes, newline included."""

    def __init__(self, renderer: Renderer, limit: int = MAX_RECORD_BYTES) -> None:
        self._render = renderer
        self._limit = limit

    def _fits(self, line: str) -> bool:
        return len(line) * 4 < self._limit or utf8_size(line) < self._limit

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        # Renderers may pop keys (the console one does): each try gets its own copy.
        whole = self._line(logger, name, dict(event_dict))
        if self._fits(whole):
            return whole
        for cap in _VALUE_CAPS:
            capped = {key: _cut(value, cap) for key, value in event_dict.items()}
            line = self._line(logger, name, capped)
            if self._fits(line):
                return line
        essentials = {key: _cut(event_dict[key], 256) for key in _ESSENTIAL if key in event_dict}
        kept = utf8_size(self._line(logger, name, dict(essentials)))
        essentials["truncated"] = mark(utf8_size(whole) - kept)
        return self._line(logger, name, essentials)

    def _line(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        line = self._render(logger, name, event_dict)
        return line.decode("utf-8", "replace") if isinstance(line, bytes) else line


def _cut(value: object, max_bytes: int) -> object:
    """``value`` cut to about ``max_bytes``; a list or dict too large becomes its cut JSON."""
    if isinstance(value, str):
        return truncate(value, max_bytes)
    if value is None or isinstance(value, bool | int | float):
        return value
    text = json.dumps(value, default=repr, ensure_ascii=False)
    return value if utf8_size(text) <= max_bytes else truncate(text, max_bytes)


def _renderer(settings: Settings) -> CappedRenderer:
    if settings.notifier_log_format == "console":
        return CappedRenderer(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    return CappedRenderer(structlog.processors.JSONRenderer())


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
        # WriteLogger writes line and newline in one call; PrintLogger (print) makes two.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
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
