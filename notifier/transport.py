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

A Redis that refuses writes (full: ``OOM`` under ``maxmemory-policy
noeviction``; or read-only) used to stop the worker too: kombu raised the
refusal out of an ack, a requeue, the visibility sweep's mutex, a queue
declaration or the shutdown restore. Here a refused ack or requeue is kept
and tried again (the message stays in ``unacked`` meanwhile), the consumer
stops taking messages and asks again after 1, 2, 4, then every 5 seconds,
and a refused declaration at start-up is a connection error Celery recovers
from. Publishing batches report which messages Redis took
(``PublishRefused``), so a producer can say exactly what was published.

Selected with Celery's ``broker_transport`` (``celeryconfig.build``):
``Transport`` for ``redis://`` and ``SentinelTransport`` for ``sentinel://``.
Written against kombu 5.7 (pinned in pyproject.toml): it overrides
``Channel._brpop_start``, ``_brpop_read``, ``_get``, ``_size``,
``_queue_bind`` and ``create_publish_batch``, ``PublishBatch.flush``, and
``QoS.append``, ``ack``, ``reject``, ``restore_unacked`` and
``restore_visible``.
"""

from __future__ import annotations

import binascii
import logging
import time
from collections.abc import Callable
from queue import Empty
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
from kombu import exceptions as kombu_exceptions
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.json import loads

from notifier import keys
from notifier.errors import PermanentError
from notifier.redis_clients import reply_text

__all__ = [
    "FETCH_SCRIPT",
    "MalformedMessage",
    "PublishRefused",
    "RedisRefusingWrites",
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
# A Redis refusing writes is asked again after 1 s, then 2, 4, at most 5 s:
# a few commands a second per worker, and work resumes within 5 s of memory
# being freed (docs/guarantees.md).
PAUSE_MIN_SECONDS = 1.0
PAUSE_MAX_SECONDS = 5.0
# Written (and expiring at once) to learn whether Redis accepts writes again
# when no refused ack or requeue is waiting to serve as the probe.
_PROBE_KEY = f"{keys.PREFIX}transport:probe"
# Queue bindings refused in a row in this process (a consumer starting on a
# full Redis): each refusal waits longer before Celery starts it again.
_bind_refusals = 0

# Errors kombu's virtual Message raises on an envelope it cannot read.
_ENVELOPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, binascii.Error)


class RedisRefusingWrites(redis.ConnectionError):
    """Redis refused a declaration's write (full: ``OOM``; or read-only).

    A connection error on purpose: Celery's consumer recovers from those (it
    reconnects and starts again, backing off) and stops the worker for
    anything else. A worker started while Redis is full thus waits for room
    instead of exiting (and crash-looping under a restart policy).
    """


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


# kombu 5.7's, newer than the kombu-stubs package.
BatchPublishError: type[Exception] = kombu_exceptions.BatchPublishError  # type: ignore[attr-defined]


class PublishRefused(BatchPublishError):  # type: ignore[valid-type,misc]
    """Redis answered every command of a publish batch, and refused some (full: ``OOM``).

    Unlike a lost connection this outcome is certain, command by command:
    ``accepted[i]`` tells whether the batch's i-th command (one ``LPUSH`` per
    message on notifier's queues) was carried out.
    """

    def __init__(self, accepted: list[bool], first_error: redis.RedisError) -> None:
        refused = accepted.count(False)
        super().__init__(
            f"Redis refused {refused} of {len(accepted)} publish commands: {first_error}"
        )
        self.accepted = accepted
        self.first_error = first_error


class ReportingPublishBatch(kombu_redis.PublishBatch):  # type: ignore[name-defined,misc]
    """kombu's publish batch, telling which commands Redis refused (``PublishRefused``).

    kombu's own flush raises the first error of the pipeline and drops the
    other replies, so a producer could only say "some may have been
    published". Redis answers each command of a pipeline on its own: read
    them all, and a refusal says exactly which messages were taken.
    """

    _buffered: int  # kombu's: commands waiting in the pipeline
    _failed: BaseException | None
    pipeline: Any

    def flush(self) -> None:
        """Execute the pending commands once; ``PublishRefused`` if Redis refused any."""
        self._check_usable()
        if not self._buffered:
            return
        try:
            replies = self.pipeline.execute(raise_on_error=False)
        except BaseException as exc:
            self._failed = exc
            self._buffered = 0
            self.pipeline.reset()
            if isinstance(exc, Exception):
                raise BatchPublishError(
                    "Redis publish batch failed; delivery is uncertain"
                ) from exc
            raise
        self._buffered = 0
        errors = [reply for reply in replies if isinstance(reply, redis.ResponseError)]
        if errors:
            refused = PublishRefused(
                [not isinstance(reply, redis.ResponseError) for reply in replies], errors[0]
            )
            self._failed = refused
            raise refused


class ReliableQoS(kombu_redis.QoS):
    """kombu's ack emulation, minus the write the fetch script already made.

    And riding out a Redis that refuses writes (full: ``OOM`` under
    ``noeviction``; or read-only). kombu raises the refusal out of an ack,
    a requeue, the sweep's mutex or the shutdown restore, and Celery stops
    the worker for good ("Unrecoverable error"). Here each refused ack or
    requeue is kept in ``pending`` (the message itself stays in kombu's
    ``unacked`` hash, untouched: the refused transaction changed nothing),
    the channel backs off fetching, and ``retry_pending`` tries them again
    from the fetch's pause. A message is never lost this way: at worst it is
    redelivered by the visibility sweep, and the ledger stops a repeat.
    """

    _delivered: Any  # kombu's OrderedDict of tags delivered and not acked

    if TYPE_CHECKING:  # kombu's

        def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, bool] = {}
        """Tags whose ack (False) or requeue (True) Redis refused, to try again."""

    def append(self, message: Any, delivery_tag: str) -> None:
        # The fetch script recorded it in unacked atomically with the pop.
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        """kombu's ack; refused, it is kept for ``retry_pending``."""
        try:
            super().ack(delivery_tag)
        except redis.ResponseError as exc:
            self._keep(delivery_tag, False, exc)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """kombu's reject (or requeue); refused, it is kept for ``retry_pending``."""
        try:
            super().reject(delivery_tag, requeue=requeue)
        except redis.ResponseError as exc:
            self._keep(delivery_tag, requeue, exc)

    def _keep(self, delivery_tag: str, requeue: bool, exc: redis.ResponseError) -> None:
        self.pending[delivery_tag] = requeue
        # Celery is done with it: free its prefetch slot (the fetch is paused anyway).
        virtual.QoS.ack(self, delivery_tag)
        _refused_by(self.channel, exc, "ack" if not requeue else "requeue")

    def retry_pending(self) -> None:
        """Try the refused acks and requeues again; raises ``ResponseError`` while refused."""
        for tag, requeue in list(self.pending.items()):
            if requeue:
                self.restore_by_tag(tag, leftmost=True)
            else:
                self._remove_from_indices(tag).execute()
            del self.pending[tag]

    def restore_unacked(self, client: Any = None) -> None:
        """The warm-shutdown restore; what Redis refuses stays in unacked for the sweep."""
        acks = [tag for tag, requeue in self.pending.items() if not requeue]
        for tag in (tag for tag, requeue in self.pending.items() if requeue):
            self._delivered[tag] = None
        self.pending.clear()
        try:
            for tag in acks:
                self._remove_from_indices(tag).execute()
            super().restore_unacked(client)
        except redis.ResponseError as exc:
            left = len(self._delivered)
            self._delivered.clear()
            logger.warning(
                "Redis refused the shutdown restore (%s): %d message(s) stay in unacked and "
                "come back after the visibility timeout",
                exc,
                left,
            )

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's sweep of timed-out messages, plus a drain of rejected entries."""
        try:
            super().restore_visible(start=start, num=num, interval=interval)
        except redis.ResponseError as exc:
            # The sweep's mutex is a SET a full Redis refuses; the timed-out
            # messages wait in unacked for the next sweep.
            _refused_by(self.channel, exc, "visibility sweep")
            return
        if isinstance(self.channel, ReliableFetch):
            self.channel.drain_rejected()


