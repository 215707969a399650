"""The console's bulk actions: replay or purge every dead letter matching a filter.

docs/DESIGN.md §10 ("console bulk actions"): they run as a Celery task
(``keys.CONSOLE_BULK_TASK`` on ``notifier.email``) in chunks, with progress kept
in Redis, so a restart of the web process loses nothing and the console shows
progress. The web process writes a ``BulkJob`` (``keys.console_bulk``, JSON,
expiring ``keys.CONSOLE_BULK_TTL`` after its last write) and publishes the
task; the task body calls ``run_bulk``, which streams the matches
(``DeadLetterStore.matching``, bounded memory at any size) and replays them
(``replay_stream``, batches of ``chunk``) or purges them, writing the progress
after every chunk.

A task has time limits (``Settings.task_time_limits``, 130 s by default) and a
million entries take longer, so ``run_bulk`` works for at most ``budget``
seconds and answers ``running``; the task then publishes itself again for the
same job, which goes on from the failure time it reached (``cursor``, kept in
the job) instead of from the top: entries a replay could not hand over are put
back with their old time, and starting over would meet them again and again.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Literal

import redis
from pydantic import BaseModel

from notifier import keys
from notifier.deadletter import BatchReplayer, DeadLetterStore, Filter
from notifier.dlq_index import batches
from notifier.errors import NotifierError
from notifier.timestamps import iso_utc

__all__ = [
    "Action",
    "BulkJob",
    "BulkJobs",
    "filter_from_record",
    "filter_record",
    "run_bulk",
    "run_slice",
]

Action = Literal["replay", "purge"]
JobState = Literal["queued", "running", "done", "failed"]

CHUNK = 200
"""Entries per chunk: one take, one publish and one progress write each."""


class BulkJob(BaseModel):
    """One bulk action and how far it got."""

    id: str
    action: Action
    where: dict[str, str]
    """The filter (``filter_record``): times resolved when the operator confirmed."""
    total: int
    """Entries matching when the operator confirmed (the page's "N matching")."""
    done: int = 0
    """Replayed, or purged."""
    failed: int = 0
    """Could not be replayed (left in the store, as ``dlq replay`` leaves them)."""
    state: JobState = "queued"
    created_at: str
    updated_at: str
    cursor: str | None = None
    """Failure time (ISO) of the last entry handled: a continuation starts there."""
    last_error: str | None = None
    """Why the last failed entry could not be replayed, or why the job failed."""

    @property
    def finished(self) -> bool:
        """Done or failed: nothing more will happen."""
        return self.state in ("done", "failed")


def filter_record(where: Filter) -> dict[str, str]:
    """``where`` as text, to keep in a job (only the criteria given)."""
    values = {
        "status": where.status,
        "channel": where.channel,
        "type": where.event_type,
        "fingerprint": where.fingerprint,
        "error": where.error,
        "since": where.since.isoformat() if where.since else None,
        "until": where.until.isoformat() if where.until else None,
    }
    return {name: value for name, value in values.items() if value}


def filter_from_record(record: dict[str, str]) -> Filter:
    """The filter a job keeps (``filter_record``), read back."""
    since, until = record.get("since"), record.get("until")
    return Filter(
        status=record.get("status"),
        channel=record.get("channel"),
        event_type=record.get("type"),
        fingerprint=record.get("fingerprint"),
        error=record.get("error"),
        since=datetime.fromisoformat(since) if since else None,
        until=datetime.fromisoformat(until) if until else None,
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class BulkJobs:
    """Bulk jobs' records in Redis: one JSON document each, expiring after the last write."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        clock: Callable[[], datetime] = _utc_now,
        ttl: int = keys.CONSOLE_BULK_TTL,
    ) -> None:
        self._redis = client
        self._clock = clock
        self._ttl = ttl

    def create(self, action: Action, where: Filter, total: int) -> BulkJob:
        """Record a new job, ``queued``."""
        now = iso_utc(self._clock())
        job = BulkJob(
            id=uuid.uuid4().hex,
            action=action,
            where=filter_record(where),
            total=total,
            created_at=now,
            updated_at=now,
        )
        self.save(job)
        return job

    def get(self, job_id: str) -> BulkJob | None:
        """A job by id; None when unknown or expired."""
        raw = self._redis.get(keys.console_bulk(job_id))
        return None if raw is None else BulkJob.model_validate_json(raw)

    def save(self, job: BulkJob) -> BulkJob:
        """Write ``job`` (stamped now) and restart its expiry; the job as written."""
        job = job.model_copy(update={"updated_at": iso_utc(self._clock())})
        self._redis.set(keys.console_bulk(job.id), job.model_dump_json(), ex=self._ttl)
        return job


def run_bulk(
    job_id: str,
    jobs: BulkJobs,
    store: DeadLetterStore,
    replayer: BatchReplayer,
    *,
    budget: float = 60.0,
    monotonic: Callable[[], float] = time.monotonic,
    chunk: int = CHUNK,
) -> BulkJob | None:
    """Work on a job for about ``budget`` seconds; the job as it is then (None: unknown).

    ``running`` means time ran out with matches left: publish the task again.
    Progress is written after every chunk, so the console's page moves while
    this runs and a worker lost half-way loses at most one chunk's count (the
    entries themselves are never lost: see ``DeadLetterStore.replay_stream``).
    A Redis or publish failure ends the job ``failed`` with the reason, and
    is raised for Celery to log.
    """
    job = jobs.get(job_id)
    if job is None or job.finished:
        return job
    job = jobs.save(job.model_copy(update={"state": "running"}))
    where = filter_from_record(job.where)
    if job.cursor is not None:
        cursor = datetime.fromisoformat(job.cursor)
        until = min(cursor, where.until) if where.until else cursor
        where = dataclasses.replace(where, until=until)
    stop_at = monotonic() + budget
    try:
        for chunk_done, chunk_failed, last_error, cursor_at in _chunks(
            job.action, where, store, replayer, chunk
        ):
            job = jobs.save(
                job.model_copy(
                    update={
                        "done": job.done + chunk_done,
                        "failed": job.failed + chunk_failed,
                        "cursor": cursor_at or job.cursor,
                        "last_error": last_error or job.last_error,
                    }
                )
            )
            if monotonic() >= stop_at:
                return job
    except (redis.RedisError, NotifierError) as exc:
        jobs.save(
            job.model_copy(update={"state": "failed", "last_error": f"{type(exc).__name__}: {exc}"})
        )
        raise
    return jobs.save(job.model_copy(update={"state": "done"}))


def run_slice(
    job_id: str,
    jobs: BulkJobs,
    store: DeadLetterStore,
    replayer: BatchReplayer,
    publish: Callable[[str], None],
    *,
    budget: float,
) -> BulkJob | None:
    """The task's body: ``run_bulk`` for ``budget`` seconds, then ``publish`` the next slice.

    When the next slice cannot be published the job ends ``failed`` with the
    reason (the page would otherwise say ``running`` with nothing running);
    what is left stays in the store, for another bulk action or the CLI.
    """
    job = run_bulk(job_id, jobs, store, replayer, budget=budget)
    if job is None or job.state != "running":
        return job
    try:
        publish(job_id)
    except NotifierError as exc:
        return jobs.save(
            job.model_copy(
                update={"state": "failed", "last_error": f"next slice not published: {exc}"}
            )
        )
    return job


def _chunks(
    action: Action, where: Filter, store: DeadLetterStore, replayer: BatchReplayer, chunk: int
) -> Iterator[tuple[int, int, str | None, str | None]]:
    """Per chunk: (done, failed, the last failure's reason, its last entry's failure time)."""
    for batch in batches(store.matching(where), chunk):
        cursor_at = batch[-1].failed_at
        if action == "purge":
            yield store.purge(batch), 0, None, cursor_at
            continue
        done = failed = 0
        last_error: str | None = None
        for result in store.replay_stream(batch, replayer, chunk=chunk):
            if result.error is None:
                done += 1
            else:
                failed += 1
                last_error = f"{result.entry_id}: {result.error}"
        yield done, failed, last_error, cursor_at
