"""The dead-letter store at scale (issue 16), on fakeredis: counters kept as entries come
and go, paged reads from the indexes, filters, the migration of an old store, retention,
and a streaming, batched replay that puts back what it could not hand over."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from structlog.testing import capture_logs

from notifier import keys
from notifier.deadletter import DeadLetter, DeadLetterStore, Entry, Filter, Status
from notifier.errors import NotifierError, PublishError
from notifier.events import parse_event
from notifier.periodic import LeaseLock
from notifier.planner import Delivery, plan
from notifier.runtime import Runtime
from tests import samples
from tests.conftest import make_settings

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(client: fakeredis.FakeRedis, clock: Clock) -> DeadLetterStore:
    return DeadLetterStore(client, clock=clock)


def email() -> Delivery:
    return plan(parse_event(samples.booking_created()))[0]


def sms() -> Delivery:
    [delivery] = [d for d in plan(parse_event(samples.booking_created())) if d.channel == "sms"]
    return delivery


def fill(store: DeadLetterStore, clock: Clock, count: int) -> list[Entry]:
    """``count`` entries one second apart: failed emails, every third an SMS, every fifth
    expired, every seventh a rejected event."""
    added: list[Entry] = []
    for number in range(count):
        clock.now = START + timedelta(seconds=number)
        if number % 7 == 6:
            added.append(store.reject({"type": "nope", "n": number}, ["type: unknown type"]))
            continue
        delivery = sms() if number % 3 == 2 else email()
        status: Status = "expired" if number % 5 == 4 else "failed"
        added.append(
            store.add_delivery(
                delivery, status=status, error=f"PermanentError: 550 no {number}", history=[]
            )
        )
    return added


def recount(store: DeadLetterStore) -> dict[str, Any]:
    """The counts the old code computed, reading every entry."""
    by: dict[str, Counter[str]] = {name: Counter() for name in ("status", "channel", "type", "fp")}
    for entry in store:
        by["status"][entry.status] += 1
        by["channel"][entry.channel or "none"] += 1
        by["type"][entry.event_type or "unknown"] += 1
        by["fp"][entry.fingerprint] += 1
    return {name: dict(counter) for name, counter in by.items()}


def counted(store: DeadLetterStore) -> dict[str, Any]:
    stats = store.stats()
    return {
        "status": stats["by_status"],
        "channel": stats["by_channel"],
        "type": stats["by_type"],
        "fp": stats["by_fingerprint"],
    }


def no_full_reads(monkeypatch: pytest.MonkeyPatch, client: fakeredis.FakeRedis) -> None:
    """Reading the whole index, or many documents at once, fails the test."""

    def whole_index(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read the whole index")

    real_mget = client.mget

    def few(keys_: Sequence[Any], *args: Any) -> Any:
        assert len(keys_) <= 50, f"read {len(keys_)} documents"
        return real_mget(keys_, *args)

    monkeypatch.setattr(client, "zrange", whole_index)
    monkeypatch.setattr(client, "mget", few)


# --- counts ------------------------------------------------------------------------------


def test_stats_are_read_from_counters_without_reading_an_entry(
    store: DeadLetterStore,
    clock: Clock,
    client: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fill(store, clock, 30)
    expected = recount(store)

    def no_documents(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("stats read the documents")

    no_full_reads(monkeypatch, client)
    monkeypatch.setattr(client, "mget", no_documents)
    stats = store.stats()

    assert stats["total"] == 30
    assert counted(store) == expected


def test_counts_follow_overwrites_removals_takes_and_purges(
    store: DeadLetterStore, clock: Clock
) -> None:
    added = fill(store, clock, 21)
    first = added[0]
    assert isinstance(first, DeadLetter)
    assert first.delivery is not None
    # The same delivery failing again, now expired: one entry, counted once, as expired.
    store.add_delivery(first.delivery, status="expired", error="DeadlineExpired: late", history=[])
    store.remove(added[1].id)
    store.take(added[2].id)
    store.purge([added[3], added[4]])

    assert counted(store) == recount(store)
    assert store.stats()["total"] == 17


def test_a_counter_at_zero_is_removed_not_left_at_zero(store: DeadLetterStore) -> None:
    entry = store.add_delivery(email(), status="failed", error="PermanentError: 550", history=[])
    store.remove(entry.id)

    assert store.stats()["by_status"] == {}
    assert store.stats()["total"] == 0


def test_notifier_stats_groups_by_fingerprint_from_the_counts(
    store: DeadLetterStore,
    clock: Clock,
    client: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from notifier.metrics.dead_letters import dead_letter_summary

    fill(store, clock, 14)
    rejected = [entry for entry in store if entry.status == "rejected"]
    no_full_reads(monkeypatch, client)

    summary = dead_letter_summary(client)

    assert summary["total"] == 14
    group = summary["by_fingerprint"][rejected[0].fingerprint]
    assert group["count"] == 2
    assert group["status"] == {"rejected": 2}
    assert group["channel"] == {"none": 2}
    assert group["last_failed_at"] == rejected[-1].failed_at


# --- paging and filters ------------------------------------------------------------------


def test_a_page_is_read_from_the_index_with_the_total(
    store: DeadLetterStore,
    clock: Clock,
    client: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    added = fill(store, clock, 40)
    no_full_reads(monkeypatch, client)

    page = store.page(Filter(), offset=10, limit=5)

    assert page.total == 40
    assert [entry.id for entry in page.entries] == [entry.id for entry in added[::-1][10:15]]


def test_until_pages_back_through_time(store: DeadLetterStore, clock: Clock) -> None:
    added = fill(store, clock, 20)

    page = store.page(Filter(until=START + timedelta(seconds=9)), limit=3)

    assert page.total == 10
    assert [entry.id for entry in page.entries] == [added[9].id, added[8].id, added[7].id]


def test_a_status_filter_pages_from_its_own_index(
    store: DeadLetterStore,
    clock: Clock,
    client: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    added = fill(store, clock, 40)
    expired = [entry.id for entry in reversed(added) if entry.status == "expired"]
    no_full_reads(monkeypatch, client)

    page = store.page(Filter(status="expired"), offset=1, limit=3)

    assert page.total == len(expired)
    assert [entry.id for entry in page.entries] == expired[1:4]


def test_combined_filters_match_what_reading_every_entry_matches(
    store: DeadLetterStore, clock: Clock
) -> None:
    added = fill(store, clock, 60)
    since = START + timedelta(seconds=10)
    where = Filter(status="failed", channel="sms", since=since, error="550 NO 2")
    expected = [entry.id for entry in reversed(added) if where.matches(entry)]

    page = store.page(where, offset=0, limit=50)

    assert expected  # the case is not empty
    assert [entry.id for entry in page.entries] == expected
    assert page.total == len(expected)


def test_stats_take_the_same_filters_as_list(store: DeadLetterStore, clock: Clock) -> None:
    fill(store, clock, 30)

    stats = store.stats(Filter(channel="sms"))

    sms_entries = [entry for entry in store if entry.channel == "sms"]
    assert stats["total"] == len(sms_entries)
    assert stats["by_channel"] == {"sms": len(sms_entries)}
    assert stats["by_status"] == dict(Counter(entry.status for entry in sms_entries))


def test_matching_streams_while_entries_are_removed(store: DeadLetterStore, clock: Clock) -> None:
    added = fill(store, clock, 2500)
    seen = []
    for entry in store.matching(Filter()):
        seen.append(entry.id)
        store.remove(entry.id)

    assert sorted(seen) == sorted(entry.id for entry in added)
    assert store.count() == 0


# --- an old store ------------------------------------------------------------------------


def test_a_store_written_without_counts_is_indexed_on_first_read(
    store: DeadLetterStore, clock: Clock, client: fakeredis.FakeRedis
) -> None:
    fill(store, clock, 14)
    expected = recount(store)
    # What the code before issue 16 left in Redis: documents and the time index only.
    for key in [keys.DLQ_FACETS, keys.DLQ_COUNTS, *client.keys(keys.DLQ_BY_PREFIX + "*")]:
        client.delete(key)
    client.set(keys.dlq_entry("planted"), "{not json")
    client.zadd(keys.DLQ_INDEX, {"planted": 1, "no-document": 2})

    assert store.unindexed() == 16
    stats = store.stats()

    assert store.unindexed() == 0
    assert stats["total"] == 15  # the index member without a document is dropped
    assert stats["by_status"] == {**expected["status"], "corrupt": 1}
    assert [entry.id for entry in store.page(Filter(status="corrupt")).entries] == ["planted"]


# --- retention ---------------------------------------------------------------------------


def test_retention_removes_what_is_older_counts_and_logs_it(
    store: DeadLetterStore, clock: Clock, client: fakeredis.FakeRedis
) -> None:
    from notifier.dlq_retention import Retention

    added = fill(store, clock, 30)
    clock.now = START + timedelta(seconds=29)
    lock = LeaseLock(client, keys.DLQ_RETENTION_LOCK, 10)
    retention = Retention(store, lock, retention=10, clock=clock)

    with capture_logs() as logs:
        removed = retention.tick()

    assert removed == 19  # failed before 10:00:19
    assert {entry.id for entry in store} == {entry.id for entry in added[19:]}
    assert counted(store) == recount(store)
    assert store.stats()["removed_by_retention"] == 19
    [log] = [log for log in logs if log["event"] == "dlq.retention_removed"]
    assert log["removed"] == 19


def test_retention_is_off_by_default() -> None:
    from notifier.dlq_retention import start_retention

    settings = make_settings()
    rt = Runtime.from_settings(
        settings, scheduler=RecordingScheduler(), client=fakeredis.FakeRedis()
    )

    assert settings.notifier_dlq_retention == 0
    assert start_retention(rt) is None


# --- replay ------------------------------------------------------------------------------


class RecordingScheduler:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.fail = fail

    def schedule(self, job: Any, countdown: float) -> None:
        self.batches.append([job])

    def publish_event(self, event: dict[str, Any]) -> None:
        if self.fail:
            raise PublishError("broker did not accept the job: ConnectionError")
        self.batches.append([event])

    def schedule_many(self, jobs: Sequence[Any], events: Sequence[Any] = ()) -> None:
        if self.fail:
            raise PublishError("broker did not accept the job: ConnectionError")
        self.batches.append([*jobs, *events])


def test_replay_many_publishes_a_batch_of_deliveries_in_one_call(
    store: DeadLetterStore, clock: Clock, client: fakeredis.FakeRedis
) -> None:
    from notifier.pipeline import replay_many

    scheduler = RecordingScheduler()
    rt = Runtime.from_settings(make_settings(), scheduler=scheduler, client=client)
    fill(store, clock, 12)

    results = list(
        store.replay_stream(store.matching(Filter(status="failed")), lambda b: replay_many(b, rt))
    )

    assert len(scheduler.batches) == 1
    assert len(scheduler.batches[0]) == len(results) == 9
    assert all(job.replay_grant for job in scheduler.batches[0])
    assert store.stats(Filter(status="failed"))["total"] == 0


def test_a_batch_whose_publish_failed_goes_back_whole(
    store: DeadLetterStore, clock: Clock, client: fakeredis.FakeRedis
) -> None:
    from notifier.pipeline import replay_many

    rt = Runtime.from_settings(
        make_settings(), scheduler=RecordingScheduler(fail=True), client=client
    )
    fill(store, clock, 12)
    before = recount(store)

    results = list(store.replay_stream(store.matching(), lambda b: replay_many(b, rt)))

    assert len(results) == 12
    assert sum(1 for result in results if result.error and "PublishError" in result.error) == 12
    assert recount(store) == before == counted(store)


def test_an_interrupted_replay_leaves_the_rest_in_the_store(
    store: DeadLetterStore, clock: Clock
) -> None:
    added = fill(store, clock, 10)
    handed_over: list[str] = []

    def replayer(batch: Sequence[DeadLetter]) -> list[str | NotifierError]:
        if handed_over:
            raise KeyboardInterrupt  # the operator's Ctrl-C, during the second batch
        handed_over.extend(entry.id for entry in batch)
        return ["re-enqueued"] * len(batch)

    with pytest.raises(KeyboardInterrupt):
        for _ in store.replay_stream(store.matching(), replayer, chunk=4):
            pass

    left = {entry.id for entry in store}
    assert len(handed_over) == 4
    assert left == {entry.id for entry in added} - set(handed_over)
    assert counted(store) == recount(store)


def test_a_replayed_document_is_what_was_taken(store: DeadLetterStore) -> None:
    entry = store.add_delivery(email(), status="failed", error="PermanentError: 550", history=[])
    taken = store.take_many([entry])

    assert [json.loads(t.model_dump_json()) for t in taken] == [json.loads(entry.model_dump_json())]
    assert store.take_many([entry]) == []  # taken once only


def test_entries_an_older_worker_just_wrote_are_indexed_without_reading_the_rest(
    store: DeadLetterStore,
    clock: Clock,
    client: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fill(store, clock, 2500)
    newest = store.page(Filter(), limit=1).entries[0]
    assert isinstance(newest, DeadLetter)
    # As the code before issue 16 writes: the document and the time index only.
    for number in range(3):
        entry_id = f"old-{number}"
        document = newest.model_copy(update={"id": entry_id}).model_dump_json(exclude={"recipient"})
        client.set(keys.dlq_entry(entry_id), document)
        client.zadd(keys.DLQ_INDEX, {entry_id: START.timestamp() + 3600})
    reads: list[Any] = []
    real = client.zrevrange

    def counted_zrevrange(*args: Any, **kwargs: Any) -> Any:
        reads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "zrevrange", counted_zrevrange)

    assert store.ensure_indexed() == 3

    assert len(reads) == 1
    assert store.stats()["by_status"]["failed"] == recount(store)["status"]["failed"]
