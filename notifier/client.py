"""Publishing events from Python: validate first, then send, or send nothing.

Other languages publish the same message with any Celery client:
task ``notifier.handle_event``, queue ``notifier.events``, one positional
argument, the event as a JSON object (README.md, "Publishing events").

``publish_many`` is the bulk path (docs/DESIGN.md §8: plain ``send_task`` manages
about 2,300 messages/s, one Redis round trip each). It builds every message
with Celery's own ``create_task_message``/``send_task_message`` (protocol 2,
byte for byte what ``send_task`` would send, apart from the ids and a
redacted ``argsrepr``) and lets kombu's ``Producer.batch`` buffer the LPUSHes
in a Redis pipeline: one connection, one producer, one round trip per chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from celery import Celery
from celery.utils import uuid
from celery.utils.nodenames import anon_nodename
from kombu.exceptions import KombuError, OperationalError
from pydantic import BaseModel

from notifier import keys
from notifier.errors import InvalidEventError, PublishError
from notifier.events import parse_event
from notifier.keys import MAX_BATCH_EVENTS
from notifier.settings import Settings, get_settings
from notifier.transport import PublishRefused, RedisRefusingWrites

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_EVENTS",
    "EventLike",
    "prepare",
    "publish",
    "publish_batch",
    "publish_many",
]


DEFAULT_BATCH_SIZE = 500
"""Messages per Redis pipeline: ~0.5 MB per round trip for typical events.

Big enough that the round trip is noise next to building the messages, small
enough that a failed chunk is cheap to send again.
"""

# What a broken connection looks like from kombu and redis-py. A batch that
# failed may have been partly written: sending it again is safe (the worker's
# ledger makes a repeated event_id notify once).
_BROKER_ERRORS = (OperationalError, KombuError, redis.RedisError, OSError)

EventLike = Mapping[str, Any] | BaseModel | str | bytes


@lru_cache(maxsize=1)
def _default_app() -> Celery:
    from notifier.app import create_app

    return create_app(get_settings())


def prepare(event: EventLike, *, allow_special_domains: bool = False) -> dict[str, Any]:
    """Validate an event and return the JSON object to publish.

    The producer's own fields are sent as given (after validation), so a
    field this library does not know yet still reaches a newer worker.
    ``allow_special_domains`` is ``NOTIFIER_ALLOW_SPECIAL_DOMAINS`` (addresses under .test).
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
    parse_event(raw, allow_special_domains=allow_special_domains)
    assert isinstance(raw, dict)  # parse_event rejects anything else
    return raw


def publish(event: EventLike, *, app: Celery | None = None) -> str:
    """Validate and publish one event; return its ``event_id``.

    Raises ``InvalidEventError`` before anything is sent, and
    ``PublishError`` when the broker did not take the message.
    """
    return publish_many([event], app=app)[0]


