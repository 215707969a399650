"""The outage watch: probe the SMTP providers while emails are held, and let them go.

One periodic job (``notifier.periodic``) in every worker's main process; the
lease lock ``notifier:hold:lock`` lets one host run it at a time. Each tick,
while the hold (``notifier.hold``) is not empty:

1. Dead-letters what ran out of time: an email whose deadline passed
   (``expired``, as ``run_job`` would), and one held longer than
   ``NOTIFIER_OUTAGE_HOLD_MAX`` (``failed``, ``OutageHoldExpired: …``,
   docs/DESIGN.md §10).
2. While every provider's circuit is open, probes each provider in the last
   tick before its circuit would close (connect and EHLO with the sending
   code's connection layer, as ``notifier health`` does; nothing is sent). A
   failed probe keeps the circuit open for another cool-down, so during an
   outage no email pays a provider's timeout; a good one closes it, and the
   release starts at the next tick.
3. With a provider back, releases the held emails onto ``notifier.email``,
   the longest held first, as ordinary ``notifier.deliver`` jobs with the
   attempt they had, while that queue holds fewer than ``HIGH_WATER``
   messages: the queue is fed as fast as the workers send, and the held
   bytes move to the queue rather than adding to it. An entry is removed
   after its job is published, so a crash in between sends a duplicate job,
   which the ledger stops, never loses one.

A hold that is empty costs one ``ZCARD`` per tick per host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis

from notifier import keys
from notifier.channels.smtp.connection import SmtpChannel
from notifier.channels.smtp.failover import FailoverMailer
from notifier.deadletter import Status
from notifier.errors import NotifierError
from notifier.health import check_smtp
from notifier.hold import Held, OutageHold
from notifier.logs import get_logger
from notifier.periodic import LeaseLock, Periodic
from notifier.pipeline import dead_letter_held, reject
from notifier.runtime import Runtime
from notifier.timestamps import iso_utc

__all__ = ["CHUNK", "HIGH_WATER", "LEASE", "OutageWatch", "Tick", "probe_smtp", "start_watch"]

CHUNK = 200
"""Entries read, released or dead-lettered per Redis round trip."""

HIGH_WATER = 2000
"""Release no more while ``notifier.email`` holds this many messages (the workers catch up)."""

LEASE = 30.0
"""Seconds the watch's lock outlives a host that stopped renewing it (two probe timeouts fit)."""

Probe = Callable[[SmtpChannel], tuple[bool, str]]
"""Is this provider accepting connections? (ok, what was seen)."""


def probe_smtp(channel: SmtpChannel) -> tuple[bool, str]:
    """Connect, EHLO (and STARTTLS when configured) and QUIT: ``notifier health``'s check."""
    check = check_smtp(channel.provider)
    return check.status == "ok", check.detail


def tick_interval(cooldown: float) -> float:
    """Seconds between ticks: at most 1, and at least twice per cool-down (so a probe
    lands before the circuit closes by itself)."""
    return max(min(1.0, cooldown / 2), 0.05)


@dataclass
class Tick:
    """What one tick did (for logs and tests)."""

    held: int = 0
    expired: int = 0
    overdue: int = 0
    probes: list[tuple[str, bool]] = field(default_factory=list)
    released: int = 0


