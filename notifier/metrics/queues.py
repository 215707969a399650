"""How many messages wait in each queue, not yet taken by a worker.

Read by the scrape (``notifier_queue_length``) and by ``notifier stats``.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from notifier import keys

__all__ = ["queue_lengths"]

# Celery's Redis transport keeps messages with a priority in sibling lists
# named queue + "\x06\x16" + step; count them too.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def _queue_lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]


def queue_lengths(client: redis.Redis, queues: Iterable[str] = keys.QUEUES) -> dict[str, int]:
    """Messages waiting in each queue, not yet taken by a worker."""
    names = list(queues)
    with client.pipeline(transaction=False) as pipe:
        for queue in names:
            for name in _queue_lists(queue):
                pipe.llen(name)
        lengths: list[int] = pipe.execute()
    per_queue = len(_PRIORITY_STEPS) + 1
    return {
        queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(names)
    }
