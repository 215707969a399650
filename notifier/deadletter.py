"""The dead-letter store: everything that could not be delivered, kept for operators.

An entry holds the whole delivery (so it can be rendered and sent again), the
error class and message, a fingerprint to group alike failures, and the
history of attempts. Rejected events (invalid input) are kept too, with their
raw payload and the validation errors: nothing accepted disappears.

Layout (``notifier.keys``): one JSON document per entry and a sorted set of ids
scored by the time of the last failure, written together in MULTI/EXEC.
Nothing here expires or is evicted: entries leave only by replay or purge.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from notifier import keys
from notifier.errors import NotifierError
from notifier.planner import Delivery

__all__ = [
    "AttemptRecord",
    "DeadLetter",
    "DeadLetterStore",
    "Filter",
    "ReplayResult",
    "Status",
    "fingerprint",
]

Status = Literal["failed", "rejected", "expired", "rate_limited"]

# A rejected payload may be arbitrarily large (that can be why it was rejected);
# keep enough to diagnose it without letting one bad producer fill Redis.
MAX_RAW_CHARS = 70_000


class AttemptRecord(BaseModel):
    """One failed try: when, which attempt, what went wrong."""

    model_config = ConfigDict(frozen=True)

    attempt: int
    at: str
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
    error: str
    fingerprint: str
    attempts: int = 0
    failed_at: str
    first_failed_at: str
    delivery: Delivery | None = None
    raw_event: str | None = None
    errors: list[str] = Field(default_factory=list)
    history: list[AttemptRecord] = Field(default_factory=list)
    fallback: str | None = None
    """Delivery id of the email sent in place of this failed SMS, if one was."""


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

    def matches(self, entry: DeadLetter) -> bool:
        """Whether ``entry`` meets every criterion given."""
        if self.channel and entry.channel != self.channel:
            return False
        if self.event_type and entry.event_type != self.event_type:
            return False
        if self.status and entry.status != self.status:
            return False
        if self.error and self.error.lower() not in entry.error.lower():
            return False
        return not (self.since and datetime.fromisoformat(entry.failed_at) < self.since)


_VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(?:\.\d+)?|<[^>]*>|'[^']*'|\"[^\"]*\"")


def fingerprint(error: str) -> str:
    """Group alike errors: numbers, ids, quoted values and <addresses> don't count."""
    error_class = error.split(":", 1)[0]
    shape = _VOLATILE.sub("#", error)
    digest = hashlib.sha1(shape.encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{error_class}:{digest}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeadLetterStore:
    """Add, read, list and remove dead letters in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def add_delivery(
        self,
        delivery: Delivery,
        *,
        status: Status,
        error: str,
        history: list[AttemptRecord],
        fallback: str | None = None,
    ) -> DeadLetter:
        """Dead-letter a delivery; an entry for the same delivery keeps its older history."""
        now = _now()
        previous = self.get(delivery.delivery_id)
        earlier = previous.history if previous else []
        known = {(record.attempt, record.at) for record in earlier}
        merged = earlier + [
            record for record in history if (record.attempt, record.at) not in known
        ]
        entry = DeadLetter(
            id=delivery.delivery_id,
            status=status,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            channel=delivery.channel,
            template=delivery.template,
            recipient=delivery.address,
            error=error,
            fingerprint=fingerprint(error),
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
        self._write(entry)
        return entry

    def reject(self, raw: object, errors: list[str], *, status: Status = "rejected") -> DeadLetter:
        """Keep an event we could not process, whole, with the reasons.

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
        text = _clean(text)
        errors = [_clean(error) for error in errors]
        raw_dict = raw if isinstance(raw, dict) else {}
        event_id = raw_dict.get("event_id")
        event_type = raw_dict.get("type")
        prefix = "InvalidEventError" if status == "rejected" else "TaskFailed"
        error = f"{prefix}: " + "; ".join(errors)
        now = _now()
        entry = DeadLetter(
            id=str(uuid.uuid4()),
            status=status,
            event_id=_clean(event_id) if isinstance(event_id, str) else None,
            event_type=_clean(event_type) if isinstance(event_type, str) else None,
            error=error,
            fingerprint=fingerprint(f"{prefix}: " + "; ".join(sorted(errors))),
            failed_at=now,
            first_failed_at=now,
            raw_event=text[:MAX_RAW_CHARS],
            errors=errors,
        )
        self._write(entry)
        return entry

    def _write(self, entry: DeadLetter) -> None:
        score = datetime.fromisoformat(entry.failed_at).timestamp()
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.dlq_entry(entry.id), entry.model_dump_json())
            pipe.zadd(keys.DLQ_INDEX, {entry.id: score})
            pipe.execute()

    def get(self, entry_id: str) -> DeadLetter | None:
        """One entry by id, or None."""
        raw = self._redis.get(keys.dlq_entry(entry_id))
        return None if raw is None else DeadLetter.model_validate_json(raw)

    def __iter__(self) -> Iterator[DeadLetter]:
        """Every entry, oldest failure first."""
        ids = [_text(i) for i in self._redis.zrange(keys.DLQ_INDEX, 0, -1)]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for raw in self._redis.mget([keys.dlq_entry(i) for i in chunk]):
                if raw is not None:
                    yield DeadLetter.model_validate_json(raw)

    def remove(self, entry_id: str) -> bool:
        """Delete one entry; True if it existed."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.dlq_entry(entry_id))
            pipe.zrem(keys.DLQ_INDEX, entry_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def count(self) -> int:
        """How many entries there are."""
        return int(self._redis.zcard(keys.DLQ_INDEX))

    def select(self, where: Filter | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Entries matching ``where``, most recent failure first, at most ``limit``."""
        where = where or Filter()
        found = [entry for entry in self if where.matches(entry)]
        found.reverse()
        return found if limit is None else found[:limit]

    def take(self, entry_id: str) -> DeadLetter | None:
        """Remove an entry and return it, or None if it is gone.

        Only one of several concurrent callers gets the entry (ZREM answers 1
        once), which is what makes two replays at the same time safe.
        """
        entry = self.get(entry_id)
        if entry is None or not self._redis.zrem(keys.DLQ_INDEX, entry_id):
            return None
        self._redis.delete(keys.dlq_entry(entry_id))
        return entry

    def restore(self, entry: DeadLetter) -> None:
        """Put back an entry that was taken but could not be replayed."""
        self._write(entry)

    def replay(
        self, entries: Iterable[DeadLetter], replayer: Callable[[DeadLetter], str]
    ) -> list[ReplayResult]:
        """Take each entry out and hand it to ``replayer`` (``pipeline.replay``).

        Taking is atomic, so of several concurrent replays exactly one gets an
        entry; an entry the replayer could not hand over is put back, never
        lost. Entries another replay took first are left out of the results.
        """
        results = []
        for entry in entries:
            taken = self.take(entry.id)
            if taken is None:
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

    def purge(self, entries: Iterable[DeadLetter]) -> int:
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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _clean(text: str) -> str:
    """Text that encodes as UTF-8 whatever a producer sent (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