class OutageWatch:
    """One tick of the periodic job over a worker's parts (see the module docstring)."""

    def __init__(
        self,
        rt: Runtime,
        hold: OutageHold,
        mailer: FailoverMailer,
        lock: LeaseLock,
        *,
        interval: float,
        probe: Probe = probe_smtp,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rt = rt
        self.hold = hold
        self.mailer = mailer
        self.lock = lock
        self.interval = interval
        self.hold_max = rt.settings.notifier_outage_hold_max
        self._probe = probe
        self._monotonic = monotonic

    def tick(self) -> Tick:
        """Expire, probe, release: as much as fits in one interval."""
        result = Tick(held=self.hold.count())
        if not result.held or not self.lock.acquire():
            return result
        started = self._monotonic()
        now = self.rt.clock()
        result.expired = self._give_up(self.hold.past_deadline, now, now, "expired", started)
        if self.hold_max > 0:
            limit = now - timedelta(seconds=self.hold_max)
            result.overdue = self._give_up(self.hold.held_before, limit, now, "failed", started)
        if self.mailer.down():
            result.probes = self._probe_due()
            if any(ok for _, ok in result.probes):
                # From the next tick on: by then every process has seen the circuit
                # close (CircuitBreaker.recheck <= the interval), so none holds
                # a released email again on a stale answer.
                return result
        if not self.mailer.down():
            result.released = self._release(started)
        if result.expired or result.overdue or result.released:
            get_logger().info(
                "outage.hold_tick",
                held=result.held,
                expired=result.expired,
                overdue=result.overdue,
                released=result.released,
            )
        return result

    def _probe_due(self) -> list[tuple[str, bool]]:
        probes = []
        for channel, circuit in self.mailer.circuits():
            if not circuit.is_open() or circuit.remaining() > self.interval:
                continue
            ok, detail = self._probe(channel)
            probes.append((circuit.name, ok))
            if ok:
                circuit.close()
                get_logger().info("outage.provider_back", provider=circuit.name, detail=detail)
            else:
                circuit.trip(f"probe: {detail}")
                get_logger().warning("outage.provider_down", provider=circuit.name, detail=detail)
        return probes

    def _release(self, started: float) -> int:
        released = 0
        while self._monotonic() - started < self.interval:
            if int(self.rt.redis.llen(keys.EMAIL_QUEUE)) >= HIGH_WATER:
                break
            batch = self.hold.oldest(CHUNK)
            if not batch:
                break
            published: list[Held] = []
            try:
                for entry in batch:
                    if entry.job is None:
                        self._reject(entry)
                    else:
                        self.rt.scheduler.schedule(entry.job, countdown=0)
                    published.append(entry)
            finally:
                self.hold.remove(published)
            released += len(published)
            if self.mailer.down():
                break  # the outage is back: what is left stays held
        return released

    def _give_up(
        self,
        select: Callable[[datetime, int], list[Held]],
        moment: datetime,
        now: datetime,
        status: Status,
        started: float,
    ) -> int:
        count = 0
        while True:
            batch = select(moment, CHUNK)
            for entry in batch:
                if entry.job is None:
                    self._reject(entry)
                elif status == "expired":
                    error = (
                        f"DeadlineExpired: not sent: its deadline {entry.job.delivery.not_after} "
                        "passed while it was held during an SMTP outage"
                    )
                    dead_letter_held(entry.job, error, "expired", self.rt)
                else:
                    since = datetime.fromtimestamp(entry.since, tz=now.tzinfo)
                    error = (
                        f"OutageHoldExpired: held since {iso_utc(since)}, longer than "
                        f"NOTIFIER_OUTAGE_HOLD_MAX ({self.hold_max:g} s): "
                        "the SMTP providers did not come back"
                    )
                    dead_letter_held(entry.job, error, "failed", self.rt)
                self.hold.remove([entry])
                count += 1
            if len(batch) < CHUNK or self._monotonic() - started >= self.interval:
                return count

    def _reject(self, entry: Held) -> None:
        # Not a job (written by another version, or by hand): kept, never dropped.
        reject(
            entry.raw, [f"held entry {entry.delivery_id!r} is not a notifier.deliver job"], self.rt
        )


def start_watch(rt: Runtime) -> Periodic | None:
    """Start the outage watch for this worker process; None without an SMTP mailer."""
    if rt.mailer is None:
        return None
    # With the hold switched off, what an earlier run held is still released.
    hold = rt.hold if rt.hold is not None else OutageHold(rt.redis, rt.mailer.down)
    lock = LeaseLock(rt.redis, keys.HOLD_LOCK, LEASE)
    interval = tick_interval(rt.settings.notifier_circuit_cooldown)
    watch = OutageWatch(rt, hold, rt.mailer, lock, interval=interval)
    periodic = Periodic(
        "outage",
        interval,
        watch.tick,
        expected=(redis.RedisError, NotifierError, OSError),
        on_stop=lock.release,
    )
    periodic.start()
    return periodic
