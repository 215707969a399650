"""A Lua script call that can ride another write's round trip.

The status writes (``notifier.status_store``) must not cost the happy path a Redis round
trip (docs/status.md): they go in the same pipeline as the ledger's claim and
``sent`` marker. redis-py's own ``Script`` in a pipeline first sends ``SCRIPT
EXISTS`` on every ``execute`` (a round trip of its own), so a ``ScriptCall`` is
queued as a bare ``EVALSHA``; if Redis answers ``NOSCRIPT`` (a restart or a
failover emptied its script cache) that one call is run again on its own, which
loads the script. Nothing else in the pipeline is repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError

__all__ = ["ScriptCall", "run_together", "settle"]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One call of a registered script: the script, its keys and its arguments."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[str | int | float, ...]

    def queue(self, pipe: Pipeline) -> None:
        """Add the call to a pipeline as a bare ``EVALSHA`` (no ``SCRIPT EXISTS`` first)."""
        pipe.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)

    def run(self) -> Any:
        """Run the call on its own (one round trip; the script is loaded if needed)."""
        return self.script(keys=list(self.keys), args=list(self.args))


def settle(call: ScriptCall, reply: Any) -> Any:
    """The reply of a call that rode a pipeline: run again alone on ``NOSCRIPT``.

    Any other error comes back as the exception object, not raised: a rider must
    not turn the write it rode into a failure (the caller decides what to do).
    """
    if isinstance(reply, NoScriptError):
        try:
            return call.run()
        except redis.RedisError as exc:
            return exc
    return reply


def run_together(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Several calls in one round trip; each reply as ``settle`` gives it."""
    if not calls:
        return []
    if len(calls) == 1:
        try:
            return [calls[0].run()]
        except redis.ResponseError as exc:
            return [exc]
    with client.pipeline(transaction=False) as pipe:
        for call in calls:
            call.queue(pipe)
        replies = pipe.execute(raise_on_error=False)
    return [settle(call, reply) for call, reply in zip(calls, replies, strict=True)]
