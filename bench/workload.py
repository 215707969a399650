"""The events the benchmark publishes: realistic, valid, and all different.

Every person gets their own name, address and phone number, as real sign-ups
do, so no cache anywhere (validation, ledger, rendering) sees a repeat the
real traffic would not have. Booking admins come from a small pool: a venue
has a few admins who receive every booking.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from notifier.events import parse_event
from notifier.planner import plan

__all__ = ["EMAIL_TEMPLATES", "emails_of", "make_events", "template_samples"]

EMAIL_TEMPLATES = (
    "registration_confirmation",
    "booking_confirmation_fan",
    "booking_notification_admin",
    "booking_cancellation",
    "booking_cancellation_admin",
    "password_reset",
)

_ADMINS = 20


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _person(kind: str, number: int, *, phone: bool) -> dict[str, Any]:
    return {
        "name": f"{kind.title()} Number{number}",
        "email": f"{kind}.{number}@example.com",
        # A real-format UK mobile range (+44 7911 ...); phonenumbers rejects drama ranges.
        "phone": f"+447911{number % 1_000_000:06d}" if phone else None,
    }


def _envelope(kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": str(uuid.uuid4()),
        "occurred_at": _now(),
        "schema_version": 1,
    }


def user_registered(number: int) -> dict[str, Any]:
    """A sign-up: one email (``registration_confirmation``)."""
    return {
        **_envelope("user.registered"),
        "user": _person("user", number, phone=True),
        "verification_url": f"https://app.example.com/verify?token=t{number}",
    }


def _booking(number: int) -> dict[str, Any]:
    return {
        "booking_id": f"b-{number}",
        "fan": _person("fan", number, phone=True),
        "admin": _person("admin", number % _ADMINS, phone=False),
        "event": {"title": f"Jazz Night {number % 7}", "date": "2026-12-01"},
        "slot": {"start_time": "19:00", "end_time": "19:30"},
    }


def booking_created(number: int) -> dict[str, Any]:
    """A booking: two emails (fan and admin), and an SMS to the fan (skipped: no Twilio)."""
    return {
        **_envelope("booking.created"),
        **_booking(number),
        "booking_url": f"https://app.example.com/bookings/b-{number}",
        "admin_booking_url": f"https://admin.example.com/bookings/b-{number}",
    }


def booking_cancelled(number: int) -> dict[str, Any]:
    """A cancellation: two emails."""
    return {**_envelope("booking.cancelled"), **_booking(number), "cancelled_by": "fan"}


def password_reset(number: int) -> dict[str, Any]:
    """A reset request: one email."""
    expires = datetime.now(UTC) + timedelta(hours=1)
    return {
        **_envelope("password.reset_requested"),
        "user": _person("user", number, phone=False),
        "reset_url": f"https://app.example.com/reset?token=r{number}",
        "expires_at": expires.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def make_events(count: int, booking_share: float, *, start: int = 0, seed: int = 8) -> list[Any]:
    """``count`` events: ``user.registered``, with ``booking_share`` of them ``booking.created``.

    The mix is shuffled with a fixed seed, so runs are comparable.
    """
    rng = random.Random(seed + start)
    events: list[Any] = []
    for offset in range(count):
        number = start + offset
        is_booking = rng.random() < booking_share
        events.append(booking_created(number) if is_booking else user_registered(number))
    return events


def emails_of(event: dict[str, Any]) -> Iterator[str]:
    """The delivery ids of the emails an event plans (the sink sees them in Message-IDs)."""
    for delivery in plan(parse_event(event)):
        if delivery.channel == "email":
            yield delivery.delivery_id


def template_samples() -> dict[str, dict[str, Any]]:
    """One event that plans each email template, keyed by template name."""
    samples: dict[str, dict[str, Any]] = {}
    for event in (user_registered(1), booking_created(2), booking_cancelled(3), password_reset(4)):
        for delivery in plan(parse_event(event)):
            if delivery.channel == "email":
                samples.setdefault(delivery.template, event)
    missing = set(EMAIL_TEMPLATES) - set(samples)
    if missing:  # pragma: no cover - the planner's table changed
        raise RuntimeError(f"no sample event plans {sorted(missing)}")
    return samples
