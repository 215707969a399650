"""publish_many on real Redis: pipelined, Celery's wire format, consumed by a real worker.

The prefork worker started with the documented command line consumes them
too: tests/integration/test_bench_smoke.py runs the benchmark end to end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
import redis.client

from notifier import keys
from notifier.app import NotifierCelery, create_app
from notifier.client import publish_many
from notifier.events import parse_event
from notifier.planner import plan
from notifier.settings import Settings
from notifier.testing import SmtpSink
from tests import samples

pytestmark = pytest.mark.integration


@pytest.fixture
def producer_app(settings: Settings) -> NotifierCelery:
    """An app that only publishes (no worker consumes): messages stay on Redis to inspect."""
    return create_app(settings)


def _raw_messages(redis_url: str) -> list[dict[str, Any]]:
    """The messages on notifier.events as stored by kombu, oldest first (LPUSH, BRPOP)."""
    client = redis.Redis.from_url(redis_url)
    try:
        stored = client.lrange(keys.EVENTS_QUEUE, 0, -1)
    finally:
        client.close()
    return [json.loads(item) for item in reversed(stored)]


def test_every_chunk_is_one_pipeline_round_trip(
    producer_app: NotifierCelery, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushes_per_round_trip: list[int] = []
    execute = redis.client.Pipeline.execute

    def counting_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        pushes = sum(1 for command, _ in self.command_stack if command[0] == "LPUSH")
        if pushes:
            pushes_per_round_trip.append(pushes)
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting_execute)
    events = [samples.user_registered() for _ in range(25)]

    publish_many(events, app=producer_app, batch_size=10)

    assert pushes_per_round_trip == [10, 10, 5]
    on_redis = [message["headers"]["id"] for message in _raw_messages(redis_url)]
    assert len(on_redis) == len(set(on_redis)) == 25


def test_the_stored_message_is_what_send_task_stores(
    producer_app: NotifierCelery, redis_url: str
) -> None:
    event = samples.booking_created()
    producer_app.send_task(keys.HANDLE_EVENT_TASK, args=[event], queue=keys.EVENTS_QUEUE)
    publish_many([event], app=producer_app)

    sent, ours = _raw_messages(redis_url)

    # Ids are random per message; argsrepr is redacted on purpose (client.py).
    for message in (sent, ours):
        for name in ("id", "root_id", "argsrepr"):
            message["headers"].pop(name)
        for name in ("correlation_id", "delivery_tag"):
            message["properties"].pop(name)
    assert ours == sent


def test_a_real_worker_consumes_pipelined_messages(
    app: NotifierCelery, smtp_sink: SmtpSink
) -> None:
    events = [samples.user_registered() for _ in range(12)]
    expected = {
        f"<{delivery.delivery_id}@example.com>"
        for event in events
        for delivery in plan(parse_event(event))
        if delivery.channel == "email"
    }

    publish_many(events, app=app, batch_size=5)

    received = smtp_sink.wait_for(len(expected), timeout=30)
    assert {mail.message()["Message-ID"] for mail in received} == expected
