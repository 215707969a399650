"""The two kinds of Redis client notifier makes, and how their replies read.

``redis_client`` is for work: it retries through a Redis restart of a few
seconds, so that deliveries in flight survive it. ``quick_redis`` is for
probes (``notifier health``, the metrics scrape): it tries once with short
timeouts, so a probe reports Redis down within its timeout instead of
hanging. Both are decisions about a Redis client, not about the code that
uses them, so they live together here.
"""

from __future__ import annotations

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry

from notifier.settings import Settings

__all__ = ["quick_redis", "redis_client", "reply_text"]


def quick_redis(url: str, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: one try, short timeouts (scrapes and health checks).

    redis-py retries a refused connection three times with backoff (seconds);
    a scrape or a healthcheck should report Redis down instead of hanging.
    """
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def redis_client(settings: Settings) -> redis.Redis:
    """The worker's Redis client: timeouts, and retries that ride out a Redis restart.

    A hung Redis must fail a call, not freeze a worker; a restart (AOF reload,
    failover) of a second or two must not fail the deliveries in flight, which
    would turn into duplicates or dead letters. Six tries with jittered backoff
    capped at 2 s cover about ten seconds. ``notifier health`` uses its own
    fail-fast client.
    """
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(EqualJitterBackoff(cap=2.0, base=0.2), 6),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def reply_text(value: bytes | str | object) -> str:
    """A Redis reply as text (clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)
