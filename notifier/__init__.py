"""notifier: Celery workers that turn booking-platform events into emails and SMS.

The public surface for producers is here: ``publish``/``publish_many``, the
event models, and the errors they raise. Everything else is internal.
"""

from __future__ import annotations

from notifier.client import prepare, publish, publish_many
from notifier.errors import (
    InvalidEventError,
    NotifierError,
    PermanentError,
    PublishError,
    TransientError,
)
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
    "publish_many",
]

__version__ = "0.1.0"
