"""A fakeredis client that answers ``INFO memory`` (fakeredis has no INFO) with given figures."""

from __future__ import annotations

from typing import Any

import fakeredis

MIB = 1024 * 1024


class ReportingMemory(fakeredis.FakeRedis):
    """fakeredis, reporting ``used`` bytes of ``maximum`` (``maxmemory``) under noeviction."""

    def __init__(self, *, used: int, maximum: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.figures = {
            "used_memory": used,
            "maxmemory": maximum,
            "mem_not_counted_for_evict": 0,
            "maxmemory_policy": "noeviction",
        }

    def info(self, section: str | None = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert section == "memory", section
        return dict(self.figures)
