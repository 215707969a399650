"""The dead-letter store: everything that could not be delivered, kept for operators.

An entry holds the whole delivery (so it can be rendered and sent again), the
error class and message, a fingerprint to group alike failures, and the
history of attempts. Rejected events (invalid input) are kept too, with their
raw payload and the validation errors: nothing accepted disappears.

Layout (``notifier.keys``): one JSON document per entry, a sorted set of ids
scored by the time of the last failure, and the indexes and counters of
``notifier.dlq_index``, written together by one Lua script. Pages, counts and
filters read those, never every entry. Nothing expires unless an operator sets
``NOTIFIER_DLQ_RETENTION`` (``notifier.dlq_retention``): entries leave by
replay, purge or that retention.

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
import itertools
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self, cast

import redis
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticSerializationError

from notifier import keys
from notifier.dlq_index import (
    Facets,
    IndexScripts,
    Progress,
    batches,
    by_key,
    counts_from_hash,
    escape,
    scan_descending,
    score_bound,
)
from notifier.errors import NotifierError
from notifier.planner import Delivery
from notifier.timestamps import iso_utc
from notifier.truncation import mark, truncate, utf8_size

__all__ = [
    "CORRUPT_REASON",
    "MAX_ENTRY_BYTES",
    "AttemptRecord",
    "BatchReplayer",
    "CorruptEntry",
    "DeadLetter",
    "DeadLetterStore",
    "Entry",
    "Filter",
    "Page",
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
    until: datetime | None = None
    """Failed at or before this time (``--until``, for paging back through time)."""

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
        given = {"status": self.status, "channel": self.channel, "type": self.event_type}
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


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeadLetterStore:
    """Add, read, page, count and remove dead letters in Redis (``notifier.dlq_index``)."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._redis = client
        self._clock = clock
        self._warned_at: datetime | None = None
        self._index = IndexScripts(client)

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
        stored, document, score = _stored_form(entry)
        self._index.write(_member(entry.id), document, score, Facets.of(stored))
        return stored

    def add_many(self, entries: Iterable[DeadLetter], chunk: int = 500) -> int:
        """Store entries in pipelines of ``chunk`` (each write still one atomic script).

        For restoring what a replay could not hand over, and for seeding a
        benchmark (``bench/dlq.py``); how many were written.
        """
        written = 0
        batch: list[DeadLetter] = []
        for entry in entries:
            batch.append(entry)
            if len(batch) >= chunk:
                written += self._write_batch(batch)
                batch = []
        if batch:
            written += self._write_batch(batch)
        return written

    def _write_batch(self, batch: list[DeadLetter]) -> int:
        with self._redis.pipeline(transaction=False) as pipe:
            for entry in batch:
                stored, document, score = _stored_form(entry)
                self._index.write(_member(entry.id), document, score, Facets.of(stored), pipe)
            pipe.execute()
        return len(batch)

    def get(self, entry_id: str) -> Entry | None:
        """One entry by id, or None."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(_key(entry_id))
            pipe.zscore(keys.DLQ_INDEX, _member(entry_id))
            raw, score = pipe.execute()
        return None if raw is None else _parse(entry_id, raw, score)

    def __iter__(self) -> Iterator[Entry]:
        """Every entry, oldest failure first (read 500 at a time)."""
        start = 0
        while True:
            indexed = cast(
                "list[tuple[bytes, float]]",
                self._redis.zrange(keys.DLQ_INDEX, start, start + 499, withscores=True),
            )
            yield from self._documents(indexed)
            if len(indexed) < 500:
                return
            start += 500

    def _documents(self, rows: Sequence[tuple[bytes, float]]) -> list[Entry]:
        """The entries of index rows (member, score), in order; gone ones left out."""
        if not rows:
            return []
        documents = self._redis.mget([_entry_key(member) for member, _ in rows])
        return [
            _parse(_id(member), raw, score)
            for (member, score), raw in zip(rows, documents, strict=True)
            if raw is not None
        ]

    def remove(self, entry_id: str) -> bool:
        """Delete one entry; True if it existed."""
        return self._index.remove([_member(entry_id)]) > 0

    def count(self) -> int:
        """How many entries there are."""
        return int(self._redis.zcard(keys.DLQ_INDEX))

    def unindexed(self) -> int:
        """Entries the counts and filters do not know yet (old store, or planted by hand)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.DLQ_INDEX)
            pipe.hlen(keys.DLQ_FACETS)
            indexed, faceted = pipe.execute()
        return max(int(indexed) - int(faceted), 0)

    def ensure_indexed(self, progress: Progress | None = None) -> int:
        """Index what is not indexed yet (see ``reindex``); cheap when nothing is missing."""
        missing = self.unindexed()
        return self.reindex(progress, missing) if missing else 0

    def reindex(self, progress: Progress | None = None, missing: int | None = None) -> int:
        """Give every entry without facets its facets, counts and secondary indexes.

        The migration from a store written before ``notifier.dlq_index``
        existed, and what makes a document planted by hand (``corrupt``)
        counted and filtered. Reads the index 1,000 at a time, newest first,
        until ``missing`` (by default: index length less facets) were found
        (bounded memory); safe beside writers and other reindexes (the script
        skips an entry that has facets by then). Index members without a
        document are dropped. Returns how many entries were indexed.
        """
        missing = self.unindexed() if missing is None else missing
        indexed = seen = 0
        start = 0
        # Newest first, and done once as many as were missing are found: what an
        # older worker writes during an upgrade is at the top of the index.
        while missing and seen < missing:
            rows = cast(
                "list[tuple[bytes, float]]",
                self._redis.zrevrange(keys.DLQ_INDEX, start, start + 999, withscores=True),
            )
            if not rows:
                break
            records = self._records([member for member, _ in rows])
            bare = [row for row, record in zip(rows, records, strict=True) if record is None]
            documents = self._redis.mget([_entry_key(member) for member, _ in bare]) if bare else []
            batch = []
            for (member, score), raw in zip(bare, documents, strict=True):
                record = b"" if raw is None else Facets.of(_parse(_id(member), raw, score)).record()
                batch.append((member, record))
            done, dropped = self._index.reindex(batch)
            indexed += done
            seen += len(bare)
            # Dropped members leave the index: the next read starts that much earlier.
            start += len(rows) - dropped
            if progress is not None and bare:
                progress(seen, missing)
        return indexed

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
        from notifier.logs import get_logger  # structlog: not on the CLI's start-up path

        # Nothing is evicted to make room: say so loudly and keep accepting.
        get_logger().error("dlq.over_threshold", dead_letters=count, threshold=threshold)

    def page(self, where: Filter | None = None, offset: int = 0, limit: int = 50) -> Page:
        """Entries matching ``where``, most recent failure first: ``limit`` after ``offset``.

        With at most one of status / channel / type (and any time range), the
        page is read from that facet's index and the total is a ZCOUNT: no
        scan. Otherwise the smallest index among the criteria is scanned,
        1,000 at a time, the other criteria checked on the facets (and
        ``error`` on the documents): memory stays one chunk and one page.
        """
        where = where or Filter()
        self.ensure_indexed()
        source = self._source(where)
        if source is None:
            return Page([], 0)
        low, high = where.scores()
        if len(where.facets()) <= 1 and not where.error:
            with self._redis.pipeline(transaction=False) as pipe:
                if low == -math.inf and high == math.inf:
                    pipe.zcard(source)
                else:
                    pipe.zcount(source, score_bound(low), score_bound(high))
                pipe.zrevrangebyscore(
                    source,
                    score_bound(high),
                    score_bound(low),
                    start=offset,
                    num=limit,
                    withscores=True,
                )
                total, rows = pipe.execute()
            return Page(self._documents(rows), int(total))
        found: list[Entry] = []
        total = 0
        for entry in self._scan(where, source, keep=lambda n: offset <= n < offset + limit):
            if entry is not None:
                found.append(entry)
            total += 1
        return Page(found, total)

    def matching(self, where: Filter | None = None) -> Iterator[Entry]:
        """Every entry matching ``where``, most recent first, streamed (bounded memory).

        Safe to remove entries (replay, purge) while iterating: the scan
        moves on a score cursor.
        """
        where = where or Filter()
        self.ensure_indexed()
        source = self._source(where)
        if source is None:
            return
        for entry in self._scan(where, source, keep=lambda _: True):
            if entry is not None:
                yield entry

    def select(
        self, where: Filter | None = None, limit: int | None = None, offset: int = 0
    ) -> list[Entry]:
        """Entries matching ``where``, most recent failure first, at most ``limit``."""
        if limit is not None:
            return self.page(where, offset, limit).entries
        return list(itertools.islice(self.matching(where), offset, None))

    def _source(self, where: Filter) -> bytes | str | None:
        """The smallest sorted set holding every match; None when one criterion has none."""
        criteria = where.facets()
        if not criteria:
            return keys.DLQ_INDEX
        fields = [f"{name}:".encode() + escape(value) for name, value in criteria.items()]
        counts = self._redis.hmget(keys.DLQ_COUNTS, fields)
        sizes = [int(count) if count is not None else 0 for count in counts]
        if min(sizes) == 0:
            return None
        smallest = sizes.index(min(sizes))
        name, value = list(criteria.items())[smallest]
        return by_key(name, value)

    def _scan(
        self, where: Filter, source: bytes | str, keep: Callable[[int], bool]
    ) -> Iterator[Entry | None]:
        """One item per match, newest first: the entry when ``keep(n)`` for the n-th, else None."""
        criteria = where.facets()
        low, high = where.scores()
        needle = where.error.lower() if where.error else None
        # JSON writes these characters as themselves: a document that does not
        # contain the text cannot hold an error that does (a cheap first test).
        raw_test = needle is not None and needle.isprintable() and not set(needle) & {'"', "\\"}
        matched = 0
        for rows in scan_descending(self._redis, source, low, high):
            records = (
                self._records([member for member, _ in rows]) if criteria else [b""] * len(rows)
            )
            candidates: list[tuple[bytes, float]] = []
            unknown = False
            for (member, score), record in zip(rows, records, strict=True):
                if record is None:
                    unknown = True
                elif criteria:
                    facets = Facets.from_record(record)
                    if any(facets.value(name) != value for name, value in criteria.items()):
                        continue
                candidates.append((member, score))
            if needle is None and not unknown:
                kept = [keep(matched + position) for position in range(len(candidates))]
                fetched = iter(
                    self._fetch([row for row, k in zip(candidates, kept, strict=True) if k])
                )
                for k in kept:
                    entry = next(fetched) if k else None
                    if k and entry is None:
                        continue  # removed since the index was read
                    yield entry
                    matched += 1
                continue
            documents = cast(
                "list[bytes | None]",
                self._redis.mget([_entry_key(member) for member, _ in candidates]),
            )
            for (member, score), raw in zip(candidates, documents, strict=True):
                if raw is None:
                    continue
                if (
                    raw_test
                    and needle is not None
                    and raw.startswith(_OURS)
                    and needle not in raw.decode("utf-8", "replace").lower()
                ):
                    continue
                entry = _parse(_id(member), raw, score)
                if not where.matches(entry):
                    continue
                yield entry if keep(matched) else None
                matched += 1

    def _records(self, members: Sequence[bytes]) -> list[bytes | None]:
        """The facet records of these entries (None: not indexed)."""
        return cast("list[bytes | None]", self._redis.hmget(keys.DLQ_FACETS, list(members)))

    def _fetch(self, rows: Sequence[tuple[bytes, float]]) -> list[Entry | None]:
        """The entries of index rows, aligned with them (None: gone)."""
        if not rows:
            return []
        documents = self._redis.mget([_entry_key(member) for member, _ in rows])
        return [
            None if raw is None else _parse(_id(member), raw, score)
            for (member, score), raw in zip(rows, documents, strict=True)
        ]

    def take(self, entry_id: str) -> Entry | None:
        """Remove an entry and return it, or None if it is gone.

        Only one of several concurrent callers gets the entry (the take
        script's ZREM answers 1 once), which is what makes two replays at the
        same time safe. A corrupt entry is returned and left where it is:
        there is nothing to replay.
        """
        entry = self.get(entry_id)
        if entry is None or isinstance(entry, CorruptEntry):
            return entry
        taken = self.take_many([entry])
        return taken[0] if taken else None

    def take_many(self, entries: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Take these entries out in one atomic step; the ones this caller won, as taken.

        A document that turned corrupt since it was read is put back as it was.
        """
        documents = self._index.take([_member(entry.id) for entry in entries])
        taken: list[DeadLetter] = []
        for entry, raw in zip(entries, documents, strict=True):
            if raw is None:
                continue
            parsed = _parse(entry.id, raw, datetime.fromisoformat(entry.failed_at).timestamp())
            if isinstance(parsed, CorruptEntry):
                score = datetime.fromisoformat(entry.failed_at).timestamp()
                self._index.write(_member(entry.id), raw, score, Facets.of(parsed))
                continue
            taken.append(parsed)
        return taken

    def restore(self, entry: DeadLetter) -> None:
        """Put back an entry that was taken but could not be replayed."""
        self._write(entry)

    def replay(
        self, entries: Iterable[Entry], replayer: Callable[[DeadLetter], str]
    ) -> list[ReplayResult]:
        """Take each entry out and hand it to ``replayer``; see ``replay_stream``."""

        def one_by_one(batch: Sequence[DeadLetter]) -> list[str | NotifierError]:
            outcomes: list[str | NotifierError] = []
            for entry in batch:
                try:
                    outcomes.append(replayer(entry))
                except NotifierError as exc:
                    outcomes.append(exc)
            return outcomes

        return list(self.replay_stream(entries, one_by_one, chunk=1))

    def replay_stream(
        self, entries: Iterable[Entry], replayer: BatchReplayer, chunk: int = 200
    ) -> Iterator[ReplayResult]:
        """Take entries out ``chunk`` at a time, hand each batch to ``replayer``, yield results.

        ``replayer`` (``pipeline.replay_many``) answers, per entry, what it
        did or the NotifierError it could not hand it over for. Taking is
        atomic, so of several concurrent replays exactly one gets an entry; an
        entry not handed over is put back, never lost, and so is every entry
        of a batch interrupted by anything else (Ctrl-C): what was not taken
        yet never left the store. Entries another replay took first are left
        out of the results; corrupt ones stay, with ``CORRUPT_REASON``.
        """
        for batch in batches(entries, chunk):
            results: list[ReplayResult] = []
            wanted: list[DeadLetter] = []
            for entry in batch:
                if isinstance(entry, CorruptEntry):
                    results.append(ReplayResult(entry.id, error=CORRUPT_REASON))
                else:
                    wanted.append(entry)
            yield from results
            taken = self.take_many(wanted) if wanted else []
            if not taken:
                continue
            try:
                outcomes = replayer(taken)
            except BaseException:
                self.add_many(taken)
                raise
            failed = [
                entry
                for entry, outcome in zip(taken, outcomes, strict=True)
                if isinstance(outcome, NotifierError)
            ]
            if failed:
                self.add_many(failed)
            for entry, outcome in zip(taken, outcomes, strict=True):
                if isinstance(outcome, NotifierError):
                    yield ReplayResult(entry.id, error=f"{type(outcome).__name__}: {outcome}")
                else:
                    yield ReplayResult(entry.id, done=outcome)

    def purge(self, entries: Iterable[Entry]) -> int:
        """Delete entries for good, 500 per call; how many existed."""
        return sum(
            self._index.remove([_member(entry.id) for entry in batch])
            for batch in batches(entries, 500)
        )

    def remove_failed_before(self, cutoff: datetime, limit: int = 500) -> int:
        """Delete up to ``limit`` of the entries that failed before ``cutoff``; how many.

        Retention (``notifier.dlq_retention``) calls this until it answers 0.
        """
        members: list[bytes] = self._redis.zrangebyscore(  # type: ignore[assignment]
            keys.DLQ_INDEX, "-inf", f"({cutoff.timestamp()!r}", start=0, num=limit
        )
        if not members:
            return 0
        removed = self._index.remove(members)
        # Counted even when another host removed some first: each removal once.
        self._redis.hincrby(keys.DLQ_COUNTS, "removed:retention", removed)
        return len(members)

    def counts(self) -> dict[str, dict[str, Any]]:
        """The counters, grouped (``notifier.dlq_index.counts_from_hash``)."""
        self.ensure_indexed()
        return counts_from_hash(cast("dict[bytes, bytes]", self._redis.hgetall(keys.DLQ_COUNTS)))

    def latest(self, fingerprints: Sequence[str]) -> dict[str, Entry]:
        """The most recent entry of each fingerprint (from its index)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for value in fingerprints:
                pipe.zrevrange(by_key("fingerprint", value), 0, 0, withscores=True)
            tops = pipe.execute()
        rows = {value: top[0] for value, top in zip(fingerprints, tops, strict=True) if top}
        entries = self._documents(list(rows.values()))
        by_id = {entry.id: entry for entry in entries}
        return {
            value: by_id[_id(member)] for value, (member, _) in rows.items() if _id(member) in by_id
        }

    def stats(self, where: Filter | None = None) -> dict[str, Any]:
        """Counts by status, channel, event type and error fingerprint.

        Without a filter, from the counters (one HGETALL). With one, by a
        streaming scan of the matches' facets (``page``'s rules, no document
        read unless ``error`` is given).
        """
        where = where or Filter()
        if where.is_empty():
            grouped = self.counts()
            total = self.count()
            return {
                "total": total,
                "by_status": grouped["status"],
                "by_channel": {name or "none": n for name, n in grouped["channel"].items()},
                "by_type": {name or "unknown": n for name, n in grouped["type"].items()},
                "by_fingerprint": grouped["fingerprint"],
                "removed_by_retention": grouped["removed"].get("retention", 0),
            }
        by: dict[str, Counter[str]] = {
            "by_status": Counter(),
            "by_channel": Counter(),
            "by_type": Counter(),
            "by_fingerprint": Counter(),
        }
        total = 0
        for facets in self._matching_facets(where):
            total += 1
            by["by_status"][facets.status] += 1
            by["by_channel"][facets.channel or "none"] += 1
            by["by_type"][facets.event_type or "unknown"] += 1
            by["by_fingerprint"][facets.fingerprint] += 1
        return {"total": total, **{name: dict(counter) for name, counter in by.items()}}

    def _matching_facets(self, where: Filter) -> Iterator[Facets]:
        self.ensure_indexed()
        source = self._source(where)
        if source is None:
            return
        if where.error:
            for entry in self._scan(where, source, keep=lambda _: True):
                if entry is not None:
                    yield Facets.of(entry)
            return
        criteria = where.facets()
        low, high = where.scores()
        for rows in scan_descending(self._redis, source, low, high):
            records = self._records([member for member, _ in rows])
            for row, record in zip(rows, records, strict=True):
                if record is None:
                    found = self._documents([row])
                    if not found:
                        continue
                    facets = Facets.of(found[0])
                else:
                    facets = Facets.from_record(record)
                if all(facets.value(name) == value for name, value in criteria.items()):
                    yield facets


BatchReplayer = Callable[[Sequence["DeadLetter"]], "list[str | NotifierError]"]
"""Hands a batch of taken entries over (``pipeline.replay_many``): per entry, what it
did, or the error it could not for (that entry is put back)."""


def _stored_form(entry: DeadLetter) -> tuple[DeadLetter, bytes, float]:
    """``entry`` as stored: (as ``get`` reads it, the document, its index score)."""
    document = _bounded(entry)
    score = datetime.fromisoformat(entry.failed_at).timestamp()
    stored = DeadLetter.model_validate_json(document)
    if stored.id != entry.id:
        stored = stored.model_copy(update={"id": entry.id})
    return stored, document, score


_OURS = b'{"id":"'
"""How every document ``_document`` writes begins (pydantic writes ``id`` first, no
spaces). Anything else may be corrupt, and a corrupt entry's error is not in its
document: it is parsed before the error filter judges it."""


def _entry_key(member: bytes) -> bytes:
    return keys.dlq_entry("").encode() + member


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
