"""What the console needs from the rest of notifier, passed in so tests can pass fakes.

``notifier.web.server`` builds the real ones (``production_ports``); a test builds
its own, over real Redis or fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr

from notifier.console_bulk import Action, BulkJob
from notifier.deadletter import BatchReplayer, DeadLetterStore, Filter
from notifier.status_store import EventStatus

__all__ = ["ConsolePorts", "MinuteOutcomes"]

MinuteOutcomes = Sequence[tuple[int, Mapping[str, int]]]
"""Per minute (epoch seconds // 60), oldest first: outcome → count."""


@dataclass(frozen=True)
class ConsolePorts:
    """The console's parts."""

    api_key: SecretStr | None
    """``NOTIFIER_API_KEY``; None: every page answers 503 "API key not configured"."""
    public_url: str | None
    """``NOTIFIER_PUBLIC_URL``: https there makes the cookie ``Secure`` behind a proxy."""
    dead_letters: DeadLetterStore
    replay: BatchReplayer
    """Hands taken entries over (``pipeline.replay_many`` with a client's runtime)."""
    status: Callable[[str], EventStatus | None]
    """An event's trace (``StatusStore.event``); None: unknown or expired."""
    start_bulk: Callable[[Action, Filter, int], BulkJob]
    """Records a bulk job and publishes its task (``notifier.console_bulk``)."""
    bulk_job: Callable[[str], BulkJob | None]
    """A bulk job's progress (``BulkJobs.get``)."""
    queue_lengths: Callable[[], Mapping[str, int]]
    outcomes: Callable[[datetime], MinuteOutcomes]
    """The last hour's outcome tallies up to the given time."""
    clock: Callable[[], datetime]
