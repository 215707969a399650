"""What the workers hold right now, read from kombu's ``unacked`` hash.

Celery's Redis transport hands an ETA message to a worker at once and the
worker keeps it until the time comes, so a retry waiting for its backoff
sits in kombu's ``unacked`` hash, not in the queue's list. ``notifier
stats`` shows these beside the queue lengths (``notifier.metrics.queues``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

__all__ = ["UNACKED_KEY", "Held", "HeldMessages", "held_messages"]

UNACKED_KEY = "unacked"
"""kombu's hash of messages delivered to a worker and not yet acked (its default name)."""


@dataclass
class Held:
    """Messages a worker has taken and not acked, for one queue."""

    total: int = 0
    scheduled: int = 0
    """Of those, waiting for a countdown (a retry's backoff)."""


@dataclass
class HeldMessages:
    """kombu's unacked hash, read: what the workers hold right now."""

    total: int = 0
    by_queue: dict[str, Held] = field(default_factory=dict)
    complete: bool = True
    """False when the hash was larger than the scan limit (``by_queue`` is partial)."""


def held_messages(
    client: redis.Redis, *, limit: int = 10_000, now: datetime | None = None
) -> HeldMessages:
    """Messages held by workers (running, or waiting for their countdown), by queue."""
    moment = now or datetime.now(UTC)
    result = HeldMessages(total=int(client.hlen(UNACKED_KEY)))
    for seen, (_, raw) in enumerate(client.hscan_iter(UNACKED_KEY, count=500)):
        if seen >= limit:
            result.complete = False
            break
        queue, eta = _describe_unacked(raw)
        held = result.by_queue.setdefault(queue, Held())
        held.total += 1
        if eta is not None and eta > moment:
            held.scheduled += 1
    return result


def _describe_unacked(raw: bytes | str) -> tuple[str, datetime | None]:
    """(routing key, ETA) of one entry of kombu's unacked hash: [message, exchange, key]."""
    try:
        message, _, routing_key = json.loads(raw)
        eta_text = (message.get("headers") or {}).get("eta")
        eta = datetime.fromisoformat(eta_text) if eta_text else None
        if eta is not None and eta.tzinfo is None:
            eta = eta.replace(tzinfo=UTC)
        return str(routing_key), eta
    except (ValueError, TypeError, AttributeError):
        return "unknown", None
