"""publish_batch on real Redis, consumed by a real worker: the bulk path (docs/DESIGN.md §10)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from notifier import keys
from notifier.app import NotifierCelery, create_app
from notifier.client import publish_batch
from notifier.deadletter import DeadLetterStore
from notifier.events import parse_event
from notifier.planner import plan
from notifier.settings import Settings
from notifier.testing import SmtpSink
from notifier.testing.smtp_sink import ReceivedEmail
from tests import samples

pytestmark = pytest.mark.integration


def _raw_messages(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        stored = client.lrange(keys.EVENTS_QUEUE, 0, -1)
    finally:
        client.close()
    return [json.loads(item) for item in reversed(stored)]


def _message_id(mail: ReceivedEmail) -> str:
    return str(mail.message()["Message-ID"])


def _expected_ids(events: list[dict[str, Any]]) -> set[str]:
    return {
        f"<{delivery.delivery_id}@example.com>"
        for event in events
        for delivery in plan(parse_event(event))
        if delivery.channel == "email"
    }


def test_a_batch_is_one_handle_events_message_per_size_events(
    settings: Settings, redis_url: str
) -> None:
    producer = create_app(settings)
    events = [samples.user_registered() for _ in range(25)]

    ids = publish_batch(events, size=10, app=producer)

    messages = _raw_messages(redis_url)
    assert [message["headers"]["task"] for message in messages] == [keys.HANDLE_EVENTS_TASK] * 3
    # kombu stores the body base64-encoded: [args, kwargs, embed].
    arguments = [json.loads(base64.b64decode(message["body"]))[0] for message in messages]
    assert [len(args[0]) for args in arguments] == [10, 10, 5]
    assert [event["event_id"] for args in arguments for event in args[0]] == ids
    assert ids == [event["event_id"] for event in events]
    # No names or addresses in the headers that monitoring tools show.
    assert all("@" not in message["headers"]["argsrepr"] for message in messages)


def test_a_real_worker_sends_every_email_of_a_batch(
    app: NotifierCelery, smtp_sink: SmtpSink
) -> None:
    events = [samples.user_registered() for _ in range(30)]

    publish_batch(events, size=7, app=app)

    received = smtp_sink.wait_for(30, timeout=30)
    assert {_message_id(mail) for mail in received} == _expected_ids(events)


def test_a_batch_published_twice_sends_each_email_once(
    app: NotifierCelery, smtp_sink: SmtpSink
) -> None:
    events = [samples.user_registered() for _ in range(10)]
    publish_batch(events, size=10, app=app)
    smtp_sink.wait_for(10, timeout=30)

    publish_batch([*events, samples.user_registered()], size=10, app=app)

    # One worker takes the messages in order, the new event last: had any
    # email been sent twice, it would be among these 11.
    received = smtp_sink.wait_for(11, timeout=30)
    assert len({_message_id(mail) for mail in received}) == 11


def test_an_invalid_event_in_a_batch_on_the_queue_is_rejected_alone(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    good = samples.user_registered()
    bad = {**samples.user_registered(), "type": "user.exploded"}
    # A raw Celery client in another language is not validated by publish_batch.
    app.send_task(keys.HANDLE_EVENTS_TASK, args=[[bad, good]], queue=keys.EVENTS_QUEUE)

    (mail,) = smtp_sink.wait_for(1, timeout=30)
    assert mail.rcpt_tos == (good["user"]["email"],)
    (entry,) = list(dead_letters)
    assert entry.status == "rejected"
    assert entry.event_id == bad["event_id"]
