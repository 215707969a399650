"""Policy across SMTP providers: fail over to the fallback, and remember the primary is down.

The layers below (``connection``, ``transaction``) talk to one server; this
one decides which server a message goes to. The circuit breaker lives in
Redis, so one worker finding the primary down spares every other worker the
primary's timeout.
"""

from __future__ import annotations

import redis

from notifier import keys
from notifier.channels import Receipt
from notifier.channels.smtp.connection import SmtpChannel
from notifier.compose import ComposedEmail
from notifier.deadlines import Deadline
from notifier.errors import ProviderUnavailableError

__all__ = ["CircuitBreaker", "FailoverMailer"]


class CircuitBreaker:
    """Remembers, for all workers at once, that a provider is down.

    Tripped by a ``ProviderUnavailableError``; while open (a Redis key with
    a TTL of ``NOTIFIER_CIRCUIT_COOLDOWN``) the provider is skipped, so each
    message does not pay the primary's timeout before reaching the fallback.
    When the key expires the next message probes the primary again.
    """

    def __init__(self, client: redis.Redis, name: str, cooldown: float) -> None:
        self._redis = client
        self._key = keys.circuit(name)
        self.cooldown = cooldown

    def is_open(self) -> bool:
        """Whether the provider is being skipped right now."""
        return self.cooldown > 0 and bool(self._redis.exists(self._key))

    def trip(self, reason: str) -> None:
        """Skip the provider for the cool-down."""
        if self.cooldown > 0:
            self._redis.set(self._key, reason[:500], px=int(self.cooldown * 1000))


class FailoverMailer:
    """The primary SMTP channel, and the fallback when the primary is unavailable.

    Only ``ProviderUnavailableError`` (the server, not the message, is the
    problem) moves a send to the fallback; a 5xx for a mailbox would fail the
    same way anywhere, and a 4xx deferral is for the retry schedule. An
    ``AmbiguousDeliveryError`` (the primary lost the connection after the
    message was handed over) is deliberately not one: the primary may have
    the message, and the fallback would send a second copy silently. It goes
    back to the pipeline, which logs it and retries it as a new attempt. A
    ``DeadlineExpiredError`` is not one either: our deadline, not the
    server, cut the wait short.
    """

    def __init__(
        self, primary: SmtpChannel, fallback: SmtpChannel | None, circuit: CircuitBreaker
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.circuit = circuit

    def send(
        self,
        message: ComposedEmail,
        sender: str,
        recipient: str,
        deadline: Deadline | None = None,
    ) -> Receipt:
        """Send through the primary, or the fallback in the same attempt; none past ``deadline``."""
        if self.fallback is None:
            return self.primary.send(message, sender, recipient, deadline)
        primary_error: ProviderUnavailableError | None = None
        if not self.circuit.is_open():
            try:
                return self.primary.send(message, sender, recipient, deadline)
            except ProviderUnavailableError as exc:
                self.circuit.trip(str(exc))
                primary_error = exc
        try:
            return self.fallback.send(message, sender, recipient, deadline)
        except ProviderUnavailableError as exc:
            if primary_error is None:
                raise
            raise ProviderUnavailableError(f"primary: {primary_error}; fallback: {exc}") from exc

    def close(self) -> None:
        """Close both connections."""
        self.primary.close()
        if self.fallback is not None:
            self.fallback.close()
