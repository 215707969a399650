"""The dead-letter store: everything that could not be delivered, kept for operators.

This module is the store in Redis; what an entry is (the models, filters,
fingerprints and the capped stored form) is ``notifier.deadletter_entries``,
whose names are re-exported here, where callers have always imported them.

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

import itertools
import json
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis

from notifier import keys
from notifier.callback_payload import CallbackPayload
from notifier.deadletter_entries import (
    CORRUPT_REASON,
    DOCUMENT_PREFIX,
    MAX_ENTRY_BYTES,
    MAX_ID_CHARS,
    MAX_TEXT_BYTES,
    AttemptRecord,
    CorruptEntry,
    DeadLetter,
    Entry,
    Filter,
    Page,
    ReplayResult,
    Status,
    capped_errors,
    clean_text,
    fingerprint,
    parse_entry,
    stored_form,
)
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
from notifier.truncation import truncate

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

_ALERT_INTERVAL = timedelta(minutes=1)


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
        previous = self.get(entry_id) if len(entry_id) <= MAX_ID_CHARS else None
        if len(entry_id) > MAX_ID_CHARS or isinstance(previous, CorruptEntry):
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
            fingerprint=fingerprint(truncate(error, MAX_TEXT_BYTES)),
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

    def add_callback(
        self, payload: CallbackPayload, *, error: str, history: list[AttemptRecord]
    ) -> DeadLetter:
        """Keep a callback to the producer that will not be sent (``failed``, channel ``callback``).

        The entry holds the payload, which ``dlq replay`` puts back on
        ``notifier.callbacks`` (docs/DESIGN.md §10). Each failure is a new entry.
        """
        now = iso_utc(self._clock())
        entry = DeadLetter(
            id=str(uuid.uuid4()),
            status="failed",
            error=error,
            fingerprint=fingerprint(truncate(error, MAX_TEXT_BYTES)),
            attempts=sum(1 for record in history if record.attempt > 0),
            failed_at=now,
            first_failed_at=min([record.at for record in history] + [now]),
            history=history,
            callback=payload,
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
        kept = capped_errors([clean_text(error) for error in errors])
        raw_dict = raw if isinstance(raw, dict) else {}
        event_id = raw_dict.get("event_id")
        event_type = raw_dict.get("type")
        prefix = "InvalidEventError" if status == "rejected" else "TaskFailed"
        now = iso_utc(self._clock())
        entry = DeadLetter(
            id=str(uuid.uuid4()),
            status=status,
            event_id=clean_text(event_id) if isinstance(event_id, str) else None,
            event_type=clean_text(event_type) if isinstance(event_type, str) else None,
            error=f"{prefix}: " + "; ".join(kept),
            fingerprint=fingerprint(f"{prefix}: " + "; ".join(sorted(kept))),
            failed_at=now,
            first_failed_at=now,
            raw_event=clean_text(text),
            errors=kept,
        )
        return self._write(entry)

    def _write(self, entry: DeadLetter) -> DeadLetter:
        """Store ``entry`` within the size caps; return it as stored (as ``get`` reads it)."""
        stored, document, score = stored_form(entry)
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
                stored, document, score = stored_form(entry)
                self._index.write(_member(entry.id), document, score, Facets.of(stored), pipe)
            pipe.execute()
        return len(batch)

    def get(self, entry_id: str) -> Entry | None:
        """One entry by id, or None."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(_key(entry_id))
            pipe.zscore(keys.DLQ_INDEX, _member(entry_id))
            raw, score = pipe.execute()
        return None if raw is None else parse_entry(entry_id, raw, score)

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
            parse_entry(_id(member), raw, score)
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
                record = (
                    b"" if raw is None else Facets.of(parse_entry(_id(member), raw, score)).record()
                )
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
                    and raw.startswith(DOCUMENT_PREFIX)
                    and needle not in raw.decode("utf-8", "replace").lower()
                ):
                    continue
                entry = parse_entry(_id(member), raw, score)
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
            None if raw is None else parse_entry(_id(member), raw, score)
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
            parsed = parse_entry(entry.id, raw, datetime.fromisoformat(entry.failed_at).timestamp())
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
