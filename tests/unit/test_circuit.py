"""The SMTP circuit breaker (channels.smtp.failover.CircuitBreaker) on fakeredis, clock injected."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from notifier import keys
from notifier.channels.smtp.failover import CircuitBreaker

COOLDOWN = 30.0


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    connection = fakeredis.FakeRedis()
    yield connection
    connection.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(client: fakeredis.FakeRedis, clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(client, "smtp-primary", COOLDOWN, monotonic=clock)


def test_a_trip_by_another_process_is_seen_once_the_recheck_time_has_passed(
    client: fakeredis.FakeRedis,
) -> None:
    clock = Clock()
    ours, theirs = breaker(client, clock), breaker(client, clock)
    assert not ours.is_open()

    theirs.trip("refused")
    seen_at_once = ours.is_open()
    clock.now += ours.recheck
    seen_later = ours.is_open()

    assert (seen_at_once, seen_later) == (False, True)


def test_a_process_knows_its_own_trip_and_close_at_once(client: fakeredis.FakeRedis) -> None:
    clock = Clock()
    ours = breaker(client, clock)
    assert not ours.is_open()

    ours.trip("refused")
    tripped = ours.is_open()
    ours.close()

    assert (tripped, ours.is_open()) == (True, False)


def test_the_reason_it_was_tripped_for_is_kept(client: fakeredis.FakeRedis) -> None:
    breaker(client, Clock()).trip("ConnectionRefusedError: refused")

    assert breaker(client, Clock()).open_reason() == "ConnectionRefusedError: refused"


def test_redis_is_asked_at_most_once_per_recheck_time(client: fakeredis.FakeRedis) -> None:
    clock = Clock()
    ours = breaker(client, clock)
    ours.is_open()
    client.set(keys.circuit("smtp-primary"), "written behind its back")

    answers = [ours.is_open() for _ in range(100)]

    assert set(answers) == {False}
    assert ours.recheck == 1.0
