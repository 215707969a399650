"""The console's real parts, for ``notifier web`` (``notifier.web.server``).

Everything reads the one Runtime of a Celery client (``notifier.app``): its
Redis client, dead-letter store, status store, and the scheduler that replays
selected entries (``pipeline.replay_many``, as ``dlq replay`` does); bulk
actions are published as ``notifier.console_bulk`` tasks (``publish_bulk``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from notifier import keys
from notifier.app import NotifierCelery, publish_bulk
from notifier.console_bulk import Action, BulkJob, BulkJobs
from notifier.deadletter import DeadLetter, Filter
from notifier.errors import NotifierError, PublishError
from notifier.metrics.queues import queue_lengths
from notifier.metrics.tallies import outcomes_per_minute
from notifier.pipeline import replay_many
from notifier.settings import Settings
from notifier.web.console.ports import ConsolePorts, MinuteOutcomes

__all__ = ["production_ports"]


def _now() -> datetime:
    return datetime.now(UTC)


def production_ports(settings: Settings, app: NotifierCelery) -> ConsolePorts:
    """The console's parts over ``app``'s runtime."""
    rt = app.runtime
    jobs = BulkJobs(rt.redis)

    def replay(batch: Sequence[DeadLetter]) -> list[str | NotifierError]:
        return replay_many(batch, rt)

    def start_bulk(action: Action, where: Filter, total: int) -> BulkJob:
        job = jobs.create(action, where, total)
        try:
            publish_bulk(app, job.id)
        except PublishError as exc:
            jobs.save(job.model_copy(update={"state": "failed", "last_error": str(exc)}))
            raise
        return job

    def outcomes(now: datetime) -> MinuteOutcomes:
        return outcomes_per_minute(rt.redis, minutes=60, now=now.timestamp())

    return ConsolePorts(
        api_key=settings.notifier_api_key,
        public_url=settings.notifier_public_url,
        dead_letters=rt.dead_letters,
        replay=replay,
        status=rt.status.event,
        start_bulk=start_bulk,
        bulk_job=jobs.get,
        queue_lengths=lambda: queue_lengths(rt.redis, keys.QUEUES),
        outcomes=outcomes,
        clock=_now,
    )
