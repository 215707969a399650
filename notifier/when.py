"""Times an operator types: ISO 8601, or a duration ago ('30m', '2h', '1d').

Shared by ``notifier dlq``'s ``--since``/``--until`` and the console's filters, so
both read a time the same way.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["parse_when"]

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 ('2026-11-26T10:00Z', '2026-11-26') or a duration ago; ValueError otherwise.

    A time without a zone is UTC.
    """
    match = _DURATION.match(value.strip())
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither ISO 8601 nor a duration like 30m, 2h, 1d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
