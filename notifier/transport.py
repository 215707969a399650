"""kombu's Redis transport with a fetch that never holds a message outside Redis.

Stock kombu takes a message with ``BRPOP``, which removes it from the queue,
and only afterwards records it in its ``unacked`` hash from the consumer. A
consumer that dies, or a connection that drops, between those two steps takes
the message with it: kombu#305, celery#7950 (docs/guarantees.md, "Loss
windows"). Here the two steps are one: a Lua script pops the oldest message of
the first non-empty queue *and* records it in ``unacked``/``unacked_index`` in
the same atomic call, in exactly kombu's format, so kombu's own visibility
sweep, acks, rejects and warm-shutdown restores work unchanged.

A script cannot block, so an idle consumer waits with
``BLMOVE q q RIGHT RIGHT timeout``: a move of the queue's oldest message onto
itself, which changes nothing and removes nothing, but returns as soon as the
queue has one. Then the script runs again. Only one queue can be waited on
this way; it is the consumer's first queue (``-Q`` order). Messages on the
others are seen within ``IDLE_WAIT_OTHERS`` (0.2 s) by an idle consumer, at the
cost of ten small commands a second per idle worker. A busy consumer never
waits: the script serves every queue.

Malformed entries (not JSON, not a kombu envelope, a body that cannot be
decoded) used to stop the worker inside kombu. They are moved, atomically
too, to the list ``notifier:transport:rejected``, and handed to the
``rejected_handler`` transport option (the worker's dead-letter store) by
whichever consumer takes them; entries stay in the list until the handler
has recorded them.

Selected with Celery's ``broker_transport`` (``celeryconfig.build``):
``Transport`` for ``redis://`` and ``SentinelTransport`` for ``sentinel://``.
Written against kombu 5.7 (pinned in pyproject.toml): it overrides
``Channel._brpop_start``, ``_brpop_read`` and ``_get``, and ``QoS.append``.
"""

from __future__ import annotations

import binascii
import logging
import time
from collections.abc import Callable
from queue import Empty
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.json import loads

from notifier import keys
from notifier.errors import PermanentError
from notifier.redis_clients import reply_text

__all__ = [
    "FETCH_SCRIPT",
    "MalformedMessage",
    "RejectedEntry",
    "RejectedHandler",
    "SentinelTransport",
    "Transport",
    "drain_rejected",
]

logger = logging.getLogger(__name__)

# KEYS: unacked hash, unacked index, rejected list, rejected id counter, then
# the queue keys in the order to try. ARGV: now, then each queue key's queue
# name (restores of an envelope without delivery_info go back there).
# Returns {'taken', key, raw, tag} for a message recorded in unacked,
# {'rejected', key, raw, reason} for one moved to the rejected list, or false
# when every queue is empty.
FETCH_SCRIPT = """
for i = 5, #KEYS do
  local raw = redis.call('RPOP', KEYS[i])
  if raw then
    local reason, tag
    local ex, rk = '', ARGV[i - 3]
    local ok, msg = pcall(cjson.decode, raw)
    if not ok then
      -- cjson is stricter than Python's json (a lone surrogate escape in a
      -- header): take the tag from the text if it names exactly one.
      local at = string.find(raw, '"delivery_tag"', 1, true)
      if at and not string.find(raw, '"delivery_tag"', at + 1, true) then
        tag = string.match(raw, '^"delivery_tag"%s*:%s*"([^"\\\\]+)"', at)
      end
      if not tag then reason = 'not JSON' end
    elseif type(msg) ~= 'table' then
      reason = 'not a JSON object'
    elseif type(msg['properties']) ~= 'table' then
      reason = 'no properties object'
    elseif type(msg['properties']['delivery_tag']) ~= 'string'
        or msg['properties']['delivery_tag'] == '' then
      reason = 'no properties.delivery_tag'
    else
      local props = msg['properties']
      local info = props['delivery_info']
      tag = props['delivery_tag']
      if type(info) == 'table' and type(info['exchange']) == 'string'
          and type(info['routing_key']) == 'string' then
        ex, rk = info['exchange'], info['routing_key']
      end
    end
    if tag then
      redis.call('HSET', KEYS[1], tag,
        '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
      redis.call('ZADD', KEYS[2], ARGV[1], tag)
      return {'taken', KEYS[i], raw, tag}
    end
    local id = tostring(redis.call('INCR', KEYS[4]))
    redis.call('LPUSH', KEYS[3], id .. '\\n' .. ARGV[i - 3] .. '\\n' .. reason .. '\\n' .. raw)
    return {'rejected', KEYS[i], raw, reason}
  end
end
return false
"""

IDLE_WAIT_OTHERS = 0.2
"""Seconds an idle consumer waits on its first queue when it has others to look at."""

