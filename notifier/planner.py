"""Who gets what: an event becomes deliveries, one per recipient × channel.

This is the table of docs/DESIGN.md §2 as code. Planning is pure: the same event
always yields the same deliveries with the same ``delivery_id``s, which is
what makes republishing and replaying safe.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from notifier.errors import PermanentError
from notifier.events import (
    BookingCancelled,
    BookingCreated,
    Event,
    PasswordResetRequested,
    Person,
    UserRegistered,
)

__all__ = ["Channel", "Delivery", "Role", "delivery_id", "plan", "sms_fallback"]

Channel = Literal["email", "sms"]
Role = Literal["user", "fan", "admin"]

# Fixed forever: changing it changes every delivery_id and breaks idempotency
# for deliveries in flight.
_DELIVERY_NAMESPACE = uuid.UUID("4d0c7a8e-3b0f-5d8a-9b43-6f6e6f746966")


class Delivery(BaseModel):
    """One message to one recipient on one channel, self-contained.

    It carries the whole validated event (JSON form), so it can be rendered,
    retried or replayed long after the original task is gone.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    delivery_id: str
    event_id: str
    event_type: str
    channel: Channel
    template: str
    role: Role
    address: str
    event: dict[str, Any]
    not_after: str | None = None
    """RFC 3339 deadline: past it the message is useless and is not sent (a reset link)."""
    fallback_for: str | None = None
    """For an email standing in for a failed SMS: the SMS's delivery id."""

    @property
    def recipient(self) -> dict[str, Any]:
        """The person this delivery is for, as the event describes them."""
        person = self.event.get(self.role)
        if not isinstance(person, dict):
            # Only a job that skipped pipeline.parse_job gets here.
            raise PermanentError(f"delivery.role {self.role!r} is not a person in its event")
        return person


def delivery_id(event_id: str, channel: Channel, template: str, address: str) -> str:
    """The deterministic id of a delivery: same inputs, same id, on every machine."""
    key = "|".join((event_id.lower(), channel, template, address.strip().lower()))
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, key))


def plan(event: Event) -> list[Delivery]:
    """Every delivery the event calls for, SMS included (whether SMS is on is not ours to know)."""
    routes: list[tuple[Role, Person, Channel, str]]
    if isinstance(event, UserRegistered):
        routes = [("user", event.user, "email", "registration_confirmation")]
    elif isinstance(event, BookingCreated):
        routes = [
            ("fan", event.fan, "email", "booking_confirmation_fan"),
            ("admin", event.admin, "email", "booking_notification_admin"),
            ("fan", event.fan, "sms", "booking_confirmation_fan"),
            ("admin", event.admin, "sms", "booking_notification_admin"),
        ]
    elif isinstance(event, BookingCancelled):
        routes = [
            ("fan", event.fan, "email", "booking_cancellation"),
            ("admin", event.admin, "email", "booking_cancellation_admin"),
        ]
    elif isinstance(event, PasswordResetRequested):
        routes = [("user", event.user, "email", "password_reset")]
    else:  # pragma: no cover - the union is closed; mypy proves this is unreachable
        raise TypeError(f"no plan for {type(event).__name__}")

    payload = event.model_dump(mode="json")
    event_id = str(event.event_id)
    not_after = payload.get("expires_at") if isinstance(event, PasswordResetRequested) else None
    deliveries = []
    for role, person, channel, template in routes:
        address = person.email if channel == "email" else person.phone
        if address is None:
            continue  # SMS only to people who gave a phone number
        deliveries.append(
            Delivery(
                delivery_id=delivery_id(event_id, channel, template, address),
                event_id=event_id,
                event_type=event.type,
                channel=channel,
                template=template,
                role=role,
                address=address,
                event=payload,
                not_after=not_after,
            )
        )
    return deliveries


def sms_fallback(delivery: Delivery) -> Delivery | None:
    """The email that carries a failed SMS's text to the same person, if they have an address.

    It has its own delivery id (template ``sms-fallback:<template>``), so it is
    sent once however often the SMS fails, and never collides with the
    event's regular email to that person.
    """
    person = delivery.event.get(delivery.role)
    email = person.get("email") if isinstance(person, dict) else None
    if delivery.channel != "sms" or not isinstance(email, str) or not email:
        return None
    return delivery.model_copy(
        update={
            "delivery_id": delivery_id(
                delivery.event_id, "email", f"sms-fallback:{delivery.template}", email
            ),
            "channel": "email",
            "address": email,
            "fallback_for": delivery.delivery_id,
        }
    )
