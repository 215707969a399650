"""Dead letters for the console's tests: real deliveries, so a replay really sends them."""

from __future__ import annotations

import uuid

from notifier.deadletter import DeadLetterStore, Status
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from tests import samples


def email() -> Delivery:
    """The welcome email of a new user_registered event (to ada@example.com)."""
    [delivery] = plan(parse_event(samples.user_registered(event_id=str(uuid.uuid4()))))
    return delivery


def sms() -> Delivery:
    """The fan's SMS of a new booking_created event."""
    event = parse_event(samples.booking_created(event_id=str(uuid.uuid4())))
    [delivery] = [d for d in plan(event) if d.channel == "sms"]
    return delivery


def seed(
    store: DeadLetterStore, emails: int = 0, texts: int = 0, status: Status = "failed"
) -> list[str]:
    """``emails`` failed emails, then ``texts`` failed SMS; their ids, in that order."""
    ids = []
    for number in range(emails):
        entry = store.add_delivery(
            email(), status=status, error=f"PermanentError: 550 mailbox {number}", history=[]
        )
        ids.append(entry.id)
    for _ in range(texts):
        entry = store.add_delivery(
            sms(), status=status, error="TransientError: Twilio 503", history=[]
        )
        ids.append(entry.id)
    return ids