# A key nobody writes: BLPOP on it is a server-side pause that keeps the
# event loop's bookkeeping (one command in flight) intact.
_PAUSE_KEY = f"{keys.PREFIX}transport:pause"
_PAUSE_SECONDS = 1

# Errors kombu's virtual Message raises on an envelope it cannot read.
_ENVELOPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, binascii.Error)


class MalformedMessage(PermanentError):
    """A queue entry that is not a readable kombu message."""


class CheckedMessage(virtual.Message):
    """kombu's Message, raising MalformedMessage for an envelope it cannot read."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
            # Every Celery message has one; Celery's strategy crashes without.
            raise MalformedMessage("no body")
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except _ENVELOPE_ERRORS as exc:
            raise MalformedMessage(f"{type(exc).__name__}: {exc}") from exc


class RejectedEntry(NamedTuple):
    """One malformed queue entry waiting in ``notifier:transport:rejected``."""

    entry_id: str
    queue: str
    reason: str
    raw: bytes

    @classmethod
    def parse(cls, stored: bytes) -> RejectedEntry:
        """Split ``id\\nqueue\\nreason\\nraw`` as the fetch script writes it."""
        entry_id, queue, reason, raw = stored.split(b"\n", 3)
        return cls(entry_id.decode(), queue.decode(), reason.decode(), raw)

    def encode(self) -> bytes:
        """The stored form, as the fetch script writes it."""
        head = f"{self.entry_id}\n{self.queue}\n{self.reason}\n".encode()
        return head + self.raw


RejectedHandler = Callable[[RejectedEntry], None]
"""Records one rejected entry durably (the worker: its dead-letter store)."""


def drain_rejected(client: Any, handler: RejectedHandler, limit: int = 100) -> int:
    """Hand the oldest rejected entries to ``handler``; remove each once it is recorded.

    A lock with a lease lets one consumer drain at a time. An entry is removed
    only after ``handler`` returned, so a consumer that dies in between leaves
    it to the next drain: it may be recorded twice, never lost. Returns how
    many entries were handled.
    """
    # Nearly always empty: one read, and no write a full Redis would refuse.
    if not client.llen(keys.TRANSPORT_REJECTED):
        return 0
    if not client.set(keys.TRANSPORT_REJECTED_LOCK, b"1", nx=True, ex=30):
        return 0
    handled = 0
    try:
        for stored in reversed(client.lrange(keys.TRANSPORT_REJECTED, -limit, -1)):
            handler(RejectedEntry.parse(stored))
            client.lrem(keys.TRANSPORT_REJECTED, -1, stored)
            handled += 1
    finally:
        client.delete(keys.TRANSPORT_REJECTED_LOCK)
    return handled


class ReliableQoS(kombu_redis.QoS):
    """kombu's ack emulation, minus the write the fetch script already made."""

    def append(self, message: Any, delivery_tag: str) -> None:
        # The fetch script recorded it in unacked atomically with the pop.
        virtual.QoS.append(self, message, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's sweep of timed-out messages, plus a drain of rejected entries."""
        super().restore_visible(start=start, num=num, interval=interval)
        if isinstance(self.channel, ReliableFetch):
            try:
                self.channel.drain_rejected()
            except redis.ResponseError as exc:
                # A full or read-only Redis: the entries wait for the next tick.
                # kombu's sweep loop lets only connection errors through.
                logger.warning("rejected entries not drained (%s); trying again later", exc)


class ReliableFetch:
    """The fetch of ``Channel`` and ``SentinelChannel`` (see the module docstring)."""

    QoS = ReliableQoS
    Message = CheckedMessage

    # Attributes of kombu's redis Channel that this mixin reads.
    client: Any
    connection: Any
    connection_errors: tuple[type[BaseException], ...]
    active_queues: list[str]
    priority_steps: list[int]
    brpop_timeout: float
    sep: str
    unacked_key: str
    unacked_index_key: str
    _in_poll: Any
    _brpop_sent_at: float | None
    _queue_cycle: Any

    _waiting = False
    _paused = False

    if TYPE_CHECKING:  # kombu's, by the channel classes below

        def conn_or_acquire(self, client: Any = None) -> Any: ...

        def _q_for_pri(self, queue: str, pri: int) -> str: ...

    # -- kombu's hooks -----------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        if self._paused:
            self._waiting = True
            connection.send_command("BLPOP", _PAUSE_KEY, _PAUSE_SECONDS)
        else:
            self._waiting = False
            connection.send_command("EVAL", *self._fetch_args(queues))

    def _brpop_read(self, **options: Any) -> bool:
        connection = self.client.connection
        command = "BLPOP" if self._waiting else "EVAL"
        keep_polling = False
        try:
            try:
                reply = self.client.parse_response(connection, command, **options)
            except self.connection_errors:
                connection.disconnect()
                raise
            except redis.ResponseError as exc:
                # A full (OOM) or read-only Redis refuses the script; it
                # removed nothing. Pause rather than spin on the refusal.
                logger.warning("fetch refused by Redis (%s); pausing %d s", exc, _PAUSE_SECONDS)
                self._paused = True
                raise Empty() from exc
            self._paused = False
            if self._waiting:
                # The wait ended: a message arrived, or the timeout passed.
                raise Empty()
            if not reply:
                self._wait(connection)
                keep_polling = True
                raise Empty()
            self._dispatch(reply)
            return True
        finally:
            if not keep_polling:
                self._in_poll = None
                self._waiting = False

    def _get(self, queue: str) -> Any:
        with self.conn_or_acquire() as client:
            reply = client.execute_command("EVAL", *self._fetch_args([queue]))
        if not reply:
            raise Empty()
        if reply[0] == b"rejected":
            self.drain_rejected()
            raise Empty()
        try:
            return loads(reply[2])
        except ValueError as exc:
            self._move_to_rejected(queue, reply_text(reply[3]), reply[2], f"not JSON: {exc}")
            raise Empty() from exc

    # -- ours ---------------------------------------------------------------

    def _fetch_args(self, queues: list[str]) -> list[Any]:
        queue_keys = [
            self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues
        ]
        names = [queue for _ in self.priority_steps for queue in queues]
        fixed = [
            self.unacked_key,
            self.unacked_index_key,
            keys.TRANSPORT_REJECTED,
            keys.TRANSPORT_REJECTED_SEQ,
        ]
        numkeys = len(fixed) + len(queue_keys)
        return [FETCH_SCRIPT, numkeys, *fixed, *queue_keys, time.time(), *names]

    def _wait(self, connection: Any) -> None:
        first = self.active_queues[0]
        self._waiting = True
        self._brpop_sent_at = time.monotonic()
        # Alone, the first queue can wait as long as kombu's BRPOP would;
        # with others beside it, short waits bound how late they are seen.
        wait = self.brpop_timeout if len(self.active_queues) == 1 else IDLE_WAIT_OTHERS
        connection.send_command("BLMOVE", first, first, "RIGHT", "RIGHT", wait)

    def _dispatch(self, reply: list[bytes]) -> None:
        status, key, raw, detail = (reply[0], reply_text(reply[1]), reply[2], reply_text(reply[3]))
        queue = key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        if status == b"rejected":
            logger.warning("rejected a malformed entry on %s: %s", queue, detail)
            self.drain_rejected()
            return
        try:
            payload = loads(raw)
        except ValueError as exc:
            self._move_to_rejected(queue, detail, raw, f"not JSON: {exc}")
            return
        try:
            self.connection._deliver(payload, queue)
        except MalformedMessage as exc:
            self._move_to_rejected(queue, detail, raw, f"unreadable envelope: {exc}")

    def _move_to_rejected(self, queue: str, tag: str, raw: bytes, reason: str) -> None:
        entry = RejectedEntry(f"tag-{tag}", queue, reason, raw)
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.lpush(keys.TRANSPORT_REJECTED, entry.encode())
            pipe.zrem(self.unacked_index_key, tag)
            pipe.hdel(self.unacked_key, tag)
            pipe.execute()
        logger.warning("rejected a malformed entry on %s: %s", queue, entry.reason)
        self.drain_rejected()

    def drain_rejected(self) -> None:
        """Record rejected entries with the ``rejected_handler`` transport option, if any."""
        handler = self.connection.client.transport_options.get("rejected_handler")
        if handler is None:
            return
        with self.conn_or_acquire() as client:
            drain_rejected(client, handler)


class Channel(ReliableFetch, kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel with the reliable fetch."""


class SentinelChannel(ReliableFetch, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """kombu's Sentinel channel with the reliable fetch."""

    def _get_pool(self, asynchronous: bool = False) -> Any:
        # When the master dies, Celery's collect() closes the channel, which is
        # cut short by the connection error, then detaches the transport; the
        # second close then asks for a new pool with no connection info left
        # and kombu raised AttributeError, which stopped the worker. A
        # connection error instead lets Celery reconnect (through the
        # Sentinels); what the channel held stays in unacked, and the
        # visibility sweep hands it out again (docs/guarantees.md).
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed")
        return super()._get_pool(asynchronous)  # type: ignore[misc]


class Transport(kombu_redis.Transport):
    """``redis://`` with the reliable fetch."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """``sentinel://`` with the reliable fetch."""

    Channel = SentinelChannel
