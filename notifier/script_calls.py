"""A Lua script call that can ride another write's round trip.

The status writes (``notifier.status_store``) must not cost the happy path a Redis round
trip (docs/status.md). On the ledger's claim and ``sent`` marker they ride as one
combined script (``Combiner``): one ``EVALSHA`` runs the ledger's script and then each
rider's, each in a Lua function of its own, a rider's error caught (``pcall``) and
returned as its reply. That costs the client one command instead of a pipeline of
several (a pipeline was most of the status writes' cost: 40-60 us of client CPU a
call, bench/README.md). Elsewhere calls are sent together in one pipeline as bare
``EVALSHA``s (``run_together``): redis-py's own ``Script`` in a pipeline first sends
``SCRIPT EXISTS`` on every ``execute``, a round trip of its own. On ``NOSCRIPT`` (a
restart or a failover emptied Redis's script cache) the call is run again on its own,
which loads the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError

__all__ = ["Combiner", "RiderError", "ScriptCall", "run_together", "settle"]


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


class RiderError(redis.ResponseError):
    """A rider's script failed inside a combined call (its message as Redis gave it)."""


# The frame of a combined script. ARGV[1] is the number of parts; ARGV[2 .. 1 + 2n]
# are each part's key and argument counts; then come the parts' own arguments. Each
# reply is wrapped in a one-element table: a part answering nil (false) would
# otherwise cut the array short.
_FRAME_HEAD = """
local n = tonumber(ARGV[1])
local ki, ai = 1, 2 + 2 * n
local replies = {}
"""
_PART = """
do
  local nk, na = tonumber(ARGV[2 * %(index)d]), tonumber(ARGV[2 * %(index)d + 1])
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[ki]; ki = ki + 1 end
  for j = 1, na do a[j] = ARGV[ai]; ai = ai + 1 end
  local part = function(KEYS, ARGV)
%(source)s
  end
  %(call)s
end
"""
_MAIN_CALL = "replies[%(index)d] = {part(k, a)}"
_RIDER_CALL = """local ok, reply = pcall(part, k, a)
  if ok then replies[%(index)d] = {reply}
  else replies[%(index)d] = {'rider-error', tostring(reply)} end"""


def _source(script: Script) -> str:
    text = script.script
    return bytes(text).decode() if not isinstance(text, str) else text


class Combiner:
    """Runs a call and its riders as one script (module docstring), for one client.

    The combined script of each set of scripts is made once and kept.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._scripts: dict[tuple[str, ...], Script] = {}

    def run(self, main: ScriptCall, riders: Sequence[ScriptCall]) -> tuple[Any, tuple[Any, ...]]:
        """``main``'s reply (its error raised) and each rider's (its error as a ``RiderError``)."""
        if not riders:
            return main.run(), ()
        calls = (main, *riders)
        script = self._combined(calls)
        counts: list[int] = []
        keys: list[str] = []
        args: list[str | int | float] = [len(calls)]
        for call in calls:
            counts += [len(call.keys), len(call.args)]
            keys += call.keys
        args += counts
        for call in calls:
            args += call.args
        replies = script(keys=keys, args=args)
        own = _unwrap(replies[0])
        return own, tuple(_rider_reply(reply) for reply in replies[1:])

    def _combined(self, calls: Sequence[ScriptCall]) -> Script:
        shas = tuple(call.script.sha for call in calls)
        script = self._scripts.get(shas)
        if script is None:
            parts = [
                _PART
                % {
                    "index": index,
                    "source": _source(call.script),
                    "call": (_MAIN_CALL if index == 1 else _RIDER_CALL) % {"index": index},
                }
                for index, call in enumerate(calls, start=1)
            ]
            source = _FRAME_HEAD + "".join(parts) + "return replies\n"
            script = self._scripts[shas] = self._redis.register_script(source)
        return script


def _unwrap(reply: Any) -> Any:
    return reply[0] if reply else None


def _rider_reply(reply: Any) -> Any:
    if isinstance(reply, list) and len(reply) == 2 and reply[0] in (b"rider-error", "rider-error"):
        message = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        return RiderError(message)
    return _unwrap(reply)
