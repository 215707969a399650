"""The dead-letter store: everything that could not be delivered, kept for operators.

An entry holds the whole delivery (so it can be rendered and sent again), the
error class and message, a fingerprint to group alike failures, and the
history of attempts. Rejected events (invalid input) are kept too, with their
raw payload and the validation errors: nothing accepted disappears.

Layout (``notifier.keys``): one JSON document per entry and a sorted set of ids
scored by the time of the last failure, written together in MULTI/EXEC.
Nothing here expires or is evicted: entries leave only by replay or purge.

What producers send is hostile until proven otherwise, so:

* every stored field is capped and a whole entry is at most ``MAX_ENTRY_BYTES``
  as stored (a cut ends with ``…[truncated N bytes]``);
* a document that is not an entry (not JSON, a wrong shape, a time that is no
  time: written by hand, by a bug, by an attacker) is read as a ``CorruptEntry``:
  listed, counted, shown raw and purged like any other, never replayed. It
  cannot stop the operator's tools, nor keep a worker from recording a failure;
* what an entry says about its delivery (recipient, channel, template, event)
  is read from the delivery itself, the one thing a replay sends, never from a
  second stored copy that could disagree with it.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self, cast

import redis
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticSerializationError

from notifier import keys
from notifier.errors import NotifierError
from notifier.logs import get_logger
from notifier.planner import Delivery
from notifier.timestamps import iso_utc
from notifier.truncation import mark, truncate, utf8_size

__all__ = [
    "CORRUPT_REASON",
    "MAX_ENTRY_BYTES",
    "AttemptRecord",
    "CorruptEntry",
    "DeadLetter",
    "DeadLetterStore",
    "Entry",
    "Filter",
    "ReplayResult",
    "Status",
    "fingerprint",
]

Status = Literal["failed", "rejected", "expired", "rate_limited"]

MAX_ENTRY_BYTES = 70_000
"""The largest entry, as stored. The largest valid event (64 KiB) fits with its delivery."""

# Caps per field. Ours are far shorter (ids, type names, an SMTP reply); a forged
# job or event can make them megabytes long.
_MAX_ID_CHARS = 100
_MAX_NAME_BYTES = 256
_MAX_TEXT_BYTES = 1024
_MAX_ERRORS = 20
_MAX_HISTORY = 20
"""Attempt records kept: the first, and the latest 19."""

_DERIVED = frozenset({"event_id", "event_type", "channel", "template"})
"""Fields a delivery entry reads from its delivery, so they are not stored beside it."""

CORRUPT_REASON = "corrupt entry"
"""Why a replay skipped an entry: its document is not an entry."""

_ALERT_INTERVAL = timedelta(minutes=1)


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
    channel: Literal["email", "sms"] | None = None
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

    @model_validator(mode="after")
    def _read_from_the_delivery(self) -> Self:
        # What `dlq list` shows must be what `dlq replay` sends: the delivery.
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
        if self.since is None:
            return True
        return entry.failed_at is not None and datetime.fromisoformat(entry.failed_at) >= self.since


_VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(?:\.\d+)?|<[^>]*>|'[^']*'|\"[^\"]*\"")


def fingerprint(error: str) -> str:
    """Group alike errors: numbers, ids, quoted values and <addresses> don't count."""
    error_class = error.split(":", 1)[0][:64]
    shape = _VOLATILE.sub("#", error)
    digest = hashlib.sha1(
        shape.encode("utf-8", "surrogatepass"), usedforsecurity=False
    ).hexdigest()[:10]
    return f"{error_class}:{digest}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeadLetterStore:
    """Add, read, list and remove dead letters in Redis."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._redis = client
        self._clock = clock
        self._warned_at: datetime | None = None

    def add_delivery(
        self,
        delivery: Delivery,
        *,
        status: Status,
        error: str,
        history: list[AttemptRecord],
        fallback: str | None = None,
    ) -> DeadLetter:
        """Dead-letter a delivery; an entry for the same delivery keeps its older history.

        When the document under the delivery's id is corrupt, the failure is
        recorded under a new id: the corrupt one stays for the operator to see,
        and this failure is not lost with it.
        """
        now = iso_utc(self._clock())
        entry_id = delivery.delivery_id
        previous = self.get(entry_id) if len(entry_id) <= _MAX_ID_CHARS else None
        if len(entry_id) > _MAX_ID_CHARS or isinstance(previous, CorruptEntry):
            entry_id, previous = str(uuid.uuid4()), None
        earlier = previous.history if previous else []
        known = {(record.attempt, record.at) for record in earlier}
        merged = earlier + [
            record for record in history if (record.attempt, record.at) not in known
        ]
        entry = DeadLetter(
            id=entry_id,
            status=status,
            error=error,
            fingerprint=fingerprint(truncate(error, _MAX_TEXT_BYTES)),
            attempts=sum(1 for record in merged if record.attempt > 0),
            failed_at=now,
            # The history travels with a replayed job, so it remembers the first
            # failure even after the entry itself was taken out of the store.
            first_failed_at=min(
                [record.at for record in merged] + [previous.first_failed_at if previous else now]
            ),
            delivery=delivery,
            history=merged,
            fallback=fallback,
        )
        return self._write(entry)

    def reject(self, raw: object, errors: list[str], *, status: Status = "rejected") -> DeadLetter:
        """Keep an event we could not process, whole (up to the size cap), with the reasons.

        ``rejected``: invalid input. ``failed``: a valid-looking message whose
        task crashed or kept killing its worker (replay publishes it again).
        """
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw).decode("utf-8", "replace")
        try:
            # ASCII-escaped: a lone surrogate from a producer must not stop us
            # from storing the very payload that was rejected for it.
            text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=True)
        except (TypeError, ValueError, RecursionError):
            text = repr(raw)
        kept = _capped_errors([_clean(error) for error in errors])
        raw_dict = raw if isinstance(raw, dict) else {}
        event_id = raw_dict.get("event_id")
        event_type = raw_dict.get("type")
        prefix = "InvalidEventError" if status == "rejected" else "TaskFailed"
        now = iso_utc(self._clock())
        entry = DeadLetter(
            id=str(uuid.uuid4()),
            status=status,
            event_id=_clean(event_id) if isinstance(event_id, str) else None,
            event_type=_clean(event_type) if isinstance(event_type, str) else None,
            error=f"{prefix}: " + "; ".join(kept),
            fingerprint=fingerprint(f"{prefix}: " + "; ".join(sorted(kept))),
            failed_at=now,
            first_failed_at=now,
            raw_event=_clean(text),
            errors=kept,
        )
        return self._write(entry)

    def _write(self, entry: DeadLetter) -> DeadLetter:
        """Store ``entry`` within the size caps; return it as stored (as ``get`` reads it)."""
        document = _bounded(entry)
        score = datetime.fromisoformat(entry.failed_at).timestamp()
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_key(entry.id), document)
            pipe.zadd(keys.DLQ_INDEX, {_member(entry.id): score})
            pipe.execute()
        stored = DeadLetter.model_validate_json(document)
        return stored if stored.id == entry.id else stored.model_copy(update={"id": entry.id})

    def get(self, entry_id: str) -> Entry | None:
        """One entry by id, or None."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(_key(entry_id))
            pipe.zscore(keys.DLQ_INDEX, _member(entry_id))
            raw, score = pipe.execute()
        return None if raw is None else _parse(entry_id, raw, score)

    def __iter__(self) -> Iterator[Entry]:
        """Every entry, oldest failure first."""
        indexed = cast(
            "list[tuple[bytes, float]]", self._redis.zrange(keys.DLQ_INDEX, 0, -1, withscores=True)
        )
        for start in range(0, len(indexed), 500):
            chunk = [(_id(member), score) for member, score in indexed[start : start + 500]]
            documents = self._redis.mget([_key(entry_id) for entry_id, _ in chunk])
            for (entry_id, score), raw in zip(chunk, documents, strict=True):
                if raw is not None:
                    yield _parse(entry_id, raw, score)

    def remove(self, entry_id: str) -> bool:
        """Delete one entry; True if it existed."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_key(entry_id))
            pipe.zrem(keys.DLQ_INDEX, _member(entry_id))
            deleted, _ = pipe.execute()
        return bool(deleted)

    def count(self) -> int:
        """How many entries there are."""
        return int(self._redis.zcard(keys.DLQ_INDEX))

    def warn_if_crowded(self, threshold: int, now: datetime) -> None:
        """Log ``dlq.over_threshold`` when ``threshold`` entries or more are kept.

        At most once a minute per store (a worker process has one): every new
        entry calls this, and once per entry made 18,914 lines in one outage.
        """
        if self._warned_at is not None and now - self._warned_at < _ALERT_INTERVAL:
            return
        count = self.count()
        if count < threshold:
            return
        self._warned_at = now
        # Nothing is evicted to make room: say so loudly and keep accepting.
        get_logger().error("dlq.over_threshold", dead_letters=count, threshold=threshold)

    def select(self, where: Filter | None = None, limit: int | None = None) -> list[Entry]:
        """Entries matching ``where``, most recent failure first, at most ``limit``."""
        where = where or Filter()
        found = [entry for entry in self if where.matches(entry)]
        found.reverse()
        return found if limit is None else found[:limit]

    def take(self, entry_id: str) -> Entry | None:
        """Remove an entry and return it, or None if it is gone.

        Only one of several concurrent callers gets the entry (ZREM answers 1
        once), which is what makes two replays at the same time safe. A corrupt
        entry is returned and left where it is: there is nothing to replay.
        """
        entry = self.get(entry_id)
        if isinstance(entry, CorruptEntry):
            return entry
        if entry is None or not self._redis.zrem(keys.DLQ_INDEX, _member(entry_id)):
            return None
        self._redis.delete(_key(entry_id))
        return entry

    def restore(self, entry: DeadLetter) -> None:
        """Put back an entry that was taken but could not be replayed."""
        self._write(entry)

    def replay(
        self, entries: Iterable[Entry], replayer: Callable[[DeadLetter], str]
    ) -> list[ReplayResult]:
        """Take each entry out and hand it to ``replayer`` (``pipeline.replay``).

        Taking is atomic, so of several concurrent replays exactly one gets an
        entry; an entry the replayer could not hand over is put back, never
        lost. Entries another replay took first are left out of the results;
        corrupt ones stay, with ``CORRUPT_REASON``.
        """
        results = []
        for entry in entries:
            taken = entry if isinstance(entry, CorruptEntry) else self.take(entry.id)
            if taken is None:
                continue
            if isinstance(taken, CorruptEntry):
                results.append(ReplayResult(taken.id, error=CORRUPT_REASON))
                continue
            try:
                done = replayer(taken)
            except NotifierError as exc:
                self.restore(taken)
                results.append(ReplayResult(taken.id, error=f"{type(exc).__name__}: {exc}"))
                continue
            except BaseException:
                self.restore(taken)
                raise
            results.append(ReplayResult(taken.id, done=done))
        return results

    def purge(self, entries: Iterable[Entry]) -> int:
        """Delete entries for good; how many existed."""
        return sum(self.remove(entry.id) for entry in entries)

    def stats(self) -> dict[str, Any]:
        """Counts by status, channel, event type and error fingerprint."""
        by: dict[str, Counter[str]] = {
            "by_status": Counter(),
            "by_channel": Counter(),
            "by_type": Counter(),
            "by_fingerprint": Counter(),
        }
        total = 0
        for entry in self:
            total += 1
            by["by_status"][entry.status] += 1
            by["by_channel"][entry.channel or "none"] += 1
            by["by_type"][entry.event_type or "unknown"] += 1
            by["by_fingerprint"][entry.fingerprint] += 1
        return {"total": total, **{name: dict(counter) for name, counter in by.items()}}


# Ids travel as text, but Redis may hold any bytes: undecodable ones are carried as
# surrogate escapes (as Python reads argv), so a listed id can be purged by name.
def _id(member: bytes | str) -> str:
    return member.decode("utf-8", "surrogateescape") if isinstance(member, bytes) else member


def _member(entry_id: str) -> bytes:
    return entry_id.encode("utf-8", "surrogateescape")


def _key(entry_id: str) -> bytes:
    return keys.dlq_entry(entry_id).encode("utf-8", "surrogateescape")


def _failed_at(score: float | None) -> str | None:
    if score is None:
        return None
    try:
        moment = datetime.fromtimestamp(score, UTC)
    except (OverflowError, OSError, ValueError):
        moment = datetime.max.replace(tzinfo=UTC) if score > 0 else datetime.min.replace(tzinfo=UTC)
    return iso_utc(moment)


def _parse(entry_id: str, raw: bytes | str, score: float | None) -> Entry:
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
    return truncate("; ".join(parts), _MAX_TEXT_BYTES)


def _clean(text: str) -> str:
    """Text that encodes as UTF-8 whatever a producer sent (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _capped_errors(errors: list[str]) -> list[str]:
    kept = [truncate(error, _MAX_TEXT_BYTES) for error in errors[:_MAX_ERRORS]]
    if len(errors) > _MAX_ERRORS:
        kept[-1] = f"…[{len(errors) - _MAX_ERRORS + 1} more errors not kept]"
    return kept


def _capped_history(history: list[AttemptRecord], keep: int) -> list[AttemptRecord]:
    if len(history) > keep:
        history = [history[0], *history[len(history) - keep + 1 :]]
    return [
        record.model_copy(
            update={
                "error": truncate(record.error, _MAX_TEXT_BYTES),
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
        return _clean(value)
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
            "error": truncate(entry.error, _MAX_TEXT_BYTES),
            "errors": _capped_errors(entry.errors),
            "history": _capped_history(entry.history, _MAX_HISTORY),
        }
    )
    document = _document(entry)
    if len(document) > MAX_ENTRY_BYTES and len(entry.history) > 2:
        entry = entry.model_copy(update={"history": _capped_history(entry.history, 2)})
        document = _document(entry)
    if len(document) > MAX_ENTRY_BYTES and entry.delivery is not None:
        text = _clean(json.dumps(entry.delivery.model_dump(mode="json"), ensure_ascii=False))
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
