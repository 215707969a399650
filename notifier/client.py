"""Publishing events from Python: validate first, then send, or send nothing.

Other languages publish the same message with any Celery client:
task ``notifier.handle_event``, queue ``notifier.events``, one positional
argument, the event as a JSON object (README, "Publishing events").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import BaseModel

from notifier import keys
from notifier.errors import InvalidEventError, PublishError
from notifier.events import parse_event
from notifier.settings import get_settings

__all__ = ["EventLike", "prepare", "publish", "publish_many"]

HANDLE_EVENT = "notifier.handle_event"

EventLike = Mapping[str, Any] | BaseModel | str | bytes


@lru_cache(maxsize=1)
def _default_app() -> Celery:
    from notifier.app import create_app

    return create_app(get_settings())


def prepare(event: EventLike) -> dict[str, Any]:
    """Validate an event and return the JSON object to publish.

    The producer's own fields are sent as given (after validation), so a
    field this library does not know yet still reaches a newer worker.
    """
    if isinstance(event, BaseModel):
        raw: object = event.model_dump(mode="json")
    elif isinstance(event, (str, bytes)):
        try:
            raw = json.loads(event)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEventError([f"event is not valid JSON: {exc}"]) from None
    else:
        raw = dict(event)
    parse_event(raw)
    assert isinstance(raw, dict)  # parse_event rejects anything else
    return raw


def publish(event: EventLike, *, app: Celery | None = None) -> str:
    """Validate and publish one event; return its ``event_id``.

    Raises ``InvalidEventError`` before anything is sent, and
    ``PublishError`` when the broker did not take the message.
    """
    return publish_many([event], app=app)[0]


def publish_many(events: Iterable[EventLike], *, app: Celery | None = None) -> list[str]:
    """Validate every event, then publish them all over one connection.

    If any event is invalid nothing is published; the error names each bad
    event by its position (0-based).
    """
    payloads: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, event in enumerate(events):
        try:
            payloads.append(prepare(event))
        except InvalidEventError as exc:
            problems.extend(f"event {index}: {message}" for message in exc.errors)
    if problems:
        raise InvalidEventError(problems)
    app = app or _default_app()
    try:
        with app.producer_or_acquire() as producer:
            for payload in payloads:
                app.send_task(
                    HANDLE_EVENT, args=[payload], queue=keys.EVENTS_QUEUE, producer=producer
                )
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise PublishError(
            f"broker did not accept the events ({type(exc).__name__}: {exc}); some may have "
            "been published already, and publishing them again is safe (same event_id, "
            "one notification)"
        ) from exc
    return [str(payload["event_id"]) for payload in payloads]
