"""The bulk path: ``notifier.handle_events``, up to 100 events in one Celery message.

Celery spends about 1 ms of CPU per task message on this machine (bench/README.md),
as much as notifier spends on the email itself. A producer with many events at once
(``notifier.publish_batch``) pays it once per ``MAX_BATCH_EVENTS`` events instead.

Per-event semantics stay as ``notifier.handle_event`` has them (docs/DESIGN.md §10):

- each event is validated, planned and sent exactly as if it had come alone; an
  invalid one is rejected on its own (a dead letter of its own), the rest go on;
- a failure of one event (a ``NotifierError`` escaping it) is recorded as that
  event's dead letter, and the others are still sent;
- anything else (Redis gone, a time limit) fails the whole message, which is then
  recorded per event or requeued (``pipeline.task_failed``); a redelivered batch
  sends only what the ledger has not seen, because every delivery is claimed.

The events of one batch share one task's time limits: ``started`` is the task's
start, so once its time for sends runs low the remaining emails go to
``notifier.email`` as first attempts (``notifier.budget``), never cut mid-send.
"""

from __future__ import annotations

from notifier import keys, pipeline
from notifier.errors import NotifierError
from notifier.events import json_type
from notifier.logs import get_logger
from notifier.pipeline import Outcome
from notifier.runtime import Runtime

__all__ = ["MAX_BATCH_EVENTS", "handle_events"]

MAX_BATCH_EVENTS = keys.MAX_BATCH_EVENTS


def handle_events(raw: object, rt: Runtime, *, started: float | None = None) -> list[Outcome]:
    """Handle each event of a batch as ``pipeline.handle_event`` would, one after another.

    A batch that is not a JSON array of at most ``MAX_BATCH_EVENTS`` items is
    rejected whole, with the reason: nothing in it is sent.
    """
    started = rt.monotonic() if started is None else started
    if not isinstance(raw, list):
        pipeline.reject(
            raw,
            [f"{keys.HANDLE_EVENTS_TASK} takes a JSON array of events, got {json_type(raw)}"],
            rt,
        )
        return []
    if len(raw) > MAX_BATCH_EVENTS:
        pipeline.reject(
            raw,
            [
                f"{keys.HANDLE_EVENTS_TASK} takes at most {MAX_BATCH_EVENTS} events "
                f"in one message, got {len(raw)}"
            ],
            rt,
        )
        return []
    outcomes: list[Outcome] = []
    for position, item in enumerate(raw):
        try:
            outcomes.extend(pipeline.handle_event(item, rt, started=started))
        except NotifierError as exc:
            # This event's own failure (its SMS could not be queued, say): kept
            # as its dead letter, as a lone handle_event's would be. The events
            # before it are done and the ones after it still get their turn.
            get_logger().warning(
                "batch.event_failed", position=position, error=f"{type(exc).__name__}: {exc}"
            )
            pipeline.task_failed(keys.HANDLE_EVENT_TASK, (item,), {}, exc, rt)
    return outcomes
