"""The dead-letter store on fakeredis: what an entry keeps, order, merging, rejects, grouping."""

from __future__ import annotations

import time
from datetime import datetime

import fakeredis
import pytest

from notifier.deadletter import AttemptRecord, DeadLetter, DeadLetterStore, fingerprint
from notifier.errors import PublishError
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from tests import samples

ERROR = "TransientError: 421 4.7.0 try again later (gave up after 3 attempts)"


def record(
    attempt: int, second: int = 0, error: str = "TransientError: 421 try later"
) -> AttemptRecord:
    return AttemptRecord(attempt=attempt, at=f"2026-11-26T10:00:{second:02d}.000Z", error=error)


def deliveries(count: int = 1) -> list[Delivery]:
    """Email deliveries of distinct booking.created events (fan's first)."""
    return [plan(parse_event(samples.booking_created()))[0] for _ in range(count)]


@pytest.fixture
def store() -> DeadLetterStore:
    return DeadLetterStore(fakeredis.FakeRedis())


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


def test_failed_at_is_an_iso_utc_timestamp(store: DeadLetterStore, delivery: Delivery) -> None:
    before = time.time()

    entry = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])

    assert entry.failed_at.endswith("Z")
    failed_at = datetime.fromisoformat(entry.failed_at).timestamp()
    assert before - 0.01 <= failed_at <= time.time() + 0.01
    # The first failure is the earliest attempt on record, not the time of writing.
    assert entry.first_failed_at == record(1).at


def test_get_unknown_id_is_none(store: DeadLetterStore) -> None:
    assert store.get("no-such-entry") is None


def test_entries_iterate_oldest_failure_first(store: DeadLetterStore) -> None:
    # Added in the reverse of id order, so an id-ordered listing would fail.
    added = sorted(deliveries(3), key=lambda d: d.delivery_id, reverse=True)
    for delivery in added:
        store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
        time.sleep(0.005)

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
    store: DeadLetterStore, delivery: Delivery
) -> None:
    first = store.add_delivery(delivery, status="failed", error=ERROR, history=[record(1)])
    time.sleep(0.005)

    again = store.add_delivery(
        delivery, status="failed", error="PermanentError: 550 no such user", history=[record(1, 5)]
    )

    assert again.first_failed_at == first.first_failed_at
    assert again.failed_at > first.failed_at
    assert again.error == "PermanentError: 550 no such user"


def test_a_new_failure_moves_the_entry_to_the_end(store: DeadLetterStore) -> None:
    older, newer = deliveries(2)
    store.add_delivery(older, status="failed", error=ERROR, history=[record(1)])
    time.sleep(0.005)
    store.add_delivery(newer, status="failed", error=ERROR, history=[record(1)])
    time.sleep(0.005)

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
