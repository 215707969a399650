"""notifier: Celery workers that turn booking-platform events into emails and SMS.

The public surface for producers is here: ``publish``/``publish_many``, the
event models, the errors they raise, and ``status(event_id)`` (what became of an
event's deliveries). Everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from notifier.errors import (
    InvalidEventError,
    NotifierError,
    PermanentError,
    PublishError,
    TransientError,
)

if TYPE_CHECKING:
    from notifier.client import prepare, publish, publish_batch, publish_many
    from notifier.events import (
        BookingCancelled,
        BookingCreated,
        Event,
        EventInfo,
        PasswordResetRequested,
        Person,
        Slot,
        UserRegistered,
        event_json_schema,
        parse_event,
    )
    from notifier.status_lookup import status

# Imported on first use (PEP 562): the client pulls in Celery and kombu, and the
# events pydantic, which the ``notifier`` command mostly does not need; its
# start-up is part of every ``dlq`` command's time (issue 16).
_LAZY = {
    "prepare": "notifier.client",
    "publish": "notifier.client",
    "publish_batch": "notifier.client",
    "publish_many": "notifier.client",
    "BookingCancelled": "notifier.events",
    "BookingCreated": "notifier.events",
    "Event": "notifier.events",
    "EventInfo": "notifier.events",
    "PasswordResetRequested": "notifier.events",
    "Person": "notifier.events",
    "Slot": "notifier.events",
    "UserRegistered": "notifier.events",
    "event_json_schema": "notifier.events",
    "parse_event": "notifier.events",
    # The store is notifier/status_store.py, so that no submodule named
    # ``status`` ever replaces this function on the package (docs/DESIGN.md §9).
    "status": "notifier.status_lookup",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'notifier' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BookingCancelled",
    "BookingCreated",
    "Event",
    "EventInfo",
    "InvalidEventError",
    "NotifierError",
    "PasswordResetRequested",
    "PermanentError",
    "Person",
    "PublishError",
    "Slot",
    "TransientError",
    "UserRegistered",
    "event_json_schema",
    "parse_event",
    "prepare",
    "publish",
    "publish_batch",
    "publish_many",
    "status",
]

__version__ = "0.1.0"