def publish_many(
    events: Iterable[EventLike],
    *,
    app: Celery | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[str]:
    """Validate every event, then publish them all over one connection, pipelined.

    If any event is invalid nothing is published; the error names each bad
    event by its position (0-based). Messages go out in Redis pipelines of
    ``batch_size``; a chunk lost with the connection is sent again under the
    app's ``task_publish_retry_policy`` (a repeat is harmless: one event_id,
    one notification), then ``PublishError`` is raised. A chunk Redis
    answered but refused in part (full: ``OOM``) is not sent again: the
    ``PublishError`` names exactly which events were published and which
    not (also as its ``published``/``not_published``/``uncertain`` lists).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    payloads = _prepared(events, app)
    messages = [
        _Message(keys.HANDLE_EVENT_TASK, payload, _argsrepr(payload), 1) for payload in payloads
    ]
    return _send_all(app, payloads, messages, batch_size)


def publish_batch(
    events: Iterable[EventLike],
    *,
    size: int = MAX_BATCH_EVENTS,
    app: Celery | None = None,
) -> list[str]:
    """Validate every event, then publish them ``size`` to a message (the bulk path).

    Each message is one ``notifier.handle_events`` task on ``notifier.events``
    whose one argument is a JSON array of up to ``size`` (at most 100) events
    (docs/DESIGN.md §10). Workers handle each event as if it came alone:
    idempotency, acks and dead letters stay per event. Validation and
    ``PublishError`` behave as in ``publish_many``; a message's events are
    published (or not) together.
    """
    if not 1 <= size <= MAX_BATCH_EVENTS:
        raise ValueError(f"size must be between 1 and {MAX_BATCH_EVENTS}")
    payloads = _prepared(events, app)
    messages = [
        _Message(
            keys.HANDLE_EVENTS_TASK,
            payloads[start : start + size],
            _batch_argsrepr(payloads[start : start + size]),
            len(payloads[start : start + size]),
        )
        for start in range(0, len(payloads), size)
    ]
    # About DEFAULT_BATCH_SIZE events per Redis round trip, as publish_many.
    return _send_all(app, payloads, messages, max(1, DEFAULT_BATCH_SIZE // size))


@dataclass(frozen=True, slots=True)
class _Message:
    """One task message to publish: which task, its one argument, and how many events."""

    task: str
    argument: object
    argsrepr: str
    events: int


def _prepared(events: Iterable[EventLike], app: Celery | None) -> list[dict[str, Any]]:
    """Every event validated, or InvalidEventError naming each bad one by position."""
    payloads: list[dict[str, Any]] = []
    problems: list[str] = []
    # Judge addresses as the workers behind this app will (a staging setting).
    settings = getattr(app, "settings", None) if app is not None else get_settings()
    staging = isinstance(settings, Settings) and settings.notifier_allow_special_domains
    for index, event in enumerate(events):
        try:
            payloads.append(prepare(event, allow_special_domains=staging))
        except InvalidEventError as exc:
            problems.extend(f"event {index}: {message}" for message in exc.errors)
    if problems:
        raise InvalidEventError(problems)
    return payloads


def _send_all(
    app: Celery | None,
    payloads: Sequence[dict[str, Any]],
    messages: Sequence[_Message],
    per_pipeline: int,
) -> list[str]:
    """Publish the messages, ``per_pipeline`` to a Redis round trip; the events' ids."""
    if not payloads:
        return []
    app = app or _default_app()
    ids = [str(payload["event_id"]) for payload in payloads]
    done = 0  # events in chunks the broker took whole
    chunk: Sequence[_Message] = ()
    try:
        with app.producer_or_acquire() as producer:
            for start in range(0, len(messages), per_pipeline):
                chunk = messages[start : start + per_pipeline]
                _publish_chunk(app, producer, chunk)
                done += sum(message.events for message in chunk)
    except PublishRefused as exc:
        # Per message as Redis answered, per event as the producer counts them.
        accepted = [
            taken
            for message, taken in zip(chunk, exc.accepted, strict=False)
            for _ in range(message.events)
        ]
        raise _refused(ids, done, accepted, exc.first_error) from exc
    except _BROKER_ERRORS as exc:
        end = done + sum(message.events for message in chunk)
        raise _uncertain(ids, done, end, exc) from exc
    return ids


def _events(indexes: Sequence[int], verb: str = "") -> str:
    """``events 0-3, 7 were`` / ``event 4 was``: 0-based positions in the call, as runs."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    one = len(indexes) == 1
    noun = "event" if one else "events"
    if verb:
        return f"{noun} {text} {'was' if one else 'were'} {verb}"
    return f"{noun} {text}"


def _why(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(error):
        text += "; Redis is full (maxmemory reached)"
    return text


def _refused(
    ids: list[str], done: int, accepted_in_chunk: list[bool], first_error: BaseException
) -> PublishError:
    """Redis answered for every message of the failed chunk: say exactly which it took."""
    accepted = [True] * done + accepted_in_chunk
    accepted += [False] * (len(ids) - len(accepted))
    published = [i for i, taken in enumerate(accepted) if taken]
    refused = [i for i, taken in enumerate(accepted) if not taken]
    why = _why(first_error)
    if len(ids) == 1:
        message = f"Redis refused the event ({why}): it was not published"
    else:
        taken = _events(published, "published") if published else "none was published"
        message = (
            f"Redis refused {len(refused)} of {len(ids)} events ({why}): {taken}; "
            f"{_events(refused, 'not published')} (0-based positions). Publishing them "
            "again is safe (same event_id, one notification)"
        )
    return PublishError(
        message,
        published=[ids[i] for i in published],
        not_published=[ids[i] for i in refused],
    )


def _uncertain(ids: list[str], done: int, end: int, exc: BaseException) -> PublishError:
    """The connection failed: the chunk in flight may or may not have been taken."""
    why = _why(exc)
    if len(ids) == 1:
        message = (
            f"broker did not accept the event ({why}): it may or may not have been "
            "published; publishing it again is safe (same event_id, one notification)"
        )
    else:
        parts = [_events(range(0, done), "published")] if done else []
        parts.append(f"{_events(range(done, end))} may or may not have been published")
        if end < len(ids):
            parts.append(_events(range(end, len(ids)), "not published"))
        message = (
            f"broker did not accept the events ({why}): {'; '.join(parts)} (0-based "
            "positions). Publishing them again is safe (same event_id, one notification)"
        )
    return PublishError(
        message, published=ids[:done], uncertain=ids[done:end], not_published=ids[end:]
    )


def _argsrepr(payload: Mapping[str, Any]) -> str:
    # Celery copies repr(args) into every message header (monitoring, task
    # events, worker logs). Ours would carry names, addresses and phone
    # numbers, and saferepr costs more than the rest of the message; Celery's
    # documented ``argsrepr`` option replaces it with what is safe to show.
    return repr([{"type": payload.get("type"), "event_id": payload.get("event_id")}])


def _batch_argsrepr(payloads: Sequence[Mapping[str, Any]]) -> str:
    # As _argsrepr: no names or addresses in headers, and cheap.
    first = payloads[0].get("event_id") if payloads else None
    return repr([{"events": len(payloads), "first_event_id": first}])


def _publish_chunk(app: Celery, producer: Any, messages: Sequence[_Message]) -> None:
    """Send one chunk in one pipeline, again under the retry policy if the broker fails."""
    conf = app.conf
    policy = dict(conf.task_publish_retry_policy or {}) if conf.task_publish_retry else {}
    retries = int(policy.get("max_retries", 0) or 0)
    interval = float(policy.get("interval_start", 0.0) or 0.0)
    step = float(policy.get("interval_step", 0.0) or 0.0)
    interval_max = float(policy.get("interval_max", interval) or interval)
    for attempt in range(retries + 1):
        try:
            _pipeline(app, producer, messages)
            return
        except PublishRefused:
            # Redis answered: what it took is queued. Sending the chunk again
            # would queue those twice; a full Redis stays full for a while.
            raise
        except _BROKER_ERRORS:
            if attempt == retries:
                raise
            time.sleep(min(interval + attempt * step, interval_max))


def _pipeline(app: Celery, producer: Any, messages: Sequence[_Message]) -> None:
    amqp = app.amqp
    # Bound once: kombu's declaration check copies and binds an unbound Queue
    # on every publish, which was a third of the cost of building a message.
    queue = amqp.queues[keys.EVENTS_QUEUE].bind(producer.channel)
    # Mirror send_task: a publish from inside a task records it as the parent.
    parent = app.current_worker_task
    parent_id = parent.request.id if parent else None
    root_id = (parent.request.root_id or parent.request.id) if parent else None
    reply_to = app.thread_oid
    send_sent_event = app.conf.task_send_sent_event
    # The "origin" header create_task_message would compute for every message
    # (host name and pid: a system call each time), computed once per chunk.
    origin = anon_nodename()
    # Producer.batch (kombu >= 5.7) defers each LPUSH into one non-transactional
    # pipeline, flushed when the block ends; an error inside discards the rest.
    # Transports (or retry_on_timeout settings) that cannot batch safely fall
    # back to publishing each message at once: slower, still correct.
    # As kombu decides whether Producer.batch really batches (kombu/messaging.py).
    channel = producer.channel
    batched = hasattr(channel, "create_publish_batch") and bool(
        getattr(channel, "supports_batch_publish", True)
    )
    with producer.batch(max_size=len(messages) + 1):
        for index, outgoing in enumerate(messages):
            task_id = uuid()
            message = amqp.create_task_message(
                task_id,
                outgoing.task,
                [outgoing.argument],
                {},
                reply_to=reply_to,
                create_sent_event=send_sent_event,
                root_id=root_id or task_id,
                parent_id=parent_id,
                argsrepr=outgoing.argsrepr,
                kwargsrepr="{}",
                origin=origin,
                ignore_result=None,  # as send_task: the task's own setting decides
            )
            # The retry wrapper is ours (per chunk): inside a batch nothing
            # touches the network until the flush, so kombu's per-message
            # ensure() would retry nothing and cost a lot.
            try:
                amqp.send_task_message(producer, outgoing.task, message, queue=queue, retry=False)
            except (redis.ResponseError, RedisRefusingWrites) as exc:
                # Refused here: batched, nothing of this chunk was sent yet;
                # published one by one, the ones before it were taken.
                raise PublishRefused([not batched] * index + [False], exc) from exc
