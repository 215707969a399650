"""Abuse limits: per-recipient caps, and per-provider send rates. Shared through Redis.

Per recipient (``NOTIFIER_RATE_LIMITS``, default ``password_reset=5/h,sms=10/h``):
a rule names a template or a channel and allows ``count`` distinct
deliveries to one mailbox (``ada+1@`` and ``ada+2@`` are ``ada@``) per fixed
window of ``period``. A delivery over the
cap is not sent; it is dead-lettered as ``rate_limited`` (an operator may
replay it). Deliveries are counted once however often they are retried.

An operator's replay may send past the limits. That leave is a one-time
grant the replay writes to Redis and its job carries, never a flag in the job:
anyone who can write to the queue could set a flag.

Per provider (``NOTIFIER_SMS_MPS``, ``NOTIFIER_SMTP_MPS``): messages per second
across all workers. A delivery over the rate is delayed, never dropped.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from notifier import keys

__all__ = ["RateRule", "RecipientLimiter", "Throttle", "mailbox", "parse_rate_limits"]

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RULE = re.compile(r"^\s*([a-z0-9_.-]+)\s*=\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


@dataclass(frozen=True, slots=True)
class RateRule:
    """At most ``limit`` deliveries of ``name`` (a template or a channel) per address per period."""

    name: str
    limit: int
    period: int


def parse_rate_limits(spec: str) -> tuple[RateRule, ...]:
    """Parse ``password_reset=5/h,sms=10/h`` (periods: s, m, h, d, optionally ``15m``).

    ``none`` turns every per-recipient limit off (an empty value would mean
    "unset", i.e. the default).
    """
    if spec.strip().lower() == "none":
        return ()
    rules = []
    for position, part in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
        match = _RULE.match(part)
        if not match:
            # By position, not by text: a settings error never repeats a value.
            raise ValueError(
                f"rule {position} is not NAME=COUNT/PERIOD (e.g. password_reset=5/h, sms=10/30m)"
            )
        name, limit, multiple, unit = match.groups()
        rules.append(RateRule(name, int(limit), int(multiple or 1) * _PERIODS[unit]))
    return tuple(rules)


# Admit a delivery once per window: already counted → yes; room left → count it.
_ADMIT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RecipientLimiter:
    """Checks the per-recipient rules for one delivery."""

    def __init__(self, client: redis.Redis, rules: tuple[RateRule, ...]) -> None:
        self.rules = rules
        self._redis = client
        self._admit = client.register_script(_ADMIT)

    def grant(self, delivery_id: str) -> str:
        """A one-time leave for this delivery to skip the rules: the token its job carries."""
        token = secrets.token_urlsafe(24)
        self._redis.set(keys.replay_grant(token), delivery_id, ex=keys.REPLAY_GRANT_TTL)
        return token

    def grant_many(self, delivery_ids: Sequence[str]) -> list[str]:
        """``grant`` for each delivery, in one pipeline (a bulk replay)."""
        tokens = [secrets.token_urlsafe(24) for _ in delivery_ids]
        with self._redis.pipeline(transaction=False) as pipe:
            for token, delivery_id in zip(tokens, delivery_ids, strict=True):
                pipe.set(keys.replay_grant(token), delivery_id, ex=keys.REPLAY_GRANT_TTL)
            pipe.execute()
        return tokens

    def redeem(self, token: str, delivery_id: str) -> bool:
        """Spend a grant: True if it was written for this delivery and not spent before."""
        granted = self._redis.getdel(keys.replay_grant(token))
        if isinstance(granted, bytes):
            granted = granted.decode()
        return granted == delivery_id

    def exceeded(
        self, *, delivery_id: str, template: str, channel: str, address: str, now: float
    ) -> RateRule | None:
        """The first rule this delivery would break, or None (and then it is counted)."""
        # Hash the address: Redis keys should not hold personal data in clear.
        who = hashlib.sha256(mailbox(address).encode()).hexdigest()[:24]
        for rule in self.rules:
            if rule.name not in (template, channel):
                continue
            window = int(now // rule.period)
            key = keys.rate_limit(rule.name, who, window)
            if not self._admit(keys=[key], args=[delivery_id, rule.limit, rule.period * 2]):
                return rule
        return None


def mailbox(address: str) -> str:
    """Who a rule counts: an email address without its ``+tag``, case-folded; a number as is.

    Most providers deliver ``ada+1@`` and ``ada+2@`` to ``ada@``: without the
    cut, every tag would be a fresh allowance to flood one mailbox.
    """
    address = address.strip().casefold()
    local, at, domain = address.rpartition("@")
    if not at:
        return address  # an E.164 number: its "+" is no tag
    return f"{local.split('+', 1)[0]}@{domain}"


class Throttle:
    """A provider's send rate: at most ``per_second`` sends per second, across workers."""

    def __init__(self, client: redis.Redis, name: str, per_second: float) -> None:
        self._redis = client
        self.name = name
        self.per_second = per_second

    def delay(self, now: float | None = None) -> float:
        """0 when a send may go now (and it is counted), else seconds to wait."""
        if self.per_second <= 0:
            return 0.0
        now = time.time() if now is None else now
        # Windows of one second, or longer for rates below 1/s (0.5/s = 1 per 2 s).
        span = max(1.0, 1.0 / self.per_second)
        window = math.floor(now / span)
        allowed = max(1, round(self.per_second * span))
        key = keys.throttle(self.name, window)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, int(span) + 2)
            count = int(pipe.execute()[0])
        if count <= allowed:
            return 0.0
        # Spread the overflow over the next windows instead of all at the next edge.
        windows_ahead = (count - 1) // allowed
        return (window + windows_ahead) * span - now
