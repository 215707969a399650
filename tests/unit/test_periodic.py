"""Periodic work's parts (notifier.periodic): the lease lock on fakeredis, the timer thread."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from notifier.periodic import LeaseLock, Periodic

KEY = "notifier:test:lock"


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("the lock runs Lua scripts; fakeredis needs lupa (the dev extra)")
    connection = fakeredis.FakeRedis()
    yield connection
    connection.close()


def test_one_holder_at_a_time_takes_the_lock(client: fakeredis.FakeRedis) -> None:
    first, second = LeaseLock(client, KEY, 30), LeaseLock(client, KEY, 30)

    assert (first.acquire(), second.acquire()) == (True, False)


def test_the_holder_renews_its_lease_by_taking_the_lock_again(
    client: fakeredis.FakeRedis,
) -> None:
    lock = LeaseLock(client, KEY, 30)
    lock.acquire()
    client.pexpire(KEY, 10)

    renewed = lock.acquire()

    assert renewed
    assert client.pttl(KEY) > 10_000


def test_a_lock_given_back_can_be_taken_by_another(client: fakeredis.FakeRedis) -> None:
    first, second = LeaseLock(client, KEY, 30), LeaseLock(client, KEY, 30)
    first.acquire()

    first.release()

    assert second.acquire()


def test_giving_back_a_lock_held_by_another_leaves_it_alone(client: fakeredis.FakeRedis) -> None:
    first, second = LeaseLock(client, KEY, 30), LeaseLock(client, KEY, 30)
    first.acquire()

    second.release()

    assert not second.acquire()


def test_a_tick_that_fails_in_an_expected_way_does_not_stop_the_ticks() -> None:
    calls: list[int] = []
    twice = threading.Event()

    def job() -> None:
        calls.append(1)
        if len(calls) >= 2:
            twice.set()
        raise redis.ConnectionError("Redis is away")

    periodic = Periodic("test", 0.01, job, expected=(redis.RedisError,))
    periodic.start()
    try:
        assert twice.wait(timeout=10)
    finally:
        periodic.stop()


def test_stopping_runs_the_on_stop_hook_once_the_thread_is_done() -> None:
    stopped: list[bool] = []
    periodic = Periodic(
        "test", 0.01, lambda: None, expected=(), on_stop=lambda: stopped.append(True)
    )
    periodic.start()

    periodic.stop()

    assert stopped == [True]
