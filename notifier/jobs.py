"""What the ``notifier.deliver`` and ``notifier.callback`` tasks carry, and the ports
that put them on a queue.

Low in the import graph on purpose: the pipeline makes jobs, the runtime
holds a ``Scheduler``, and the Celery app implements it, without any of them
importing each other (docs/DESIGN.md §1).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from notifier.callback_payload import CallbackPayload
from notifier.deadletter import AttemptRecord
from notifier.planner import Delivery

__all__ = ["CallbackJob", "CallbackQueue", "Job", "Scheduler"]


class Job(BaseModel):
    """The argument of ``notifier.deliver``: a delivery and where it stands."""

    model_config = ConfigDict(frozen=True)

    delivery: Delivery
    attempt: int = Field(1, ge=1)
    history: list[AttemptRecord] = Field(default_factory=list)
    replay_grant: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    """An operator replayed it: the one-time grant (in Redis) to skip the per-recipient
    limits. A job cannot give itself one; ``replay`` writes it."""
    held_since: datetime | None = None
    """When an SMTP outage first put it on hold (``notifier.hold``): a job released and
    held again keeps its first time, so ``NOTIFIER_OUTAGE_HOLD_MAX`` bounds the whole wait."""


class Scheduler(Protocol):
    """Puts a job on its channel's queue, now or after a countdown."""

    def schedule(self, job: Job, countdown: float) -> None:
        """Enqueue ``notifier.deliver(job)`` to run in ``countdown`` seconds."""

    def publish_event(self, event: dict[str, Any]) -> None:
        """Enqueue ``notifier.handle_event(event)`` (replaying a rejected event)."""

    def schedule_many(self, jobs: Sequence[Job], events: Sequence[dict[str, Any]] = ()) -> None:
        """Enqueue each job to run now, and each event, in as few round trips as possible.

        Raises a NotifierError (``PublishError``) when the broker did not take
        them all; which ones it took is then unknown (a replay puts them all
        back: a job sent twice is stopped by the ledger).
        """


class CallbackJob(BaseModel):
    """The argument of ``notifier.callback``: the payload to POST and where it stands."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    payload: CallbackPayload
    attempt: int = Field(1, ge=1)
    history: list[AttemptRecord] = Field(default_factory=list, max_length=50)


class CallbackQueue(Protocol):
    """Puts a callback job on ``notifier.callbacks`` (the Celery app's scheduler)."""

    def schedule_callback(self, job: CallbackJob, countdown: float, *, quick: bool = False) -> None:
        """Enqueue ``notifier.callback(job)`` to run in ``countdown`` seconds.

        ``quick``: one immediate retry of the publish at most, never a wait (the
        send path's publish: a callback must not delay an email or SMS).
        Raises ``PublishError`` when the broker did not take it.
        """
