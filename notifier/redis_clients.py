"""The two kinds of Redis client notifier makes, and how their replies read.

``redis_client`` is for work: it retries through a Redis restart of a few
seconds, so that deliveries in flight survive it. ``quick_redis`` is for
probes (``notifier health``, the metrics scrape): it tries once with short
timeouts, so a probe reports Redis down within its timeout instead of
hanging. Both are decisions about a Redis client, not about the code that
uses them, so they live together here.

Both understand ``REDIS_URL=sentinel://…`` (notifier/sentinel_url.py): the
client then asks the Sentinels for the master named
``NOTIFIER_REDIS_MASTER_NAME`` and asks again whenever a connection to it
breaks, so after a failover the next try reaches the new master. A master
that was demoted to a replica answers writes with ``READONLY``; redis-py's
Sentinel connection turns that into a ``ConnectionError`` (and drops the
connection), and a ``redis://`` client retries ``ReadOnlyError`` like a
broken connection, so the same retries carry a call over to the new master
(docs/DESIGN.md §9). The future web process uses these factories too.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from notifier.sentinel_url import DEFAULT_MASTER_NAME, SentinelUrl, is_sentinel_url
from notifier.settings import Settings

__all__ = [
    "MasterConnection",
    "SentinelMaster",
    "connect",
    "quick_redis",
    "redis_client",
    "reply_text",
]

# What a call is retried on: a broken or slow connection, and a server that
# stopped being the master (READONLY) since the connection was opened.
RETRIED_ERRORS: list[type[Exception]] = [
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
]


class MasterConnection(SentinelManagedConnection):
    """A connection to the master that asks the Sentinels where it is on every reconnect.

    redis-py 8.1 reconnects a dropped connection inside ``send_packed_command``
    through ``connect_check_health``, to the address it had, instead of
    through ``connect``, which asks the Sentinels: a retried call went back
    to the dead or demoted master until the retries ran out. Measured with
    tests/reliability/test_sentinel_failover.py.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class SentinelMaster(redis.Redis):
    """The master behind Sentinels; ``close()`` also closes the connections to the Sentinels."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if isinstance(manager, Sentinel):
            manager.close()


def connect(url: str, master_name: str = DEFAULT_MASTER_NAME, **options: Any) -> redis.Redis:
    """A client of the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://`` or ``sentinel://``).

    ``options`` are redis-py connection options (timeouts, retry). For
    Sentinels, the Sentinels themselves are asked with the same socket
    timeouts, split between them, so that finding the master takes no
    longer than one connection timeout even when some do not answer.
    """
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    where = SentinelUrl.parse(url)
    count = len(where.sentinels)
    sentinel_options: dict[str, Any] = {
        name: options[name] / count
        for name in ("socket_timeout", "socket_connect_timeout")
        if options.get(name) is not None
    }
    sentinel_options.update(where.sentinel_kwargs())
    # One try per Sentinel: Sentinel.discover_master already moves on to the next.
    sentinel_options["retry"] = Retry(NoBackoff(), 0)
    manager = Sentinel(list(where.sentinels), sentinel_kwargs=sentinel_options)
    credentials: dict[str, Any] = {"db": where.db}
    if where.username:
        credentials["username"] = where.username
    if where.password:
        credentials["password"] = where.password.get_secret_value()
    master: SentinelMaster = manager.master_for(
        master_name,
        redis_class=SentinelMaster,
        connection_class=MasterConnection,
        **credentials,
        **options,
    )
    return master


def quick_redis(
    url: str, timeout: float = 2.0, *, master_name: str = DEFAULT_MASTER_NAME
) -> redis.Redis:
    """A client that fails fast: one try, short timeouts (scrapes and health checks).

    redis-py retries a refused connection three times with backoff (seconds);
    a scrape or a healthcheck should report Redis down instead of hanging.
    ``master_name`` is ``NOTIFIER_REDIS_MASTER_NAME`` (``sentinel://`` URLs only).
    """
    return connect(
        url,
        master_name,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def redis_client(settings: Settings) -> redis.Redis:
    """The worker's Redis client: timeouts, and retries that ride out a Redis restart.

    A hung Redis must fail a call, not freeze a worker; a restart (AOF reload,
    failover) of a second or two must not fail the deliveries in flight, which
    would turn into duplicates or dead letters. Six tries with jittered backoff
    capped at 2 s cover about ten seconds: a Sentinel failover must finish
    within them (``down-after-milliseconds`` plus the election, docs/DESIGN.md §9).
    ``notifier health`` uses its own fail-fast client.
    """
    return connect(
        settings.redis_url,
        settings.notifier_redis_master_name,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(EqualJitterBackoff(cap=2.0, base=0.2), 6),
        retry_on_error=RETRIED_ERRORS,
    )


def reply_text(value: bytes | str | object) -> str:
    """A Redis reply as text (clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)
