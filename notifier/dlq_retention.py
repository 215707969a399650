"""Retention: dead letters older than ``NOTIFIER_DLQ_RETENTION`` seconds are removed.

Off by default (0 = keep forever: docs/DESIGN.md §10, nothing is evicted
unless an operator says so). When set, one periodic job (``notifier.periodic``)
in every worker's main process, one host at a time through
``notifier:dlq:retention:lock``, removes the entries whose last failure is
older than that: once a minute (twice per retention, if that is shorter), 500
per script call (each removal un-counts and un-indexes the entry in the same
step), for at most half an interval per tick. Each tick that removed something
logs ``dlq.retention_removed`` with the number, and the running total is kept
in the counters (``dlq stats``: ``removed_by_retention``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis

from notifier import keys
from notifier.deadletter import DeadLetterStore
from notifier.errors import NotifierError
from notifier.logs import get_logger
from notifier.periodic import LeaseLock, Periodic
from notifier.runtime import Runtime
from notifier.timestamps import iso_utc

__all__ = ["INTERVAL", "Retention", "start_retention", "tick_interval"]

INTERVAL = 60.0
"""Seconds between ticks at most: retention is counted in hours or days, not seconds."""

BATCH = 500
"""Entries removed per script call (one Redis round trip)."""


@dataclass
class Retention:
    """One tick of the retention job (see the module docstring)."""

    store: DeadLetterStore
    lock: LeaseLock
    retention: float
    clock: Callable[[], datetime]
    budget: float = INTERVAL / 2
    """Seconds one tick may spend removing (the rest waits for the next tick)."""
    monotonic: Callable[[], float] = time.monotonic

    def tick(self) -> int:
        """Remove what is past retention, for at most ``budget`` seconds; how many."""
        if not self.lock.acquire():
            return 0
        started = self.monotonic()
        cutoff = self.clock() - timedelta(seconds=self.retention)
        removed = 0
        while self.monotonic() - started < self.budget:
            batch = self.store.remove_failed_before(cutoff, BATCH)
            removed += batch
            if batch < BATCH:
                break
        if removed:
            get_logger().info(
                "dlq.retention_removed",
                removed=removed,
                failed_before=iso_utc(cutoff),
                retention_seconds=self.retention,
                dead_letters=self.store.count(),
            )
        return removed


def tick_interval(retention: float) -> float:
    """Seconds between ticks: once a minute, or twice per retention when that is shorter."""
    return max(min(INTERVAL, retention / 2), 0.05)


def start_retention(rt: Runtime) -> Periodic | None:
    """Start the retention job for this worker process; None when retention is off."""
    retention = rt.settings.notifier_dlq_retention
    if retention <= 0:
        return None
    interval = tick_interval(retention)
    # The lease outlives two ticks: a host that stops frees the job that much later.
    lock = LeaseLock(rt.redis, keys.DLQ_RETENTION_LOCK, 2 * interval + 1)
    job = Retention(rt.dead_letters, lock, retention, rt.clock, budget=interval / 2)
    periodic = Periodic(
        "dlq_retention",
        interval,
        job.tick,
        expected=(redis.RedisError, NotifierError, OSError),
        on_stop=lock.release,
    )
    periodic.start()
    return periodic
