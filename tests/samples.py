"""Sample events of every type, as producers would publish them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

FAN = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+447911123456"}
ADMIN = {"name": "Grace Hopper", "email": "grace@example.com", "phone": None}


def _envelope(kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": str(uuid.uuid4()),
        # Now, so a reset link (valid one hour) has not expired when sent.
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "schema_version": 1,
    }


def user_registered(**fields: Any) -> dict[str, Any]:
    """A valid ``user.registered`` event; keyword arguments replace fields."""
    return {
        **_envelope("user.registered"),
        "user": dict(FAN),
        "verification_url": "https://app.example.com/verify?token=t1",
        **fields,
    }


def booking_created(**fields: Any) -> dict[str, Any]:
    """A valid ``booking.created`` event (fan has a phone, admin has none)."""
    return {
        **_envelope("booking.created"),
        "booking_id": "b-42",
        "fan": dict(FAN),
        "admin": dict(ADMIN),
        "event": {"title": "Jazz Night", "date": "2026-12-01"},
        "slot": {"start_time": "19:00", "end_time": "19:30"},
        "booking_url": "https://app.example.com/bookings/b-42",
        "admin_booking_url": "https://admin.example.com/bookings/b-42",
        **fields,
    }


def booking_cancelled(**fields: Any) -> dict[str, Any]:
    """A valid ``booking.cancelled`` event."""
    return {
        **_envelope("booking.cancelled"),
        "booking_id": "b-42",
        "fan": dict(FAN),
        "admin": dict(ADMIN),
        "event": {"title": "Jazz Night", "date": "2026-12-01"},
        "slot": {"start_time": "19:00", "end_time": "19:30"},
        "cancelled_by": "fan",
        "reason": None,
        **fields,
    }


def password_reset_requested(**fields: Any) -> dict[str, Any]:
    """A valid ``password.reset_requested`` event; expires one hour after it occurred."""
    return {
        **_envelope("password.reset_requested"),
        "user": dict(FAN),
        "reset_url": "https://app.example.com/reset?token=t2",
        **fields,
    }


ALL = {
    "user.registered": user_registered,
    "booking.created": booking_created,
    "booking.cancelled": booking_cancelled,
    "password.reset_requested": password_reset_requested,
}
