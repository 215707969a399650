"""What a dead letter is: the entry models, filters, fingerprints, and the stored form.

The store (``notifier.deadletter``) keeps these in Redis; this module decides what
an entry holds and how it is written and read back, without Redis. What
producers send is hostile until proven otherwise, so every stored field is
capped and a whole entry is at most ``MAX_ENTRY_BYTES`` as stored (a cut ends
with ``…[truncated N bytes]``), and a document that is not an entry is read as
a ``CorruptEntry`` rather than raised. What an entry says about its delivery
(recipient, channel, template, event) is read from the delivery itself, the
one thing a replay sends.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticSerializationError

from notifier.callback_payload import CallbackPayload
from notifier.planner import Delivery
from notifier.timestamps import iso_utc
from notifier.truncation import mark, truncate, utf8_size

__all__ = [
    "CORRUPT_REASON",
    "DOCUMENT_PREFIX",
    "MAX_ENTRY_BYTES",
    "MAX_ID_CHARS",
    "MAX_TEXT_BYTES",
    "AttemptRecord",
    "CorruptEntry",
    "DeadLetter",
    "Entry",
    "Filter",
    "Page",
    "ReplayResult",
    "Status",
    "capped_errors",
    "clean_text",
    "fingerprint",
    "parse_entry",
    "stored_form",
]

Status = Literal["failed", "rejected", "expired", "rate_limited", "undelivered"]

MAX_ENTRY_BYTES = 70_000
"""The largest entry, as stored. The largest valid event (64 KiB) fits with its delivery."""

# Caps per field. Ours are far shorter (ids, type names, an SMTP reply); a forged
# job or event can make them megabytes long.
MAX_ID_CHARS = 100
_MAX_NAME_BYTES = 256
MAX_TEXT_BYTES = 1024
_MAX_ERRORS = 20
_MAX_HISTORY = 20
"""Attempt records kept: the first, and the latest 19."""

_DERIVED = frozenset({"event_id", "event_type", "channel", "template"})
"""Fields a delivery entry reads from its delivery, so they are not stored beside it."""

CORRUPT_REASON = "corrupt entry"
"""Why a replay skipped an entry: its document is not an entry."""


def _timestamp(value: str) -> str:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("a time without a zone")
    return value


Timestamp = Annotated[str, AfterValidator(_timestamp)]
"""An ISO 8601 time with a zone, kept as written: filters compare them as times."""


class AttemptRecord(BaseModel):
    """One failed try: when, which attempt, what went wrong."""

    model_config = ConfigDict(frozen=True)

    attempt: int
    at: Timestamp
    error: str
    provider: str | None = None


class DeadLetter(BaseModel):
    """One entry of the dead-letter store (``show --json`` prints this)."""

    id: str
    status: Status
    event_id: str | None = None
    event_type: str | None = None
    channel: Literal["email", "sms", "callback"] | None = None
    template: str | None = None
    recipient: str | None = None
    """The delivery's address (None without a delivery); a stored value is ignored."""
    error: str
    fingerprint: str
    attempts: int = 0
    failed_at: Timestamp
    first_failed_at: Timestamp
    delivery: Delivery | None = None
    raw_event: str | None = None
    errors: list[str] = Field(default_factory=list)
    history: list[AttemptRecord] = Field(default_factory=list)
    fallback: str | None = None
    """Delivery id of the email sent in place of this failed SMS, if one was."""
    callback: CallbackPayload | None = None
    """A callback to the producer that ran out of attempts (channel ``callback``): what
    ``dlq replay`` puts back on ``notifier.callbacks`` (docs/DESIGN.md §10)."""

    @model_validator(mode="after")
    def _read_from_the_delivery(self) -> Self:
        # What `dlq list` shows must be what `dlq replay` sends: the delivery,
        # or the callback.
        if self.callback is not None:
            self.channel = "callback"
            self.event_id = self.callback.event_id
            self.event_type = self.callback.type
            self.template = self.callback.template
        elif self.channel == "callback":
            self.channel = None  # nothing to call back: not a callback entry
        delivery = self.delivery
        self.recipient = delivery.address if delivery is not None else None
        if delivery is not None:
            self.event_id = delivery.event_id
            self.event_type = delivery.event_type
            self.channel = delivery.channel
            self.template = delivery.template
        return self


