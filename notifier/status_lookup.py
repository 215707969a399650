"""``notifier.status(event_id)``: the trace of one event, for code (docs/DESIGN.md §9).

Settings are read and the Redis client (``notifier.redis_clients``, Sentinel URLs
included) made once per process, on the first call.
"""

from __future__ import annotations

from functools import lru_cache

from notifier.status_store import EventStatus, StatusStore

__all__ = ["status"]


@lru_cache(maxsize=1)
def _store() -> StatusStore:
    from notifier.redis_clients import redis_client
    from notifier.settings import get_settings

    settings = get_settings()
    return StatusStore(redis_client(settings), ttl=settings.notifier_status_ttl)


def status(event_id: str) -> EventStatus | None:
    """The event's status and its deliveries' (``EventStatus``), or None for an unknown id."""
    return _store().event(event_id)
