"""How full Redis is, as Redis judges it (``INFO memory``): ``notifier.redis_memory``."""

from __future__ import annotations

from notifier.redis_memory import RedisMemory, read_memory
from tests.unit.full_redis import MIB, ReportingMemory


def memory(used: int, maximum: int, not_counted: int = 0) -> RedisMemory:
    return RedisMemory(used=used, maximum=maximum, not_counted=not_counted, policy="noeviction")


def test_redis_over_its_maxmemory_is_full() -> None:
    assert memory(used=101 * MIB, maximum=100 * MIB).full


def test_redis_at_or_under_its_maxmemory_is_not_full() -> None:
    assert not memory(used=100 * MIB, maximum=100 * MIB).full


def test_buffers_redis_does_not_count_do_not_make_it_full() -> None:
    # AOF and replica buffers are left out of Redis's own maxmemory test.
    assert not memory(used=101 * MIB, maximum=100 * MIB, not_counted=2 * MIB).full


def test_without_maxmemory_redis_is_never_full() -> None:
    assert not memory(used=10_000 * MIB, maximum=0).full


def test_a_full_redis_is_described_as_full_with_its_figures() -> None:
    text = memory(used=101 * MIB, maximum=100 * MIB).describe()

    assert text.startswith("full: 101.0 MiB used of maxmemory 100.0 MiB, noeviction")
    assert "writes are refused" in text


def test_info_memory_is_read_into_the_figures() -> None:
    client = ReportingMemory(used=5 * MIB, maximum=4 * MIB)

    read = read_memory(client)

    assert (read.used, read.maximum, read.policy) == (5 * MIB, 4 * MIB, "noeviction")
    assert read.full
