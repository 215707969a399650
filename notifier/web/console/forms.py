"""Reading the console's forms and query strings: plain functions, no FastAPI.

Forms are ``application/x-www-form-urlencoded`` (no file upload anywhere), read
with the standard library instead of another dependency; the web process's
body cap (16 KiB, ``notifier.web.limits``) bounds them before they get here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qs, urlencode

from notifier.deadletter import Filter
from notifier.when import parse_when

__all__ = [
    "FILTER_FIELDS",
    "MAX_LIMIT",
    "Form",
    "Paging",
    "filter_of",
    "filter_query",
    "paging_of",
    "parse_form",
]

FILTER_FIELDS = ("status", "channel", "type", "fingerprint", "error", "since", "until")
"""The dead-letter filters, named as ``notifier dlq list``'s options."""

MAX_LIMIT = 200
"""Rows per page at most (and so entries per selection)."""

_MAX_FIELDS = 500


class Form:
    """A parsed form: the first value of a field, or all of them."""

    def __init__(self, fields: Mapping[str, list[str]]) -> None:
        self._fields = fields

    def first(self, name: str) -> str:
        """The field's first value, stripped ("" when absent)."""
        values = self._fields.get(name)
        return values[0].strip() if values else ""

    def all(self, name: str) -> list[str]:
        """Every value of the field (checkboxes), in order, without blanks."""
        return [value for value in self._fields.get(name, []) if value]

    def values(self) -> dict[str, str]:
        """Each field's first value."""
        return {name: self.first(name) for name in self._fields}


def parse_form(body: bytes) -> Form:
    """A urlencoded body; ValueError when it is not one (or has too many fields)."""
    text = body.decode("utf-8")
    return Form(parse_qs(text, keep_blank_values=True, max_num_fields=_MAX_FIELDS))


def filter_of(values: Mapping[str, str], now: datetime) -> Filter:
    """The dead-letter filter of these fields; ValueError for a time that is none."""

    def given(name: str) -> str | None:
        value = values.get(name, "").strip()
        return value or None

    since, until = given("since"), given("until")
    return Filter(
        status=given("status"),
        channel=given("channel"),
        event_type=given("type"),
        fingerprint=given("fingerprint"),
        error=given("error"),
        since=parse_when(since, now) if since else None,
        until=parse_when(until, now) if until else None,
    )


def filter_query(values: Mapping[str, str], **extra: str | int) -> str:
    """A query string of the filter fields given (and ``extra``), for links."""
    pairs: list[tuple[str, str]] = [
        (name, values[name].strip()) for name in FILTER_FIELDS if values.get(name, "").strip()
    ]
    pairs += [(name, str(value)) for name, value in extra.items()]
    return urlencode(pairs)


@dataclass(frozen=True, slots=True)
class Paging:
    """Which rows a page shows."""

    offset: int
    limit: int


def paging_of(values: Mapping[str, str], default_limit: int = 50) -> Paging:
    """Offset and limit from a query: bad or out-of-range numbers fall back or are clamped."""

    def number(name: str, default: int) -> int:
        text = values.get(name, "").strip()
        return int(text) if text.isdigit() and len(text) < 10 else default

    return Paging(number("offset", 0), min(max(number("limit", default_limit), 1), MAX_LIMIT))
