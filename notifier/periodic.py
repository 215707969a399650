"""Periodic work inside the workers: a thread on a timer, one host at a time by a lease.

docs/DESIGN.md §10: periodic work (retention, sweeps, outage probes) runs
inside the workers on a timer, and a Redis lock with a lease makes one host
do each job at a time; there is no separate beat process. The thread lives in
the worker's main process (not in the prefork children, which are forked and
replaced), and the lease frees the job for another host within ``lease``
seconds when its holder dies.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable

import redis

from notifier.logs import get_logger

__all__ = ["LeaseLock", "Periodic"]

# Take the lock, or extend it if it is already ours, in one step.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLock:
    """A Redis lock that one holder keeps by renewing it, and loses ``lease`` s after it stops."""

    def __init__(self, client: redis.Redis, key: str, lease: float) -> None:
        self.key = key
        self.lease = lease
        self._token = secrets.token_hex(8)
        self._take = client.register_script(_TAKE)
        self._give_back = client.register_script(_GIVE_BACK)

    def acquire(self) -> bool:
        """Take the lock, or renew it for another lease if we hold it; False if another does."""
        milliseconds = max(int(self.lease * 1000), 1)
        return bool(self._take(keys=[self.key], args=[self._token, milliseconds]))

    def release(self) -> None:
        """Give the lock back now, if we hold it (a graceful shutdown)."""
        self._give_back(keys=[self.key], args=[self._token])


class Periodic:
    """Calls ``job`` every ``interval`` seconds in a daemon thread until ``stop``.

    A failure of one of the ``expected`` kinds (Redis away, the broker
    refusing a publish) is logged and the next tick tries again: the job must
    outlive an outage of the very services it watches.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        job: Callable[[], object],
        expected: tuple[type[Exception], ...],
        on_stop: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self._job = job
        self._expected = expected
        self._on_stop = on_stop
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"notifier-{name}", daemon=True)

    def start(self) -> None:
        """Start ticking."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the tick in progress, if any; then ``on_stop`` (give back a lock)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._on_stop is not None:
            try:
                self._on_stop()
            except self._expected as exc:
                get_logger().warning(
                    f"{self.name}.stop_failed", error=f"{type(exc).__name__}: {exc}"
                )

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self._job()
            except self._expected as exc:
                get_logger().warning(
                    f"{self.name}.tick_failed", error=f"{type(exc).__name__}: {exc}"
                )
