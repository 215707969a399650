"""The one way notifier writes a moment as text: ISO 8601, UTC, milliseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso_utc"]


def iso_utc(moment: datetime) -> str:
    """``2026-12-01T10:00:02.120Z`` for any aware ``moment``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
