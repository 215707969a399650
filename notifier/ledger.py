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
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import Enum

import redis

from notifier import keys
from notifier.channels import Receipt
from notifier.redis_clients import reply_text

__all__ = ["Claim", "ClaimState", "Ledger"]

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

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


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

    def claim(self, delivery_id: str) -> Claim:
        """Try to take the delivery for sending."""
        token = "claim:" + secrets.token_hex(8)
        current, pttl = self._claim(
            keys=[keys.ledger(delivery_id)], args=[token, self.lease * 1000]
        )
        if current is None:
            return Claim(ClaimState.CLAIMED, token=token)
        if reply_text(current).startswith("sent:"):
            return Claim(ClaimState.SENT)
        return Claim(ClaimState.BUSY, retry_after=max(int(pttl), 0) / 1000)

    def mark_sent(self, delivery_id: str, receipt: Receipt) -> None:
        """Record that the provider accepted it (unconditionally: it *was* sent)."""
        value = f"sent:{receipt.provider}:{receipt.provider_id}"
        self._redis.set(keys.ledger(delivery_id), value, ex=self.ttl)

    def release(self, delivery_id: str, claim: Claim) -> None:
        """Give a claim back after a failed attempt, if it is still ours."""
        self._release(keys=[keys.ledger(delivery_id)], args=[claim.token])

    def state(self, delivery_id: str) -> str | None:
        """The raw ledger value (``sent:...``, ``claim:...``) or None: for operators and tests."""
        value = self._redis.get(keys.ledger(delivery_id))
        return None if value is None else reply_text(value)

    def is_sent(self, delivery_id: str) -> bool:
        """Whether a provider accepted this delivery (within the marker's TTL)."""
        value = self.state(delivery_id)
        return value is not None and value.startswith("sent:")
