"""The idempotency ledger: a delivery is sent at most once, whoever tries.

Per ``delivery_id`` one Redis key moves through two states:

- ``claim:<token>`` with a lease (``PX``): one worker is sending it now. A
  second worker sees the claim and backs off; a crashed worker's claim
  expires with its lease, so the delivery can be tried again.
- ``sent:<provider>:<provider id>`` with ``NOTIFIER_LEDGER_TTL``: the provider
  accepted the message. Every later attempt (republish, retry, replay) stops
  here. The marker expires because Redis runs with ``noeviction``: nothing
  we write may grow forever.

The only duplicate window left is a crash between the provider accepting a
message and ``mark_sent`` (docs/guarantees.md).

``claim``, ``mark_sent`` and ``release`` take ``riders``: other scripts' calls
(the delivery status, ``notifier.status_store``) sent in the same round trip, so that
recording what happened costs the happy path no round trip (docs/status.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from notifier import keys
from notifier.channels import Receipt
from notifier.redis_clients import reply_text
from notifier.script_calls import Combiner, ScriptCall

__all__ = ["Claim", "ClaimState", "Ledger", "SentMarker", "parse_sent"]

# NOTIFIER_CLAIM_LEASE's default: the task time limits end before it, and the
# settings check fits the slowest send inside them (notifier/budget.py).
DEFAULT_LEASE_SECONDS = 140

# GET and SET in one step: a plain SET NX cannot tell "claimed by someone
# else" from "already sent", and we must answer differently to each.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  return {current, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {false, 0}
"""

_MARK_SENT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


_FIELDS = "\x1f"
"""Between a marker's id and the time and attempt that follow it: no provider id holds it
(a Message-ID or a Twilio SID), so the part before it stays the provider and its id."""


@dataclass(frozen=True, slots=True)
class SentMarker:
    """A ``sent`` marker read back: who accepted the delivery, when, on which attempt.

    For email it is also the status record's ``sent`` (docs/status.md): writing the
    marker, which the send needs anyway, is all the status costs the happy path.
    """

    provider: str
    provider_id: str
    at: str = ""
    attempt: int = 0


def parse_sent(value: str | None) -> SentMarker | None:
    """The marker in a ledger value, or None for a claim, nothing, or another value."""
    if not value or not value.startswith("sent:"):
        return None
    head, *rest = value[len("sent:") :].split(_FIELDS)
    provider, _, provider_id = head.partition(":")
    at = rest[0] if rest else ""
    attempt = int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else 0
    return SentMarker(provider, provider_id, at, attempt)


class ClaimState(Enum):
    """What ``Ledger.claim`` found."""

    CLAIMED = "claimed"
    SENT = "sent"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: ours (with the token to release it), already sent, or busy."""

    state: ClaimState
    token: str = ""
    retry_after: float = 0.0
    riders: tuple[Any, ...] = ()
    """The replies of the calls that rode the claim (``notifier.script_calls.Combiner``)."""


class Ledger:
    """Claims and ``sent`` markers in Redis, keyed by delivery id."""

    def __init__(
        self, client: redis.Redis, *, ttl: int, lease: int = DEFAULT_LEASE_SECONDS
    ) -> None:
        self._redis = client
        self.ttl = ttl
        self.lease = lease
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._mark_sent = client.register_script(_MARK_SENT)
        self._combiner = Combiner(client)

    def claim(self, delivery_id: str, riders: Sequence[ScriptCall] = ()) -> Claim:
        """Try to take the delivery for sending (``riders`` in the same round trip)."""
        token = "claim:" + secrets.token_hex(8)
        call = ScriptCall(self._claim, (keys.ledger(delivery_id),), (token, self.lease * 1000))
        reply, replies = self._with_riders(call, riders)
        current, pttl = reply
        if current is None:
            return Claim(ClaimState.CLAIMED, token=token, riders=replies)
        if reply_text(current).startswith("sent:"):
            return Claim(ClaimState.SENT, riders=replies)
        return Claim(ClaimState.BUSY, retry_after=max(int(pttl), 0) / 1000, riders=replies)

    def mark_sent(
        self, delivery_id: str, receipt: Receipt, riders: Sequence[ScriptCall] = ()
    ) -> tuple[Any, ...]:
        """Record that the provider accepted it (unconditionally: it *was* sent).

        Returns the riders' replies; the marker's own failure raises.
        """
        value = f"sent:{receipt.provider}:{receipt.provider_id}"
        if not riders:
            self._redis.set(keys.ledger(delivery_id), value, ex=self.ttl)
            return ()
        call = ScriptCall(self._mark_sent, (keys.ledger(delivery_id),), (value, self.ttl))
        return self._with_riders(call, riders)[1]

    def record_sent(self, delivery_id: str, receipt: Receipt, *, at: str, attempt: int) -> bool:
        """``mark_sent`` carrying when and on which attempt; True if it was not sent before.

        One ``SET … GET``: the reply is the value it replaced, so the first ``sent`` of a
        delivery is told apart from a repeated one without another round trip.
        """
        value = f"sent:{receipt.provider}:{receipt.provider_id}{_FIELDS}{at}{_FIELDS}{attempt}"
        before = self._redis.set(keys.ledger(delivery_id), value, ex=self.ttl, get=True)
        return parse_sent(None if before is None else reply_text(before)) is None

    def release(
        self, delivery_id: str, claim: Claim, riders: Sequence[ScriptCall] = ()
    ) -> tuple[Any, ...]:
        """Give a claim back after a failed attempt, if it is still ours."""
        call = ScriptCall(self._release, (keys.ledger(delivery_id),), (claim.token,))
        return self._with_riders(call, riders)[1]

    def _with_riders(
        self, call: ScriptCall, riders: Sequence[ScriptCall]
    ) -> tuple[Any, tuple[Any, ...]]:
        """The ledger's own call (its error raised) and the riders' replies, one round trip."""
        own, replies = self._combiner.run(call, riders)
        return own, replies

    def state(self, delivery_id: str) -> str | None:
        """The raw ledger value (``sent:...``, ``claim:...``) or None: for operators and tests."""
        value = self._redis.get(keys.ledger(delivery_id))
        return None if value is None else reply_text(value)

    def is_sent(self, delivery_id: str) -> bool:
        """Whether a provider accepted this delivery (within the marker's TTL)."""
        value = self.state(delivery_id)
        return value is not None and value.startswith("sent:")