@dataclass(frozen=True, slots=True)
class CorruptEntry:
    """A stored document that is not a dead letter: listed, counted, shown raw, purged.

    It has a dead letter's fields so filters and counts read it like any
    entry; what the document does not say is None.
    """

    id: str
    failed_at: str | None
    """From the index score (the document cannot be trusted); None if not indexed."""
    raw: str
    """The document as stored, undecodable bytes replaced."""
    problem: str
    """Why it is not a dead letter."""
    status: Literal["corrupt"] = "corrupt"
    event_id: None = None
    event_type: None = None
    channel: None = None
    template: None = None
    recipient: None = None
    delivery: None = None

    @property
    def error(self) -> str:
        """The problem, as a dead letter's ``error`` reads."""
        return f"CorruptEntry: {self.problem}"

    @property
    def fingerprint(self) -> str:
        """Alike problems group together, as alike errors do."""
        return fingerprint(self.error)


Entry = DeadLetter | CorruptEntry
"""What the store holds under an id."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What replaying one entry did (``done``), or why it could not (``error``)."""

    entry_id: str
    done: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries an operator means: every given criterion must match."""

    channel: str | None = None
    event_type: str | None = None
    status: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    """Failed at or before this time (``--until``, for paging back through time)."""
    fingerprint: str | None = None
    """Errors of one shape (the console's groups link here; its own index answers it)."""

    def matches(self, entry: Entry) -> bool:
        """Whether ``entry`` meets every criterion given."""
        if self.channel and entry.channel != self.channel:
            return False
        if self.event_type and entry.event_type != self.event_type:
            return False
        if self.status and entry.status != self.status:
            return False
        if self.error and self.error.lower() not in entry.error.lower():
            return False
        if self.fingerprint and entry.fingerprint != self.fingerprint:
            return False
        if self.since is None and self.until is None:
            return True
        if entry.failed_at is None:
            return False
        moment = datetime.fromisoformat(entry.failed_at)
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment <= self.until

    def facets(self) -> dict[str, str]:
        """The criteria a secondary index answers: facet name → value."""
        given = {
            "status": self.status,
            "channel": self.channel,
            "type": self.event_type,
            "fingerprint": self.fingerprint,
        }
        return {name: value for name, value in given.items() if value}

    def scores(self) -> tuple[float, float]:
        """The index score range (epoch seconds) ``since`` and ``until`` allow."""
        low = self.since.timestamp() if self.since is not None else -math.inf
        high = self.until.timestamp() if self.until is not None else math.inf
        return low, high

    def is_empty(self) -> bool:
        """No criterion given: every entry."""
        return not (self.facets() or self.error or self.since or self.until)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing and how many entries match in all."""

    entries: list[Entry]
    total: int


_VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(?:\.\d+)?|<[^>]*>|'[^']*'|\"[^\"]*\"")


def fingerprint(error: str) -> str:
    """Group alike errors: numbers, ids, quoted values and <addresses> don't count."""
    error_class = error.split(":", 1)[0][:64]
    shape = _VOLATILE.sub("#", error)
    digest = hashlib.sha1(
        shape.encode("utf-8", "surrogatepass"), usedforsecurity=False
    ).hexdigest()[:10]
    return f"{error_class}:{digest}"


def stored_form(entry: DeadLetter) -> tuple[DeadLetter, bytes, float]:
    """``entry`` as stored: (as ``get`` reads it, the document, its index score)."""
    document = _bounded(entry)
    score = datetime.fromisoformat(entry.failed_at).timestamp()
    stored = DeadLetter.model_validate_json(document)
    if stored.id != entry.id:
        stored = stored.model_copy(update={"id": entry.id})
    return stored, document, score


DOCUMENT_PREFIX = b'{"id":"'
"""How every document ``_document`` writes begins (pydantic writes ``id`` first, no
spaces). Anything else may be corrupt, and a corrupt entry's error is not in its
document: it is parsed before the error filter judges it."""


def _failed_at(score: float | None) -> str | None:
    if score is None:
        return None
    try:
        moment = datetime.fromtimestamp(score, UTC)
    except (OverflowError, OSError, ValueError):
        moment = datetime.max.replace(tzinfo=UTC) if score > 0 else datetime.min.replace(tzinfo=UTC)
    return iso_utc(moment)


def parse_entry(entry_id: str, raw: bytes | str, score: float | None) -> Entry:
    """The entry stored under ``entry_id``: a dead letter, or corrupt."""
    try:
        entry = DeadLetter.model_validate_json(raw)
    except ValidationError as exc:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return CorruptEntry(entry_id, _failed_at(score), text, _problem(exc))
    # The key is the id: a document claiming another one must not make purge miss it.
    return entry if entry.id == entry_id else entry.model_copy(update={"id": entry_id})


def _problem(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return truncate("; ".join(parts), MAX_TEXT_BYTES)


def clean_text(text: str) -> str:
    """Text that encodes as UTF-8 whatever a producer sent (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def capped_errors(errors: list[str]) -> list[str]:
    kept = [truncate(error, MAX_TEXT_BYTES) for error in errors[:_MAX_ERRORS]]
    if len(errors) > _MAX_ERRORS:
        kept[-1] = f"…[{len(errors) - _MAX_ERRORS + 1} more errors not kept]"
    return kept


def _capped_history(history: list[AttemptRecord], keep: int) -> list[AttemptRecord]:
    if len(history) > keep:
        history = [history[0], *history[len(history) - keep + 1 :]]
    return [
        record.model_copy(
            update={
                "error": truncate(record.error, MAX_TEXT_BYTES),
                "provider": _short(record.provider),
            }
        )
        for record in history
    ]


def _short(text: str | None) -> str | None:
    return None if text is None else truncate(text, _MAX_NAME_BYTES)


def _document(entry: DeadLetter) -> bytes:
    """The stored form: what a delivery says is stored once, in the delivery."""
    exclude = {"recipient", *(_DERIVED if entry.delivery is not None else ())}
    try:
        return entry.model_dump_json(exclude=exclude).encode()
    except PydanticSerializationError:
        # A lone surrogate from a forged job cannot be written as UTF-8: store it
        # escaped, as reject() does, rather than lose the failure.
        cleaned = _clean_tree(entry.model_dump(exclude=exclude))
        return DeadLetter.model_validate(cleaned).model_dump_json(exclude=exclude).encode()


def _clean_tree(value: object) -> object:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean_tree(item) for item in value]
    if isinstance(value, dict):
        return {_clean_tree(key): _clean_tree(item) for key, item in value.items()}
    return value


def _bounded(entry: DeadLetter) -> bytes:
    """The stored form of ``entry``, every field capped, the whole at most MAX_ENTRY_BYTES.

    What gives way, in order: the middle of a long history; a delivery too
    large to keep whole (only a forged job carries one), kept as cut text
    instead and no longer replayable; the raw payload's tail.
    """
    entry = entry.model_copy(
        update={
            "event_id": _short(entry.event_id),
            "event_type": _short(entry.event_type),
            "template": _short(entry.template),
            "fallback": _short(entry.fallback),
            "error": truncate(entry.error, MAX_TEXT_BYTES),
            "errors": capped_errors(entry.errors),
            "history": _capped_history(entry.history, _MAX_HISTORY),
        }
    )
    document = _document(entry)
    if len(document) > MAX_ENTRY_BYTES and len(entry.history) > 2:
        entry = entry.model_copy(update={"history": _capped_history(entry.history, 2)})
        document = _document(entry)
    if len(document) > MAX_ENTRY_BYTES and entry.delivery is not None:
        text = clean_text(json.dumps(entry.delivery.model_dump(mode="json"), ensure_ascii=False))
        note = f"the delivery ({utf8_size(text)} bytes) was too large to keep: cut in raw_event"
        entry = entry.model_copy(
            update={
                "delivery": None,
                "raw_event": text,
                "errors": [*entry.errors[: _MAX_ERRORS - 1], note],
            }
        )
        document = _document(entry)
    if len(document) > MAX_ENTRY_BYTES and entry.raw_event is not None:
        without = len(_document(entry.model_copy(update={"raw_event": ""})))
        room = MAX_ENTRY_BYTES - without
        raw_event = _cut_to_json_size(entry.raw_event, room)
        document = _document(entry.model_copy(update={"raw_event": raw_event}))
        # json.dumps and pydantic escape a few characters differently: close the gap.
        while len(document) > MAX_ENTRY_BYTES and room > 0:
            room -= len(document) - MAX_ENTRY_BYTES
            raw_event = _cut_to_json_size(entry.raw_event, room)
            document = _document(entry.model_copy(update={"raw_event": raw_event}))
        if len(document) > MAX_ENTRY_BYTES:
            document = _document(entry.model_copy(update={"raw_event": None}))
    return document


def _cut_to_json_size(text: str, max_bytes: int) -> str:
    """``text`` cut (with the mark) so that it takes at most ``max_bytes`` as a JSON string."""

    def size(candidate: str) -> int:
        return utf8_size(json.dumps(candidate, ensure_ascii=False))

    if size(text) <= max_bytes:
        return text
    total = utf8_size(text)

    def cut(chars: int) -> str:
        kept = text[:chars]
        return kept + mark(total - utf8_size(kept))

    # Each character takes at least one byte, so the answer is under max_bytes characters.
    low, high = 0, min(len(text), max(0, max_bytes))
    while low < high:
        middle = (low + high + 1) // 2
        if size(cut(middle)) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return cut(low)
