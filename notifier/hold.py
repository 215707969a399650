"""The outage hold: emails wait in Redis while every SMTP provider is down.

Without it, an SMTP outage longer than the retry schedule burns each email
through its attempts into a dead letter that an operator must replay. While
every provider's circuit breaker is open (``channels.smtp.failover``), an
email that cannot be sent is written here instead, and its task acks: the
hold consumes no attempt and keeps nothing in a worker's memory. The outage
watch (``notifier.outage``) probes the providers and, once one answers,
releases the held jobs back onto ``notifier.email`` as ordinary
``notifier.deliver`` jobs, with the attempt they had.

Three keys (``notifier.keys``): ``hold:jobs`` (a hash, delivery id →
``<token>\\n<job JSON>``), ``hold:since`` (delivery id → when first held) and
``hold:deadlines`` (delivery id → its ``not_after``, for those that have one).

- Written before the task acks, in one transaction: a worker dying in
  between leaves its message to come back, and holding it again is harmless
  (one entry per delivery id; the ledger stops a second send).
- Every write gives the entry a fresh token, and an entry is removed only
  with the token it was read with. A job released and held again at once
  (the outage came back) is a new entry, which the releaser's removal of the
  old one leaves alone: nothing released can be lost in between.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from pydantic import ValidationError

from notifier import keys
from notifier.jobs import Job
from notifier.redis_clients import reply_text

__all__ = ["Held", "OutageHold"]

# KEYS: jobs hash, since zset, deadlines zset. ARGV: delivery id, token, ... pairs.
_REMOVE = """
local removed = 0
for i = 1, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local stored = redis.call('HGET', KEYS[1], id)
  if stored and string.sub(stored, 1, #token + 1) == token .. '\\n' then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    removed = removed + 1
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class Held:
    """One held entry as read: its job (None when the stored text is not one), and its token."""

    delivery_id: str
    token: str
    since: float
    """When it was first held (epoch seconds)."""
    job: Job | None
    raw: str
    """The stored job text, for a dead letter when it is not a job (``job`` is None)."""


class OutageHold:
    """Where emails wait while ``down()`` says every SMTP provider's circuit is open."""

    def __init__(self, client: redis.Redis, down: Callable[[], bool]) -> None:
        self._redis = client
        self._down = down
        self._remove = client.register_script(_REMOVE)

    def active(self) -> bool:
        """Whether an email that cannot be sent now is to be held (every circuit open)."""
        return self._down()

    def put(self, job: Job, now: datetime) -> Job:
        """Hold ``job``; the job as held (``held_since`` set to its first hold)."""
        since = job.held_since if job.held_since is not None else now
        since = min(since, now)  # a job cannot claim to be held from the future
        held = job.model_copy(update={"held_since": since.astimezone(UTC)})
        delivery = held.delivery
        value = secrets.token_hex(6) + "\n" + held.model_dump_json()
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.HOLD_JOBS, delivery.delivery_id, value)
            # NX: a duplicate message of a job already held keeps the earlier time.
            pipe.zadd(keys.HOLD_SINCE, {delivery.delivery_id: since.timestamp()}, nx=True)
            if delivery.not_after:
                deadline = datetime.fromisoformat(delivery.not_after).timestamp()
                pipe.zadd(keys.HOLD_DEADLINES, {delivery.delivery_id: deadline})
            pipe.execute()
        return held

    def count(self) -> int:
        """How many emails are held."""
        return int(self._redis.zcard(keys.HOLD_SINCE))

    def oldest(self, limit: int) -> list[Held]:
        """Up to ``limit`` entries, the longest held first."""
        return self._read(self._redis.zrange(keys.HOLD_SINCE, 0, limit - 1))

    def past_deadline(self, now: datetime, limit: int) -> list[Held]:
        """Up to ``limit`` entries whose deadline (``not_after``) is ``now`` or earlier."""
        ids = self._redis.zrangebyscore(
            keys.HOLD_DEADLINES, "-inf", now.timestamp(), start=0, num=limit
        )
        return self._read(ids)

    def held_before(self, moment: datetime, limit: int) -> list[Held]:
        """Up to ``limit`` entries first held at ``moment`` or earlier."""
        ids = self._redis.zrangebyscore(
            keys.HOLD_SINCE, "-inf", moment.timestamp(), start=0, num=limit
        )
        return self._read(ids)

    def remove(self, entries: Iterable[Held]) -> int:
        """Remove entries as they were read (not one held again since); how many went."""
        arguments: list[str] = []
        for entry in entries:
            arguments += [entry.delivery_id, entry.token]
        if not arguments:
            return 0
        keys_ = [keys.HOLD_JOBS, keys.HOLD_SINCE, keys.HOLD_DEADLINES]
        return int(self._remove(keys=keys_, args=arguments))

    def _read(self, members: Iterable[object]) -> list[Held]:
        ids = [reply_text(member) for member in members]
        if not ids:
            return []
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.HOLD_JOBS, ids)
            pipe.zmscore(keys.HOLD_SINCE, ids)
            stored, scores = pipe.execute()
        entries = []
        for delivery_id, value, score in zip(ids, stored, scores, strict=True):
            if value is None or score is None:
                continue  # removed meanwhile (released, or dead-lettered by another host)
            token, _, raw = reply_text(value).partition("\n")
            entries.append(Held(delivery_id, token, float(score), _job(raw), raw))
        return entries


def _job(raw: str) -> Job | None:
    try:
        return Job.model_validate_json(raw)
    except ValidationError:
        return None
