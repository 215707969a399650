"""The fail-fast Redis client of probes: ``notifier health`` and the metrics scrape.

Why a module of its own: a probe must report Redis down within its timeout,
so this client tries once with short timeouts. That is a decision about a
Redis client, not about metrics or health, and both of those use it.

The worker's own client, ``notifier.runtime.redis_client``, makes the
opposite trade: it retries through a Redis restart of a few seconds, so that
deliveries in flight survive it. Work uses that one; a question about
whether Redis answers right now uses this one.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["quick_redis"]


def quick_redis(url: str, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: one try, short timeouts (scrapes and health checks).

    redis-py retries a refused connection three times with backoff (seconds);
    a scrape or a healthcheck should report Redis down instead of hanging.
    """
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
