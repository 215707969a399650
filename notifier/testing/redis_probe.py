"""Whether a Redis server answers, asked once and quickly."""

from __future__ import annotations

import redis.exceptions

from notifier.redis_clients import quick_redis
from notifier.sentinel_url import DEFAULT_MASTER_NAME

__all__ = ["redis_reachable"]


def redis_reachable(
    url: str, timeout: float = 0.5, *, master_name: str = DEFAULT_MASTER_NAME
) -> bool:
    """Whether a Redis server answers PING at ``url`` within ``timeout`` seconds.

    A ``sentinel://`` URL answers when the Sentinels name a master
    ``master_name`` and it answers. Connection refusals, timeouts and socket
    errors give ``False``; anything else (a malformed URL, say) is raised.
    """
    client = quick_redis(url, timeout, master_name=master_name)
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        client.close()
