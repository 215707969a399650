"""The dead-letter store on fakeredis: what an entry keeps, order, merging, rejects, grouping,
size caps, corrupt documents, and the over-threshold alarm."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from structlog.testing import capture_logs

from notifier import keys
from notifier.deadletter import (
    AttemptRecord,
    DeadLetter,
    DeadLetterStore,
    Filter,
    ReplayResult,
    fingerprint,
)
from notifier.errors import PublishError
from notifier.events import parse_event
from notifier.pipeline import reject
from notifier.planner import Delivery, plan
from notifier.runtime import Runtime
from tests import samples
from tests.conftest import make_settings

ERROR = "TransientError: 421 4.7.0 try again later (gave up after 3 attempts)"


def record(
    attempt: int, second: int = 0, error: str = "TransientError: 421 try later"
) -> AttemptRecord:
    return AttemptRecord(attempt=attempt, at=f"2026-11-26T10:00:{second:02d}.000Z", error=error)


def deliveries(count: int = 1) -> list[Delivery]:
    """Email deliveries of distinct booking.created events (fan's first)."""
    return [plan(parse_event(samples.booking_created()))[0] for _ in range(count)]


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


class Clock:
    """The store's clock, moved by the tests (never a sleep)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(client: fakeredis.FakeRedis, clock: Clock) -> DeadLetterStore:
    return DeadLetterStore(client, clock=clock)


@pytest.fixture
def delivery() -> Delivery:
    return deliveries()[0]


def test_add_delivery_keeps_the_whole_delivery(store: DeadLetterStore, delivery: Delivery) -> None:
    store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    entry = store.get(delivery.delivery_id)

    assert entry is not None
    assert entry.delivery == delivery
    assert entry.id == delivery.delivery_id
    assert entry.status == "failed"
    assert (entry.event_id, entry.event_type) == (delivery.event_id, "booking.created")
    assert (entry.channel, entry.template) == ("email", "booking_confirmation_fan")
    assert entry.recipient == "ada@example.com"


def test_add_delivery_keeps_the_error_and_its_fingerprint(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    assert entry.error == ERROR
    assert entry.fingerprint == fingerprint(ERROR)
    assert entry.fingerprint.startswith("TransientError:")


def test_attempts_count_only_send_attempts(store: DeadLetterStore, delivery: Delivery) -> None:
    # attempt 0 records a decision without a send (an expired deadline, a rate limit).
    history = [record(1, 1), record(2, 2), record(0, 3, "DeadlineExpired: too late")]

    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=history)

    assert entry.attempts == 2
    assert entry.history == history


def test_failed_at_is_the_time_of_writing_in_iso_utc(
    store: DeadLetterStore, delivery: Delivery, clock: Clock
) -> None:
    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    assert entry.failed_at == "2026-11-26T10:00:00.000Z"
    assert datetime.fromisoformat(entry.failed_at) == clock()
    # The first failure is the earliest attempt on record, not the time of writing.
    assert entry.first_failed_at == record(1).at


def test_get_unknown_id_is_none(store: DeadLetterStore) -> None:
    assert store.get("no-such-entry") is None


def test_entries_iterate_oldest_failure_first(store: DeadLetterStore, clock: Clock) -> None:
    # Added in the reverse of id order, so an id-ordered listing would fail.
    added = sorted(deliveries(3), key=lambda d: d.delivery_id, reverse=True)
    for delivery in added:
        store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
        clock.advance()

    assert [entry.id for entry in store] == [d.delivery_id for d in added]


def test_adding_the_same_delivery_again_keeps_earlier_history(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1, 1)])

    # A replay starts a fresh job: its history holds only the new attempts.
    again = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1, 9)])

    assert again.history == [record(1, 1), record(1, 9)]
    assert again.attempts == 2
    assert store.count() == 1


def test_adding_the_same_history_again_does_not_duplicate_records(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1, 1)])

    again = store.add_delivery(
        delivery, status="failed", error=ERROR, history=[record(1, 1), record(2, 2)]
    )

    assert again.history == [record(1, 1), record(2, 2)]


def test_adding_the_same_delivery_again_keeps_first_failed_at(
    store: DeadLetterStore, delivery: Delivery, clock: Clock
) -> None:
    first = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
    clock.advance()

    again = store.add_delivery(
        delivery, status="failed", error="PermanentError: 550 no such user", history=[record(1, 5)]
    )

    assert again.first_failed_at == first.first_failed_at
    assert again.failed_at > first.failed_at
    assert again.error == "PermanentError: 550 no such user"


def test_a_new_failure_moves_the_entry_to_the_end(store: DeadLetterStore, clock: Clock) -> None:
    older, newer = deliveries(2)
    store.add_delivery(older, status="failed", error=ERROR, history=[record(1)])
    clock.advance()
    store.add_delivery(newer, status="failed", error=ERROR, history=[record(1)])
    clock.advance()

    store.add_delivery(older, status="failed", error=ERROR, history=[record(2)])

    assert [entry.id for entry in store] == [newer.delivery_id, older.delivery_id]


@pytest.mark.parametrize(
    ("raw", "raw_event"),
    [
        pytest.param(
            {"type": "booking.created", "event_id": "e-1"},
            '{"type": "booking.created", "event_id": "e-1"}',
            id="dict",
        ),
        pytest.param("{not json", "{not json", id="string"),
        pytest.param(b"caf\xc3\xa9 \xff", "café \ufffd", id="bytes"),
        pytest.param(
            {"type": "booking.created", "when": {1, 2}},
            "{'type': 'booking.created', 'when': {1, 2}}",
            id="not-serializable",
        ),
    ],
)
def test_reject_keeps_the_raw_payload(store: DeadLetterStore, raw: object, raw_event: str) -> None:
    entry = store.reject(raw, ["type: Field required"])

    assert store.get(entry.id) == entry
    assert entry.raw_event == raw_event


def test_reject_keeps_the_errors_with_status_rejected(store: DeadLetterStore) -> None:
    errors = ["fan.email: not a valid email address", "slot: Field required"]

    entry = store.reject({"type": "booking.created", "event_id": "e-1"}, errors)

    assert entry.status == "rejected"
    assert entry.errors == errors
    assert entry.error == "InvalidEventError: " + "; ".join(errors)
    assert entry.delivery is None
    assert entry.attempts == 0


def test_reject_reads_event_id_and_type_when_it_can(store: DeadLetterStore) -> None:
    entry = store.reject({"type": "booking.created", "event_id": "e-1"}, ["slot: Field required"])

    assert (entry.event_id, entry.event_type) == ("e-1", "booking.created")


@pytest.mark.parametrize(
    "raw",
    [{"type": 3, "event_id": ["x"]}, ["not", "an", "object"], object()],
    ids=["wrong-types", "list", "object"],
)
def test_reject_leaves_event_id_and_type_empty_when_unknown(
    store: DeadLetterStore, raw: object
) -> None:
    entry = store.reject(raw, ["event must be a JSON object"])

    assert (entry.event_id, entry.event_type) == (None, None)
    assert entry.raw_event


def test_reject_truncates_a_huge_payload(store: DeadLetterStore) -> None:
    entry = store.reject("x" * 1_000_000, ["event is too large"])

    assert entry.raw_event is not None
    assert 0 < len(entry.raw_event) < 100_000


def test_every_reject_is_its_own_entry(store: DeadLetterStore) -> None:
    first = store.reject("{", ["not JSON"])
    second = store.reject("{", ["not JSON"])

    assert first.id != second.id
    assert store.count() == 2


def test_remove_deletes_an_entry(store: DeadLetterStore, delivery: Delivery) -> None:
    store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    assert store.remove(delivery.delivery_id) is True
    assert store.get(delivery.delivery_id) is None
    assert list(store) == []
    assert store.count() == 0


def test_remove_unknown_id_is_false(store: DeadLetterStore) -> None:
    assert store.remove("no-such-entry") is False


def test_count(store: DeadLetterStore) -> None:
    for delivery in deliveries(2):
        store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
    store.reject("{", ["not JSON"])

    assert store.count() == 3


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            "TransientError: 421 try again in 30 seconds",
            "TransientError: 451 try again in 600 seconds",
            id="numbers",
        ),
        pytest.param(
            "PermanentError: delivery 6b470297-e06f-5aaf-bf23-694e1e4e0c63 refused",
            "PermanentError: delivery 0d1a3c52-63bb-5f0e-8d3e-2f1c9d7b4a10 refused",
            id="uuids",
        ),
        pytest.param(
            "PermanentError: template 'booking_confirmation_fan' is broken",
            "PermanentError: template 'password_reset' is broken",
            id="single-quoted",
        ),
        pytest.param(
            'PermanentError: unknown mailbox "ada"',
            'PermanentError: unknown mailbox "grace"',
            id="double-quoted",
        ),
        pytest.param(
            "PermanentError: recipient refused: 550 5.1.1 <ada@example.com> user unknown",
            "PermanentError: recipient refused: 550 5.1.1 <grace@example.org> user unknown",
            id="addresses",
        ),
    ],
)
def test_fingerprint_groups_errors_that_differ_only_in_details(first: str, second: str) -> None:
    assert fingerprint(first) == fingerprint(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            "TransientError: connection refused",
            "PermanentError: connection refused",
            id="error-class",
        ),
        pytest.param(
            "PermanentError: recipient refused: 550 user unknown",
            "PermanentError: message rejected as spam",
            id="message",
        ),
    ],
)
def test_fingerprint_separates_different_errors(first: str, second: str) -> None:
    assert fingerprint(first) != fingerprint(second)


def test_fingerprint_starts_with_the_error_class() -> None:
    assert fingerprint("ConfigurationError: MAIL_DEFAULT_SENDER is not set").startswith(
        "ConfigurationError:"
    )


def test_rejects_with_the_same_errors_in_any_order_share_a_fingerprint(
    store: DeadLetterStore,
) -> None:
    first = store.reject({}, ["type: missing", "event_id: Field required"])
    second = store.reject({}, ["event_id: Field required", "type: missing"])

    assert first.fingerprint == second.fingerprint


# --- replay and purge -------------------------------------------------------------


def test_replay_hands_each_entry_over_and_removes_it(store: DeadLetterStore) -> None:
    items = deliveries(2)
    for item in items:
        store.add_delivery(item, status="failed", error=ERROR, history=[record(1)])
    handed: list[str] = []

    def replayer(entry: DeadLetter) -> str:
        handed.append(entry.id)
        return "re-enqueued"

    results = store.replay(list(store), replayer)

    assert [result.done for result in results] == ["re-enqueued", "re-enqueued"]
    assert sorted(handed) == sorted(d.delivery_id for d in items)
    assert store.count() == 0


def test_replay_puts_back_an_entry_it_could_not_hand_over(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    def broker_down(_: DeadLetter) -> str:
        raise PublishError("broker did not accept the job")

    [result] = store.replay([entry], broker_down)

    assert result.error == "PublishError: broker did not accept the job"
    assert store.get(entry.id) == entry


def test_replay_puts_back_an_entry_before_an_unexpected_error_escapes(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    def bug(_: DeadLetter) -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        store.replay([entry], bug)
    assert store.get(entry.id) == entry


def test_replay_skips_an_entry_another_replay_took_first(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
    assert store.take(entry.id) is not None  # the other operator's replay

    assert store.replay([entry], lambda _: "re-enqueued") == []


def test_purge_deletes_and_counts(store: DeadLetterStore) -> None:
    entries = [
        store.add_delivery(item, status="failed", error=ERROR, history=[record(1)])
        for item in deliveries(3)
    ]

    assert store.purge(entries[:2]) == 2
    assert [entry.id for entry in store] == [entries[2].id]


# --- size: every stored field is capped, every entry stays under 70 KB ---------------

MAX_ENTRY = 70_000
HUGE = 5 * 2**20


def stored_size(client: fakeredis.FakeRedis, entry_id: str) -> int:
    raw = client.get(keys.dlq_entry(entry_id))
    assert raw is not None
    return len(raw)


def test_a_rejected_event_with_huge_type_and_event_id_is_stored_under_70_kb(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    # The repro: a task call whose event has a 5 MiB type and a 5 MiB event_id.
    raw = {"type": "x" * HUGE, "event_id": "y" * HUGE}

    entry = store.reject(raw, [f"type: unknown type {'x' * HUGE}"])

    assert stored_size(client, entry.id) <= MAX_ENTRY
    assert entry.event_type is not None
    assert entry.event_type.startswith("xxx")
    assert entry.event_type.endswith(" bytes]")


def test_a_cut_field_says_how_many_bytes_were_cut(store: DeadLetterStore) -> None:
    entry = store.reject({"type": "t" * 10_000, "event_id": "e-1"}, ["type: unknown"])

    assert entry.event_type is not None
    kept = len(entry.event_type) - len(entry.event_type.lstrip("t"))
    assert entry.event_type == "t" * kept + f"…[truncated {10_000 - kept} bytes]"


def test_a_reject_with_a_flood_of_errors_is_stored_under_70_kb(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    errors = [f"field{i}: {'v' * 500} is not allowed" for i in range(10_000)]

    entry = store.reject({"type": "booking.created"}, errors)

    assert stored_size(client, entry.id) <= MAX_ENTRY
    assert entry.errors[0] == errors[0]
    assert len(entry.errors) < 100


def test_a_huge_raw_payload_of_any_characters_is_stored_under_70_kb(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    # Quotes and control characters grow when written as JSON; ë and 李 take 2-3 bytes.
    raw = ('"\x01ë李\\' * HUGE)[:HUGE]

    entry = store.reject(raw, ["event must be a JSON object, got string"])

    assert stored_size(client, entry.id) <= MAX_ENTRY
    assert entry.raw_event is not None
    assert entry.raw_event.startswith('"\x01ë李\\')


def forged(delivery: Delivery, **fields: object) -> Delivery:
    """A delivery as a forged ``notifier.deliver`` job on the queue could carry it."""
    return Delivery.model_validate({**delivery.model_dump(), **fields})


def test_a_forged_delivery_with_huge_fields_is_stored_under_70_kb(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    huge = forged(
        delivery,
        delivery_id="d" * HUGE,
        event_id="e" * HUGE,
        template="t" * HUGE,
        address="a" * HUGE,
        event={**delivery.event, "padding": "p" * HUGE},
    )
    history = [record(n, n % 60, "TransientError: " + "h" * 10_000) for n in range(1, 5_000)]

    entry = store.add_delivery(huge, status="failed", error="E" * HUGE, history=history)

    assert stored_size(client, entry.id) <= MAX_ENTRY
    assert len(entry.id) <= 100


def test_a_long_history_keeps_the_first_attempt_and_the_latest(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    history = [record(n, n % 60) for n in range(1, 101)]

    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=history)

    assert entry.history[0] == history[0]
    assert entry.history[-1] == history[-1]
    assert len(entry.history) == 20


def test_an_ordinary_delivery_is_kept_whole(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    # The largest valid event (64 KiB) still fits, so its entry can be replayed.
    event = {**delivery.event, "padding": "p" * 60_000}
    big = forged(delivery, event=event)

    entry = store.add_delivery(big, status="failed", error=ERROR, history=[record(1)])

    assert entry.delivery == big
    assert stored_size(client, entry.id) <= MAX_ENTRY


# --- corrupt documents -----------------------------------------------------------------


def plant(client: fakeredis.FakeRedis, entry_id: str, document: bytes, score: float = 1.0) -> None:
    """What `redis-cli set notifier:dlq:entry:ID ...` plus `zadd notifier:dlq:index` leaves."""
    client.set(keys.dlq_entry(entry_id), document)
    client.zadd(keys.DLQ_INDEX, {entry_id: score})


def valid_document(delivery: Delivery, **fields: object) -> bytes:
    entry = DeadLetterStore(fakeredis.FakeRedis()).add_delivery(
        delivery, status="failed", error=ERROR, history=[record(1)]
    )
    return json.dumps({**json.loads(entry.model_dump_json()), **fields}).encode()


CORRUPT = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param(b"[]", id="not-an-object"),
    pytest.param(b'{"id": "corrupt-1"}', id="missing-fields"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("document", CORRUPT)
def test_a_corrupt_document_is_listed_as_corrupt_with_its_failure_time_from_the_index(
    store: DeadLetterStore, client: fakeredis.FakeRedis, document: bytes
) -> None:
    plant(client, "corrupt-1", document, score=1_764_151_200.0)

    [entry] = list(store)

    assert (entry.id, entry.status) == ("corrupt-1", "corrupt")
    assert entry.failed_at == "2025-11-26T10:00:00.000Z"


@pytest.mark.parametrize(
    "failed_at", ["yesterday", "2026-11-26T10:00:00", 3], ids=["words", "no-zone", "number"]
)
def test_a_document_whose_failure_time_is_not_a_date_is_corrupt(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery, failed_at: object
) -> None:
    plant(client, delivery.delivery_id, valid_document(delivery, failed_at=failed_at))

    [entry] = list(store)

    assert entry.status == "corrupt"


def test_a_corrupt_entry_does_not_hide_the_good_ones(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    good = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
    plant(client, "corrupt-1", b"{not json")

    assert {(entry.id, entry.status) for entry in store} == {
        (good.id, "failed"),
        ("corrupt-1", "corrupt"),
    }


def test_a_corrupt_entry_keeps_its_raw_document_to_show(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    plant(client, "corrupt-1", b"{not json \xff")

    entry = store.get("corrupt-1")

    assert entry is not None
    assert entry.status == "corrupt"
    assert entry.raw == "{not json \ufffd"
    assert entry.problem


def test_stats_count_corrupt_entries(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
    plant(client, "corrupt-1", b"{not json")

    counts = store.stats()

    assert counts["total"] == 2
    assert counts["by_status"] == {"failed": 1, "corrupt": 1}


def test_since_reads_a_corrupt_entry_s_time_from_the_index(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    plant(client, "old", b"{not json", score=datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    plant(client, "new", b"{not json", score=datetime(2026, 6, 1, tzinfo=UTC).timestamp())

    found = store.select(Filter(since=datetime(2026, 3, 1, tzinfo=UTC)))

    assert [entry.id for entry in found] == ["new"]


def test_status_corrupt_selects_the_corrupt_entries(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
    plant(client, "corrupt-1", b"{not json")

    assert [entry.id for entry in store.select(Filter(status="corrupt"))] == ["corrupt-1"]


def test_replay_skips_a_corrupt_entry_and_says_why(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    plant(client, "corrupt-1", b"{not json")
    handed: list[DeadLetter] = []

    def replayer(entry: DeadLetter) -> str:
        handed.append(entry)
        return "re-enqueued"

    results = store.replay(list(store), replayer)

    assert results == [ReplayResult("corrupt-1", error="corrupt entry")]
    assert handed == []
    assert store.count() == 1


def test_purge_deletes_a_corrupt_entry(store: DeadLetterStore, client: fakeredis.FakeRedis) -> None:
    plant(client, "corrupt-1", b"{not json")

    assert store.purge(list(store)) == 1
    assert store.count() == 0
    assert client.get(keys.dlq_entry("corrupt-1")) is None


def test_a_failure_is_recorded_under_a_new_id_when_the_delivery_s_document_is_corrupt(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    plant(client, delivery.delivery_id, b"{not json")

    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    assert entry.id != delivery.delivery_id
    assert store.get(entry.id) == entry
    assert entry.delivery == delivery
    # The corrupt document stays for the operator to look at.
    assert client.get(keys.dlq_entry(delivery.delivery_id)) == b"{not json"


def test_the_entry_id_is_its_key_not_what_the_document_claims(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    plant(client, delivery.delivery_id, valid_document(delivery, id="someone-else"))

    [entry] = list(store)
    store.purge([entry])

    assert entry.id == delivery.delivery_id
    assert store.count() == 0


# --- one source of truth for what replay sends ---------------------------------------


def test_the_recipient_is_the_delivery_s_address_whatever_the_stored_copy_says(
    store: DeadLetterStore, client: fakeredis.FakeRedis, delivery: Delivery
) -> None:
    plant(
        client,
        delivery.delivery_id,
        valid_document(delivery, recipient="mallory@evil.example", channel="sms"),
    )

    entry = store.get(delivery.delivery_id)

    assert isinstance(entry, DeadLetter)
    assert entry.delivery is not None
    assert entry.recipient == entry.delivery.address == "ada@example.com"
    assert entry.channel == entry.delivery.channel == "email"


# --- the over-threshold alarm ----------------------------------------------------------


@dataclass
class NoQueue:
    def schedule(self, job: object, countdown: float) -> None:
        raise AssertionError("nothing is scheduled here")

    def publish_event(self, event: dict[str, object]) -> None:
        raise AssertionError("nothing is published here")

    def schedule_many(self, jobs: Sequence[Any], events: Sequence[Any] = ()) -> None:
        raise AssertionError("nothing is scheduled here")


def test_over_threshold_is_logged_at_most_once_a_minute_per_process() -> None:
    now = [datetime(2026, 11, 26, 10, 0, tzinfo=UTC)]
    rt = Runtime.from_settings(
        make_settings(notifier_dlq_alert_threshold=2),
        NoQueue(),
        clock=lambda: now[0],
        client=fakeredis.FakeRedis(),
    )

    with capture_logs() as logs:
        for _ in range(5):  # the first is under the threshold
            reject({"type": "nope"}, ["type: unknown type"], rt)
        now[0] += timedelta(seconds=59)
        reject({"type": "nope"}, ["type: unknown type"], rt)
        now[0] += timedelta(seconds=1)
        reject({"type": "nope"}, ["type: unknown type"], rt)

    alerts = [line for line in logs if line["event"] == "dlq.over_threshold"]
    assert [alert["dead_letters"] for alert in alerts] == [2, 7]


def test_a_failure_whose_delivery_holds_a_lone_surrogate_is_still_recorded(
    store: DeadLetterStore, delivery: Delivery
) -> None:
    # Celery's JSON decoder lets "\ud800" through; UTF-8 cannot write it.
    odd = forged(delivery, event={**delivery.event, "note": "x\ud800y"})

    entry = store.add_delivery(odd, status="failed", error="PermanentError: \ud800", history=[])

    assert store.get(entry.id) == entry
    assert entry.status == "failed"
    assert entry.delivery is not None
    assert entry.delivery.event["note"] == "x\\ud800y"


def test_an_attempt_record_refuses_a_time_that_is_not_a_time() -> None:
    # A forged job's history must not later make its entry unreadable.
    with pytest.raises(ValueError, match="at"):
        AttemptRecord(attempt=1, at="soon", error="TransientError: 421")
