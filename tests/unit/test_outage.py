"""The outage watch (notifier.outage): probe, release, expire; fakeredis, fake clock and probe."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from notifier import keys
from notifier.channels.smtp.connection import SmtpChannel
from notifier.deadletter import DeadLetter
from notifier.hold import OutageHold
from notifier.jobs import Job
from notifier.outage import HIGH_WATER, LEASE, OutageWatch
from notifier.periodic import LeaseLock
from notifier.runtime import Runtime
from tests.conftest import make_settings
from tests.unit.test_hold import email_job, reset_job

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
COOLDOWN = 30.0
HOLD_MAX = 3600.0


@dataclass
class RecordingScheduler:
    scheduled: list[tuple[Job, float]] = field(default_factory=list)

    def schedule(self, job: Job, countdown: float) -> None:
        self.scheduled.append((job, countdown))

    def publish_event(self, event: dict[str, Any]) -> None:
        raise AssertionError("the watch publishes no events")

    def schedule_many(self, jobs: Sequence[Any], events: Sequence[Any] = ()) -> None:
        for job in jobs:
            self.schedule(job, 0)
        for event in events:
            self.publish_event(event)


@dataclass
class Probe:
    """Answers as told, and counts the calls."""

    ok: bool = False
    calls: int = 0

    def __call__(self, channel: SmtpChannel) -> tuple[bool, str]:
        self.calls += 1
        return self.ok, "EHLO accepted" if self.ok else "ConnectionRefusedError"


@dataclass
class Parts:
    rt: Runtime
    hold: OutageHold
    watch: OutageWatch
    probe: Probe
    scheduler: RecordingScheduler
    clock: list[datetime]

    def trip(self) -> None:
        assert self.rt.mailer is not None
        self.rt.mailer.circuit.trip("refused")

    def dead_letters(self) -> list[DeadLetter]:
        return [entry for entry in self.rt.dead_letters if isinstance(entry, DeadLetter)]


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("the watch runs Lua scripts; fakeredis needs lupa (the dev extra)")
    connection = fakeredis.FakeRedis()
    yield connection
    connection.close()


@pytest.fixture
def parts(client: fakeredis.FakeRedis) -> Parts:
    clock = [NOW]
    scheduler = RecordingScheduler()
    settings = make_settings(notifier_circuit_cooldown=COOLDOWN, notifier_outage_hold_max=HOLD_MAX)
    rt = Runtime.from_settings(settings, scheduler, client=client, clock=lambda: clock[0])
    assert rt.hold is not None
    assert rt.mailer is not None
    probe = Probe()
    lock = LeaseLock(client, keys.HOLD_LOCK, LEASE)
    # The interval covers the whole cool-down: a just-tripped circuit is due for a probe.
    watch = OutageWatch(
        rt, rt.hold, rt.mailer, lock, interval=COOLDOWN, probe=probe, monotonic=lambda: 0.0
    )
    return Parts(rt, rt.hold, watch, probe, scheduler, clock)


def test_an_empty_hold_is_left_alone_without_taking_the_lock(
    parts: Parts, client: fakeredis.FakeRedis
) -> None:
    parts.trip()

    parts.watch.tick()

    assert parts.probe.calls == 0
    assert not client.exists(keys.HOLD_LOCK)


def test_while_the_probe_fails_nothing_is_released_and_the_circuit_stays_open(
    parts: Parts,
) -> None:
    parts.trip()
    parts.hold.put(email_job(), NOW)

    tick = parts.watch.tick()

    assert tick.probes == [("smtp-primary", False)]
    assert parts.scheduler.scheduled == []
    assert parts.hold.count() == 1
    assert parts.rt.mailer is not None
    assert parts.rt.mailer.down()


def test_a_probe_that_succeeds_releases_every_held_email_with_the_attempt_it_had(
    parts: Parts,
) -> None:
    parts.trip()
    jobs = [email_job(attempt=attempt) for attempt in (1, 2, 3)]
    for job in jobs:
        parts.hold.put(job, NOW)
    parts.probe.ok = True
    parts.watch.tick()  # the probe closes the circuit

    tick = parts.watch.tick()

    released = {job.delivery.delivery_id: job.attempt for job, _ in parts.scheduler.scheduled}
    assert released == {job.delivery.delivery_id: job.attempt for job in jobs}
    assert {countdown for _, countdown in parts.scheduler.scheduled} == {0}
    assert tick.released == 3
    assert parts.hold.count() == 0


def test_the_release_waits_for_the_tick_after_the_probe_that_found_the_provider_back(
    parts: Parts,
) -> None:
    parts.trip()
    parts.hold.put(email_job(), NOW)
    parts.probe.ok = True

    parts.watch.tick()

    assert parts.scheduler.scheduled == []


def test_the_circuit_closes_when_the_probe_succeeds(parts: Parts) -> None:
    parts.trip()
    parts.hold.put(email_job(), NOW)
    parts.probe.ok = True

    parts.watch.tick()

    assert parts.rt.mailer is not None
    assert not parts.rt.mailer.down()


def test_a_circuit_far_from_closing_is_not_probed(parts: Parts) -> None:
    parts.trip()
    parts.hold.put(email_job(), NOW)
    parts.watch.interval = COOLDOWN / 10

    parts.watch.tick()

    assert parts.probe.calls == 0


def test_nothing_is_released_while_the_email_queue_is_full(
    parts: Parts, client: fakeredis.FakeRedis
) -> None:
    client.rpush(keys.EMAIL_QUEUE, *[b"x"] * HIGH_WATER)
    parts.hold.put(email_job(), NOW)

    parts.watch.tick()

    assert parts.scheduler.scheduled == []
    assert parts.hold.count() == 1


def test_a_held_reset_whose_deadline_passes_is_dead_lettered_expired(parts: Parts) -> None:
    parts.trip()
    job = reset_job(NOW + timedelta(minutes=5))
    parts.hold.put(job, NOW)
    parts.clock[0] = NOW + timedelta(minutes=5)

    parts.watch.tick()

    [entry] = parts.dead_letters()
    assert (entry.status, entry.error.split(":", 1)[0]) == ("expired", "DeadlineExpired")
    assert entry.delivery == job.delivery
    assert parts.hold.count() == 0


def test_an_email_held_longer_than_the_hold_max_is_dead_lettered_failed(parts: Parts) -> None:
    parts.trip()
    job = email_job(attempt=2)
    parts.hold.put(job, NOW)
    parts.clock[0] = NOW + timedelta(seconds=HOLD_MAX)

    parts.watch.tick()

    [entry] = parts.dead_letters()
    assert (entry.status, entry.error.split(":", 1)[0]) == ("failed", "OutageHoldExpired")
    assert "NOTIFIER_OUTAGE_HOLD_MAX" in entry.error
    assert parts.hold.count() == 0


def test_an_email_held_less_than_the_hold_max_stays(parts: Parts) -> None:
    parts.trip()
    parts.hold.put(email_job(), NOW)
    parts.clock[0] = NOW + timedelta(seconds=HOLD_MAX - 1)

    parts.watch.tick()

    assert parts.dead_letters() == []
    assert parts.hold.count() == 1


def test_with_the_hold_switched_off_what_was_held_before_is_released_not_expired(
    client: fakeredis.FakeRedis,
) -> None:
    settings = make_settings(notifier_circuit_cooldown=COOLDOWN, notifier_outage_hold_max=0)
    scheduler = RecordingScheduler()
    rt = Runtime.from_settings(settings, scheduler, client=client, clock=lambda: NOW)
    assert rt.hold is None
    assert rt.mailer is not None
    leftover = OutageHold(client, rt.mailer.down)
    leftover.put(email_job(), NOW - timedelta(days=3))
    lock = LeaseLock(client, keys.HOLD_LOCK, LEASE)
    watch = OutageWatch(rt, leftover, rt.mailer, lock, interval=1.0, monotonic=lambda: 0.0)

    watch.tick()

    assert len(scheduler.scheduled) == 1
    assert list(rt.dead_letters) == []


def test_another_host_holding_the_lock_keeps_this_one_from_acting(
    parts: Parts, client: fakeredis.FakeRedis
) -> None:
    LeaseLock(client, keys.HOLD_LOCK, LEASE).acquire()
    parts.trip()
    parts.hold.put(email_job(), NOW)
    parts.probe.ok = True

    parts.watch.tick()

    assert parts.probe.calls == 0
    assert parts.scheduler.scheduled == []


def test_a_held_entry_that_is_not_a_job_is_kept_as_a_dead_letter(
    parts: Parts, client: fakeredis.FakeRedis
) -> None:
    client.hset(keys.HOLD_JOBS, "d-1", "abc\n{not a job")
    client.zadd(keys.HOLD_SINCE, {"d-1": NOW.timestamp()})

    parts.watch.tick()

    [entry] = parts.dead_letters()
    assert entry.raw_event == "{not a job"
    assert parts.hold.count() == 0
