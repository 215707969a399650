"""publish_many: validation first, Celery's own message format, chunks, retries.

These run on kombu's in-memory transport (no Redis); the Redis pipelining
itself, and a real worker consuming what it sends, are covered by
tests/integration/test_publish_many.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.exceptions import OperationalError

import notifier.client as client
from notifier import keys
from notifier.app import NotifierCelery, create_app
from notifier.client import publish, publish_many
from notifier.errors import InvalidEventError, PublishError
from tests import samples
from tests.conftest import make_settings

# Differ on every message by design; everything else must be what send_task sends.
RANDOM_HEADERS = {"id", "root_id", "argsrepr"}
RANDOM_PROPERTIES = {"correlation_id", "delivery_tag"}


@pytest.fixture
def app() -> Iterator[NotifierCelery]:
    """notifier's Celery app on kombu's in-memory broker, queue emptied before and after."""
    app = create_app(make_settings(redis_url="memory://"))
    _drain(app)
    yield app
    _drain(app)


def _drain(app: NotifierCelery) -> list[Any]:
    """Every message waiting on notifier.events, in publish order (kombu Message objects)."""
    messages = []
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(keys.EVENTS_QUEUE)
        try:
            while True:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    break
                message.ack()
                messages.append(message)
        finally:
            queue.close()
    return messages


def _args(message: Any) -> list[Any]:
    args, kwargs, _embed = message.decode()
    assert kwargs == {}
    return list(args)


def test_publishes_one_handle_event_message_per_event_in_order(app: NotifierCelery) -> None:
    events = [
        samples.user_registered(),
        samples.booking_created(),
        samples.password_reset_requested(),
    ]

    ids = publish_many(events, app=app)

    assert ids == [event["event_id"] for event in events]
    messages = _drain(app)
    assert [message.headers["task"] for message in messages] == [keys.HANDLE_EVENT_TASK] * 3
    assert [_args(message) for message in messages] == [[event] for event in events]


def test_an_invalid_event_means_nothing_is_published(app: NotifierCelery) -> None:
    good = samples.user_registered()
    bad = samples.user_registered(user={"name": "Ada", "email": "not an address"})

    with pytest.raises(InvalidEventError) as caught:
        publish_many([good, bad, good], app=app)

    assert any(message.startswith("event 1: ") for message in caught.value.errors)
    assert _drain(app) == []


def test_an_address_under_test_is_invalid_for_a_default_app(app: NotifierCelery) -> None:
    event = samples.user_registered(user={**samples.FAN, "email": "ada@mail.test"})

    with pytest.raises(InvalidEventError):
        publish(event, app=app)


def test_an_address_under_test_is_published_with_an_app_allowing_special_domains() -> None:
    staging = create_app(make_settings(redis_url="memory://", notifier_allow_special_domains=True))
    _drain(staging)
    event = samples.user_registered(user={**samples.FAN, "email": "ada@mail.test"})

    assert publish(event, app=staging) == event["event_id"]
    assert [_args(message) for message in _drain(staging)] == [[event]]


def test_validation_comes_before_the_broker() -> None:
    # Nothing listens on port 1: an invalid batch must fail as invalid, not as unreachable.
    unreachable = create_app(make_settings(redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(InvalidEventError):
        publish_many([{"type": "user.registered"}], app=unreachable)


def test_nothing_to_publish_needs_no_broker() -> None:
    unreachable = create_app(make_settings(redis_url="redis://127.0.0.1:1/0"))
    assert publish_many([], app=unreachable) == []


def test_the_message_is_what_celery_send_task_sends(app: NotifierCelery) -> None:
    event = samples.booking_created()
    app.send_task(keys.HANDLE_EVENT_TASK, args=[event], queue=keys.EVENTS_QUEUE)
    publish_many([event], app=app)

    sent, ours = _drain(app)

    for name in set(sent.headers) | set(ours.headers):
        if name not in RANDOM_HEADERS:
            assert ours.headers.get(name) == sent.headers.get(name), name
    assert set(ours.headers) == set(sent.headers)
    assert ours.headers["root_id"] == ours.headers["id"]  # as for a top-level send_task
    for name in set(sent.properties) | set(ours.properties):
        if name not in RANDOM_PROPERTIES:
            assert ours.properties.get(name) == sent.properties.get(name), name
    assert ours.properties["correlation_id"] == ours.headers["id"]
    assert (ours.content_type, ours.content_encoding) == (sent.content_type, sent.content_encoding)
    assert ours.decode() == sent.decode()
    assert json.loads(ours.body) == json.loads(sent.body)


def test_argsrepr_names_the_event_and_carries_no_personal_data(app: NotifierCelery) -> None:
    event = samples.booking_created()
    publish_many([event], app=app)

    [message] = _drain(app)

    argsrepr = message.headers["argsrepr"]
    assert event["event_id"] in argsrepr
    assert "booking.created" in argsrepr
    for person in (event["fan"], event["admin"]):
        for value in person.values():
            if value:
                assert value not in argsrepr
    assert message.headers["kwargsrepr"] == "{}"


def test_publish_is_publish_many_of_one(app: NotifierCelery) -> None:
    event = samples.user_registered()
    assert publish(event, app=app) == event["event_id"]
    [message] = _drain(app)
    assert _args(message) == [event]


@pytest.fixture
def chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the chunks handed to the pipelining step, in order."""
    sizes: list[int] = []
    real = client._pipeline

    def spy(app: Any, producer: Any, payloads: Any) -> None:
        sizes.append(len(payloads))
        real(app, producer, payloads)

    monkeypatch.setattr(client, "_pipeline", spy)
    return sizes


