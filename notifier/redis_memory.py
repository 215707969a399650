"""How full Redis is, as Redis itself judges it (``INFO memory``).

Redis runs with ``maxmemory-policy noeviction`` (docs/DESIGN.md §6): once
its memory is over ``maxmemory`` it refuses every command that could grow
it with ``OOM command not allowed``: new events, ledger records, dead
letters, retries. Workers then hold their messages and back off
(``notifier.transport``), producers get ``PublishError``; ``notifier
health`` and the metrics ``notifier_redis_memory_used_bytes`` /
``notifier_redis_oom`` say so (docs/DESIGN.md §10, "Redis full").

Redis's own test (``getMaxmemoryState``): used memory, less what it does not
count (AOF and replica buffers, ``mem_not_counted_for_evict``), over
``maxmemory``. A ``maxmemory`` of 0 means no limit: never full.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

__all__ = ["RedisMemory", "read_memory"]


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """Redis's memory figures (bytes) and policy."""

    used: int
    maximum: int
    """``maxmemory``; 0 = no limit."""
    not_counted: int
    policy: str

    @property
    def counted(self) -> int:
        """The used memory Redis compares with ``maxmemory``."""
        return max(self.used - self.not_counted, 0)

    @property
    def full(self) -> bool:
        """True when Redis refuses writes that would grow its memory (or evicts keys)."""
        return self.maximum > 0 and self.counted > self.maximum

    @property
    def ratio(self) -> float:
        """Counted used memory over ``maxmemory`` (0.0 without a limit)."""
        return self.counted / self.maximum if self.maximum else 0.0

    def describe(self) -> str:
        """One line for ``notifier health``: "full: …" when it is, the figures otherwise."""
        mib = 1024 * 1024
        if not self.maximum:
            return f"memory {self.used / mib:.1f} MiB (no maxmemory set)"
        figures = (
            f"{self.counted / mib:.1f} MiB used of maxmemory {self.maximum / mib:.1f} MiB, "
            f"{self.policy}"
        )
        if self.full:
            if self.policy == "noeviction":
                return f"full: {figures}: writes are refused (events, retries, records)"
            return f"full: {figures}: Redis is evicting keys (queued messages may be lost)"
        return f"memory {figures} ({self.ratio:.0%})"


def read_memory(client: redis.Redis) -> RedisMemory:
    """``INFO memory`` read into ``RedisMemory``; raises ``redis.RedisError`` like any call."""
    info = client.info("memory")
    return RedisMemory(
        used=int(info.get("used_memory", 0)),
        maximum=int(info.get("maxmemory", 0)),
        not_counted=int(info.get("mem_not_counted_for_evict", 0)),
        policy=str(info.get("maxmemory_policy", "unknown")),
    )