def _refused_by(channel: Any, exc: redis.ResponseError, what: str) -> None:
    if isinstance(channel, ReliableFetch):
        channel.back_off(exc, what)
    else:
        logger.warning("Redis refused the %s (%s)", what, exc)


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
    keyprefix_queue: str
    keyprefix_binding_permanent: str
    unacked_key: str
    unacked_index_key: str
    _in_poll: Any
    _brpop_sent_at: float | None
    _queue_cycle: Any

    _waiting = False
    _pausing = False
    _paused = False
    _pause_seconds = 0.0

    if TYPE_CHECKING:  # kombu's, by the channel classes below
        qos: ReliableQoS

        def conn_or_acquire(self, client: Any = None) -> Any: ...

        def _q_for_pri(self, queue: str, pri: int) -> str: ...

        def typeof(self, exchange: str) -> Any: ...

    # -- kombu's hooks -----------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        if self._paused:
            self._waiting = self._pausing = True
            connection.send_command("BLPOP", _PAUSE_KEY, self._pause_seconds)
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
                # A read-only Redis refuses the script; it removed nothing.
                # Pause rather than spin on the refusal.
                self.back_off(exc, "fetch")
                raise Empty() from exc
            if self._pausing:
                self._resume_if_writable()
                raise Empty()
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
                self._waiting = self._pausing = False

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

    def _size(self, queue: str) -> int:
        # kombu counts in a MULTI, and a full Redis refuses every command of
        # a MULTI, reads included: a queue declaration then failed on a full
        # Redis before its publish could be refused, or not, for itself.
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for pri in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, pri))
            return sum(size for size in pipe.execute() if isinstance(size, int))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        global _bind_refusals
        if self._bound_already(exchange, routing_key, pattern, queue):
            # kombu's SADD would change nothing, but a full Redis refuses it
            # all the same: a producer or a restarted worker would fail on it.
            return
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[misc]
        except redis.ResponseError as exc:
            # Celery restarts a consumer at once after a connection error (a
            # second's rest after five): wait here first, longer each time,
            # or a worker started on a full Redis sends it ~70 commands a second.
            _bind_refusals += 1
            wait = min(PAUSE_MIN_SECONDS * 2 ** (_bind_refusals - 1), PAUSE_MAX_SECONDS)
            logger.warning(
                "Redis refused to bind queue %r (%s); waiting %g s, then starting again",
                queue,
                exc,
                wait,
            )
            time.sleep(wait)
            raise RedisRefusingWrites(f"binding {queue!r} refused by Redis: {exc}") from exc
        _bind_refusals = 0

    def _bound_already(self, exchange: str, routing_key: str, pattern: str, queue: str) -> bool:
        """Whether kombu's binding sets already hold this (plain, non-expiring) binding."""
        if queue in getattr(self, "_expires", {}) or self.typeof(exchange).type == "fanout":
            return False  # kombu does more than an SADD for these
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            pipe.sismember(self.keyprefix_queue % (exchange,), member)
            pipe.sismember(self.keyprefix_binding_permanent % (exchange,), member)
            return all(pipe.execute())

    def create_publish_batch(self, max_size: int) -> ReportingPublishBatch:
        """kombu's producer-scoped batch, reporting refused commands one by one."""
        return ReportingPublishBatch(self, max_size)

    # -- ours ---------------------------------------------------------------

    def back_off(self, exc: redis.ResponseError, what: str) -> None:
        """Redis refused a write (``what``): stop fetching, and ask again after a longer pause.

        A full Redis (``OOM``, ``noeviction``) still runs the fetch script (it
        pops before it writes), so fetching on would take message after
        message only to have each one's requeue refused. Paused, the worker
        sends a few commands a second until Redis takes writes again.
        """
        if not self._paused:
            logger.warning(
                "Redis refused the %s (%s): not taking messages; asking again every %g-%g s",
                what,
                exc,
                PAUSE_MIN_SECONDS,
                PAUSE_MAX_SECONDS,
            )
        self._paused = True
        self._pause_seconds = min(
            max(self._pause_seconds * 2, PAUSE_MIN_SECONDS), PAUSE_MAX_SECONDS
        )

    def _resume_if_writable(self) -> None:
        """After a pause: the refused acks and requeues again, else a probe write."""
        try:
            if self.qos.pending:
                self.qos.retry_pending()
            else:
                with self.conn_or_acquire() as client:
                    client.set(_PROBE_KEY, b"1", px=1)
        except redis.ResponseError as exc:
            self.back_off(exc, "retry")
            return
        logger.warning("Redis takes writes again: taking messages")
        self._paused = False
        self._pause_seconds = 0.0

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
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=True)  # all or nothing
                pipe.lpush(keys.TRANSPORT_REJECTED, entry.encode())
                pipe.zrem(self.unacked_index_key, tag)
                pipe.hdel(self.unacked_key, tag)
                pipe.execute()
        except redis.ResponseError as exc:
            # Refused whole: the entry stays in unacked and comes back with
            # the visibility sweep, to be rejected then.
            self.back_off(exc, "move of a malformed entry")
            return
        logger.warning("rejected a malformed entry on %s: %s", queue, entry.reason)
        self.drain_rejected()

    def drain_rejected(self) -> None:
        """Record rejected entries with the ``rejected_handler`` transport option, if any."""
        handler = self.connection.client.transport_options.get("rejected_handler")
        if handler is None:
            return
        try:
            with self.conn_or_acquire() as client:
                drain_rejected(client, handler)
        except redis.ResponseError as exc:
            # A full or read-only Redis: the entries wait in their list.
            logger.warning("rejected entries not drained (%s); trying again later", exc)


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
