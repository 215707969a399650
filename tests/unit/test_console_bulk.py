"""The console's bulk actions over a filter (notifier.console_bulk), on fakeredis."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from notifier import keys
from notifier.console_bulk import (
    BulkJob,
    BulkJobs,
    filter_from_record,
    filter_record,
    run_bulk,
    run_slice,
)
from notifier.deadletter import DeadLetter, DeadLetterStore, Filter, Status
from notifier.errors import NotifierError, PublishError
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from tests import samples

START = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class RecordingJobs(BulkJobs):
    """BulkJobs that remembers every write, to see the progress as the page would."""

    def __init__(self, client: fakeredis.FakeRedis, clock: Clock) -> None:
        super().__init__(client, clock=clock)
        self.writes: list[BulkJob] = []

    def save(self, job: BulkJob) -> BulkJob:
        saved = super().save(job)
        self.writes.append(saved)
        return saved


class Replayer:
    """Hands batches over; refuses the ids in ``refuse``."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.batches: list[int] = []
        self.refuse = refuse

    def __call__(self, batch: Sequence[DeadLetter]) -> list[str | NotifierError]:
        self.batches.append(len(batch))
        return [
            PublishError("broker said no") if entry.id in self.refuse else "re-enqueued on email"
            for entry in batch
        ]


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(client: fakeredis.FakeRedis, clock: Clock) -> DeadLetterStore:
    return DeadLetterStore(client, clock=clock)


@pytest.fixture
def jobs(client: fakeredis.FakeRedis, clock: Clock) -> RecordingJobs:
    return RecordingJobs(client, clock)


def email(number: int) -> Delivery:
    delivery = plan(parse_event(samples.booking_created()))[0]
    return delivery.model_copy(update={"delivery_id": f"d-{number}"})


def fill(store: DeadLetterStore, clock: Clock, count: int) -> None:
    """``count`` failed emails one second apart; every fifth ``expired``."""
    for number in range(count):
        clock.now = START + timedelta(seconds=number)
        status: Status = "expired" if number % 5 == 4 else "failed"
        store.add_delivery(email(number), status=status, error=f"550 no {number}", history=[])


def test_a_bulk_replay_works_in_chunks_and_writes_progress_after_each(
    store: DeadLetterStore, jobs: RecordingJobs, clock: Clock
) -> None:
    fill(store, clock, 450)
    job = jobs.create("replay", Filter(), 450)
    replayer = Replayer()

    finished = run_bulk(job.id, jobs, store, replayer, chunk=200)

    assert finished is not None
    assert finished.state == "done"
    assert replayer.batches == [200, 200, 50]
    assert [(w.state, w.done) for w in jobs.writes[-5:]] == [
        ("running", 0),
        ("running", 200),
        ("running", 400),
        ("running", 450),
        ("done", 450),
    ]
    assert store.count() == 0


def test_a_bulk_purge_over_a_filter_removes_the_matches_only(
    store: DeadLetterStore, jobs: RecordingJobs, clock: Clock
) -> None:
    fill(store, clock, 100)
    job = jobs.create("purge", Filter(status="expired"), 20)

    finished = run_bulk(job.id, jobs, store, Replayer(), chunk=7)

    assert finished is not None
    assert (finished.state, finished.done) == ("done", 20)
    assert store.count() == 80
    assert store.page(Filter(status="expired")).total == 0


def test_a_bulk_job_out_of_time_stops_and_its_next_run_goes_on_where_it_stopped(
    store: DeadLetterStore, jobs: RecordingJobs, clock: Clock
) -> None:
    fill(store, clock, 450)
    job = jobs.create("replay", Filter(), 450)
    ticks = iter([0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0])
    replayer = Replayer()

    first = run_bulk(
        job.id, jobs, store, replayer, budget=50, monotonic=lambda: next(ticks), chunk=200
    )
    assert first is not None
    assert (first.state, first.done) == ("running", 200)
    second = run_bulk(job.id, jobs, store, replayer, chunk=200)

    assert second is not None
    assert (second.state, second.done, second.failed) == ("done", 450, 0)
    assert store.count() == 0


def test_entries_a_bulk_replay_could_not_hand_over_are_counted_and_stay_in_the_store(
    store: DeadLetterStore, jobs: RecordingJobs, clock: Clock
) -> None:
    fill(store, clock, 10)
    job = jobs.create("replay", Filter(), 10)

    finished = run_bulk(job.id, jobs, store, Replayer(frozenset({"d-3", "d-7"})), chunk=4)

    assert finished is not None
    assert (finished.state, finished.done, finished.failed) == ("done", 8, 2)
    assert finished.last_error is not None
    assert "broker said no" in finished.last_error
    assert sorted(entry.id for entry in store) == ["d-3", "d-7"]


def test_a_finished_or_unknown_bulk_job_is_not_run_again(
    store: DeadLetterStore, jobs: RecordingJobs, clock: Clock
) -> None:
    fill(store, clock, 3)
    job = jobs.create("purge", Filter(), 3)
    run_bulk(job.id, jobs, store, Replayer())
    fill(store, clock, 3)

    again = run_bulk(job.id, jobs, store, Replayer())

    assert again is not None
    assert again.done == 3
    assert store.count() == 3
    assert run_bulk("no-such-job", jobs, store, Replayer()) is None


def test_a_bulk_job_record_expires_after_its_last_write(
    client: fakeredis.FakeRedis, jobs: RecordingJobs
) -> None:
    job = jobs.create("replay", Filter(status="failed"), 0)

    assert 0 < client.ttl(keys.console_bulk(job.id)) <= keys.CONSOLE_BULK_TTL
    assert jobs.get(job.id) == jobs.writes[-1]


def test_a_bulk_jobs_filter_is_kept_with_its_times_resolved() -> None:
    where = Filter(
        status="failed",
        channel="sms",
        event_type="booking.created",
        fingerprint="PermanentError:abc",
        error="550",
        since=START - timedelta(hours=2),
        until=START,
    )

    assert filter_from_record(filter_record(where)) == where
    assert filter_record(Filter()) == {}


def test_a_slice_out_of_time_publishes_the_next_slice_of_the_same_job(
    store: DeadLetterStore, jobs: RecordingJobs, clock: Clock
) -> None:
    fill(store, clock, 450)
    job = jobs.create("purge", Filter(), 450)
    published: list[str] = []

    after = run_slice(job.id, jobs, store, Replayer(), published.append, budget=0)

    assert after is not None
    assert (after.state, after.done) == ("running", 200)
    assert published == [job.id]


def test_a_bulk_job_whose_next_slice_cannot_be_published_ends_failed(
    store: DeadLetterStore, jobs: RecordingJobs, clock: Clock
) -> None:
    fill(store, clock, 450)
    job = jobs.create("purge", Filter(), 450)

    def refuse(_: str) -> None:
        raise PublishError("broker did not accept the job")

    after = run_slice(job.id, jobs, store, Replayer(), refuse, budget=0)

    assert after is not None
    assert after.state == "failed"
    assert after.last_error is not None
    assert "broker did not accept" in after.last_error
    assert jobs.get(job.id) == after
    assert store.count() == 250
