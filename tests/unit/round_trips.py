"""A Redis client that counts its round trips: for the cost rule of the status writes.

Passed in through ``Runtime.from_settings(client=...)``. One command sent on its own
is one round trip; a pipeline's ``execute`` is one, plus whatever it sends on its own
first (redis-py's ``SCRIPT EXISTS`` for scripts queued in a pipeline).
"""

from __future__ import annotations

from typing import Any

import fakeredis
from redis.client import Pipeline

__all__ = ["CountingRedis"]


class CountingPipeline(Pipeline):
    """A pipeline reporting each of its sends to the client that made it."""

    counter: CountingRedis

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.command_stack:
            self.counter.round_trips += 1
            self.counter.commands.append(
                "pipeline:" + ",".join(str(c[0][0]) for c in self.command_stack)
            )
        return super().execute(raise_on_error)

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        self.counter.round_trips += 1
        self.counter.commands.append(str(args[0]))
        return super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]


class CountingRedis(fakeredis.FakeRedis):
    """fakeredis, counting every command sent alone and every pipeline sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.round_trips = 0
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.round_trips += 1
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = CountingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.counter = self
        return pipe

    def restart(self) -> None:
        """Start counting again (after a warm-up that loaded the scripts)."""
        self.round_trips = 0
        self.commands = []
