"""The pipeline's side of the outage hold: which failed emails wait in it, and how.

fakeredis stores and the production circuits (on fakeredis), a fake SMTP
channel that raises as told, a recording queue.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

from notifier.deadletter import DeadLetter
from notifier.errors import CircuitOpenError, ProviderUnavailableError
from notifier.hold import OutageHold
from notifier.pipeline import run_job
from notifier.runtime import Runtime
from tests.conftest import make_settings
from tests.unit.test_hold import email_job
from tests.unit.test_pipeline import CountingMetrics, FakeSmtp, RecordingScheduler

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
MAX_ATTEMPTS = 3


@dataclass
class World:
    rt: Runtime
    smtp: FakeSmtp
    scheduler: RecordingScheduler

    @property
    def hold(self) -> OutageHold:
        assert self.rt.hold is not None
        return self.rt.hold

    def trip(self) -> None:
        assert self.rt.mailer is not None
        self.rt.mailer.circuit.trip("refused")

    def dead_letters(self) -> list[DeadLetter]:
        return [entry for entry in self.rt.dead_letters if isinstance(entry, DeadLetter)]


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("the ledger runs Lua scripts; fakeredis needs lupa (the dev extra)")
    connection = fakeredis.FakeRedis()
    yield connection
    connection.close()


def build(client: fakeredis.FakeRedis, **settings: Any) -> World:
    values: dict[str, Any] = {
        "notifier_retry_max_attempts": MAX_ATTEMPTS,
        "notifier_circuit_cooldown": 30,
        **settings,
    }
    scheduler = RecordingScheduler()
    production = Runtime.from_settings(
        make_settings(**values), scheduler, client=client, clock=lambda: NOW
    )
    smtp = FakeSmtp()
    rt = dataclasses.replace(production, smtp=smtp)
    return World(rt, smtp, scheduler)


@pytest.fixture
def world(client: fakeredis.FakeRedis) -> World:
    return build(client)


def test_an_email_finding_every_circuit_open_is_held_not_retried(world: World) -> None:
    world.smtp.failures.append(CircuitOpenError("not tried"))

    outcome = run_job(email_job(), world.rt)

    assert outcome.outcome == "held"
    assert world.scheduler.scheduled == []
    assert world.hold.count() == 1


def test_an_email_on_its_last_attempt_is_held_with_that_attempt_not_dead_lettered(
    world: World,
) -> None:
    world.smtp.failures.append(CircuitOpenError("not tried"))

    run_job(email_job(attempt=MAX_ATTEMPTS), world.rt)

    [entry] = world.hold.oldest(10)
    assert entry.job is not None
    assert entry.job.attempt == MAX_ATTEMPTS
    assert world.dead_letters() == []


def test_an_attempt_that_finds_the_last_provider_down_is_held(world: World) -> None:
    # The send failed and the mailer tripped the circuit: no provider is left.
    world.trip()
    world.smtp.failures.append(ProviderUnavailableError("connection refused"))

    outcome = run_job(email_job(), world.rt)

    assert outcome.outcome == "held"


def test_a_provider_failure_with_a_provider_still_up_is_retried_as_before(world: World) -> None:
    world.smtp.failures.append(ProviderUnavailableError("connection refused"))

    outcome = run_job(email_job(), world.rt)

    assert outcome.outcome == "retried"
    assert world.hold.count() == 0


def test_with_no_hold_configured_an_email_is_retried_into_a_dead_letter_as_before(
    client: fakeredis.FakeRedis,
) -> None:
    world = build(client, notifier_outage_hold_max=0)
    world.smtp.failures.append(CircuitOpenError("not tried"))

    outcome = run_job(email_job(attempt=MAX_ATTEMPTS), world.rt)

    assert world.rt.hold is None
    assert outcome.outcome == "dead"


def test_a_held_email_is_counted_with_the_outcome_held(world: World) -> None:
    counting = CountingMetrics()
    rt = dataclasses.replace(world.rt, metrics=counting)
    world.smtp.failures.append(CircuitOpenError("not tried"))

    run_job(email_job(), rt)

    assert [outcome for _, _, outcome in counting.outcomes] == ["held"]


def test_a_held_email_releases_its_claim_so_the_released_job_can_send(world: World) -> None:
    world.smtp.failures.append(CircuitOpenError("not tried"))
    job = email_job()
    run_job(job, world.rt)
    [entry] = world.hold.oldest(10)
    assert entry.job is not None

    outcome = run_job(entry.job, world.rt)

    assert outcome.outcome == "sent"
    assert len(world.smtp.sent) == 1