def test_events_go_out_in_chunks_of_batch_size_in_order(
    app: NotifierCelery, chunks: list[int]
) -> None:
    events = [samples.user_registered() for _ in range(5)]

    publish_many(events, app=app, batch_size=2)

    assert chunks == [2, 2, 1]
    assert [_args(message)[0]["event_id"] for message in _drain(app)] == [
        event["event_id"] for event in events
    ]


def test_batch_size_must_be_positive(app: NotifierCelery) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        publish_many([samples.user_registered()], app=app, batch_size=0)


class _FlakyPipeline:
    """Fails the first ``failures`` chunks with a broker error, then publishes for real."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, app: Any, producer: Any, payloads: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("Connection refused")
        self.real(app, producer, payloads)

    real = staticmethod(client._pipeline)


def test_a_chunk_the_broker_refused_is_sent_again(
    app: NotifierCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = _FlakyPipeline(failures=2)
    sleeps: list[float] = []
    monkeypatch.setattr(client, "_pipeline", flaky)
    monkeypatch.setattr("notifier.client.time.sleep", sleeps.append)
    event = samples.user_registered()

    assert publish_many([event], app=app) == [event["event_id"]]

    assert flaky.calls == 3
    # The app's task_publish_retry_policy, as kombu applies it: start, then a step more.
    policy = app.conf.task_publish_retry_policy
    first = min(policy["interval_start"], policy["interval_max"])
    second = min(policy["interval_start"] + policy["interval_step"], policy["interval_max"])
    assert sleeps == pytest.approx([first, second])
    assert [_args(message) for message in _drain(app)] == [[event]]


def test_publish_error_once_the_retry_policy_is_used_up(
    app: NotifierCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = _FlakyPipeline(failures=100)
    monkeypatch.setattr(client, "_pipeline", flaky)
    monkeypatch.setattr("notifier.client.time.sleep", lambda _: None)

    with pytest.raises(
        PublishError, match="may or may not have been published; publishing it again is safe"
    ):
        publish_many([samples.user_registered()], app=app)

    assert flaky.calls == 1 + app.conf.task_publish_retry_policy["max_retries"]


def test_no_retry_when_the_app_says_so(
    app: NotifierCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.task_publish_retry = False
    flaky = _FlakyPipeline(failures=1)
    monkeypatch.setattr(client, "_pipeline", flaky)

    with pytest.raises(PublishError):
        publish_many([samples.user_registered()], app=app)

    assert flaky.calls == 1


class _BrokenAfter:
    """A ``client._pipeline`` that publishes ``good`` chunks, then loses the connection for good."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.calls = 0

    def __call__(self, app: Any, producer: Any, payloads: Any) -> None:
        self.calls += 1
        if self.calls > self.good:
            raise OperationalError("Connection reset by peer")
        _FlakyPipeline.real(app, producer, payloads)


def test_a_connection_lost_part_way_names_the_published_the_uncertain_and_the_unsent(
    app: NotifierCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_pipeline", _BrokenAfter(good=1))
    monkeypatch.setattr("notifier.client.time.sleep", lambda _: None)
    events = [samples.user_registered() for _ in range(5)]
    ids = [event["event_id"] for event in events]

    with pytest.raises(PublishError) as failed:
        publish_many(events, app=app, batch_size=2)

    assert (failed.value.published, failed.value.uncertain, failed.value.not_published) == (
        ids[:2],
        ids[2:4],
        ids[4:],
    )
    assert (
        "events 0-1 were published; events 2-3 may or may not have been published; "
        "event 4 was not published"
    ) in str(failed.value)
