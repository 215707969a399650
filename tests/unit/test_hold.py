"""The outage hold's store (notifier.hold) on fakeredis, with an injected clock."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from notifier import keys
from notifier.events import parse_event
from notifier.hold import OutageHold
from notifier.jobs import Job
from notifier.planner import plan
from tests import samples

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("the hold runs a Lua script; fakeredis needs lupa (the dev extra)")
    connection = fakeredis.FakeRedis()
    yield connection
    connection.close()


@pytest.fixture
def hold(client: fakeredis.FakeRedis) -> OutageHold:
    return OutageHold(client, down=lambda: True)


def email_job(event: dict[str, object] | None = None, attempt: int = 1) -> Job:
    parsed = parse_event(event if event is not None else samples.user_registered())
    delivery = next(d for d in plan(parsed) if d.channel == "email")
    return Job(delivery=delivery, attempt=attempt)


def reset_job(expires: datetime) -> Job:
    when = expires.isoformat().replace("+00:00", "Z")
    occurred = (expires - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    return email_job(samples.password_reset_requested(occurred_at=occurred, expires_at=when))


def test_a_held_job_is_read_back_as_it_was_with_the_time_it_was_held(hold: OutageHold) -> None:
    job = email_job(attempt=3)

    hold.put(job, NOW)

    [entry] = hold.oldest(10)
    assert entry.job == job.model_copy(update={"held_since": NOW})
    assert entry.since == NOW.timestamp()


def test_a_job_held_again_keeps_the_time_it_was_first_held(hold: OutageHold) -> None:
    first = hold.put(email_job(), NOW)
    [entry] = hold.oldest(10)
    hold.remove([entry])

    hold.put(first, NOW + timedelta(hours=1))

    [again] = hold.oldest(10)
    assert again.since == NOW.timestamp()


def test_a_job_cannot_claim_to_have_been_held_since_a_time_still_to_come(
    hold: OutageHold,
) -> None:
    forged = email_job().model_copy(update={"held_since": NOW + timedelta(days=9)})

    hold.put(forged, NOW)

    [entry] = hold.oldest(10)
    assert entry.since == NOW.timestamp()


def test_the_same_delivery_held_twice_is_one_entry(hold: OutageHold) -> None:
    job = email_job()

    hold.put(job, NOW)
    hold.put(job, NOW + timedelta(seconds=5))

    assert hold.count() == 1
    assert [entry.since for entry in hold.oldest(10)] == [NOW.timestamp()]


def test_the_longest_held_come_first(hold: OutageHold) -> None:
    later, earlier = email_job(), email_job()
    hold.put(later, NOW + timedelta(seconds=1))
    hold.put(earlier, NOW)

    ids = [entry.delivery_id for entry in hold.oldest(10)]

    assert ids == [earlier.delivery.delivery_id, later.delivery.delivery_id]


def test_an_entry_held_again_after_it_was_read_survives_the_removal_of_what_was_read(
    hold: OutageHold,
) -> None:
    job = email_job()
    hold.put(job, NOW)
    read = hold.oldest(10)
    hold.put(job, NOW)  # released, and held again at once: the outage came back

    removed = hold.remove(read)

    assert removed == 0
    assert hold.count() == 1


def test_removing_what_was_read_empties_every_key_of_the_hold(
    hold: OutageHold, client: fakeredis.FakeRedis
) -> None:
    hold.put(reset_job(NOW + timedelta(minutes=5)), NOW)

    hold.remove(hold.oldest(10))

    assert not any(client.exists(key) for key in (keys.HOLD_JOBS, keys.HOLD_SINCE))
    assert not client.exists(keys.HOLD_DEADLINES)


def test_resets_past_their_deadline_are_found_and_others_are_not(hold: OutageHold) -> None:
    expired = reset_job(NOW - timedelta(seconds=1))
    hold.put(expired, NOW - timedelta(minutes=1))
    hold.put(reset_job(NOW + timedelta(minutes=5)), NOW)
    hold.put(email_job(), NOW)

    found = hold.past_deadline(NOW, 10)

    assert [entry.delivery_id for entry in found] == [expired.delivery.delivery_id]


def test_entries_held_before_a_moment_are_found(hold: OutageHold) -> None:
    old = email_job()
    hold.put(old, NOW - timedelta(days=2))
    hold.put(email_job(), NOW)

    found = hold.held_before(NOW - timedelta(days=1), 10)

    assert [entry.delivery_id for entry in found] == [old.delivery.delivery_id]


def test_a_stored_entry_that_is_not_a_job_is_read_with_its_text_and_no_job(
    hold: OutageHold, client: fakeredis.FakeRedis
) -> None:
    client.hset(keys.HOLD_JOBS, "d-1", "abc\n{not a job")
    client.zadd(keys.HOLD_SINCE, {"d-1": NOW.timestamp()})

    [entry] = hold.oldest(10)

    assert entry.job is None
    assert entry.raw == "{not a job"
