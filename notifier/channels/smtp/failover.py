"""Policy across SMTP providers: fail over to the fallback, and remember who is down.

The layers below (``connection``, ``transaction``) talk to one server; this
one decides which server a message goes to. Each provider has a circuit
breaker in Redis, so one worker finding a provider down spares every other
worker its timeout. The primary has one even when it is alone: during an
outage a message then costs one timeout per cool-down, not one each, and a
``CircuitOpenError`` tells the pipeline to hold the email (``notifier.hold``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from notifier import keys
from notifier.channels import Receipt
from notifier.channels.smtp.connection import SmtpChannel
from notifier.compose import ComposedEmail
from notifier.deadlines import Deadline
from notifier.errors import CircuitOpenError, ProviderUnavailableError
from notifier.redis_clients import reply_text

__all__ = ["CircuitBreaker", "FailoverMailer"]


class CircuitBreaker:
    """Remembers, for all workers at once, that a provider is down.

    Tripped by a ``ProviderUnavailableError``; while open (a Redis key with
    a TTL of ``NOTIFIER_CIRCUIT_COOLDOWN``) the provider is skipped, so each
    message does not pay the primary's timeout before reaching the fallback.
    When the key expires the next message probes the primary again.

    What Redis said is believed for ``recheck`` seconds (at most 1 s, a
    quarter of the cool-down): a send then costs no Redis round trip of its
    own (a GET per email showed in ``python -m bench``'s emails/s), and a
    process learns of another's trip or close within ``recheck``, at the cost
    of at most one provider timeout per process when an outage starts. Its
    own trips and closes it knows at once.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        cooldown: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self.name = name
        self._key = keys.circuit(name)
        self.cooldown = cooldown
        self.recheck = min(1.0, cooldown / 4)
        self._monotonic = monotonic
        self._known: str | None = None
        self._known_until = float("-inf")

    def _remember(self, reason: str | None) -> None:
        self._known = reason
        self._known_until = self._monotonic() + self.recheck

    def is_open(self) -> bool:
        """Whether the provider is being skipped right now."""
        return self.open_reason() is not None

    def open_reason(self) -> str | None:
        """Why the provider is being skipped (the error that tripped it), or None if it is not."""
        if self.cooldown <= 0:
            return None
        if self._monotonic() < self._known_until:
            return self._known
        stored = self._redis.get(self._key)
        self._remember(None if stored is None else reply_text(stored))
        return self._known

    def trip(self, reason: str) -> None:
        """Skip the provider for the cool-down."""
        if self.cooldown > 0:
            self._redis.set(self._key, reason[:500], px=int(self.cooldown * 1000))
            self._remember(reason[:500])

    def close(self) -> None:
        """Stop skipping the provider now (a probe found it back)."""
        self._redis.delete(self._key)
        self._remember(None)

    def remaining(self) -> float:
        """Seconds until the provider is tried again; 0 when the circuit is closed."""
        if self.cooldown <= 0:
            return 0.0
        milliseconds = int(self._redis.pttl(self._key))
        return max(milliseconds, 0) / 1000


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
        self,
        primary: SmtpChannel,
        fallback: SmtpChannel | None,
        circuit: CircuitBreaker,
        fallback_circuit: CircuitBreaker | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.circuit = circuit
        self.fallback_circuit = fallback_circuit

    def send(
        self,
        message: ComposedEmail,
        sender: str,
        recipient: str,
        deadline: Deadline | None = None,
    ) -> Receipt:
        """Send through the primary, or the fallback in the same attempt; none past ``deadline``.

        Raises ``CircuitOpenError`` without trying anything when every
        provider is being skipped.
        """
        primary_error: ProviderUnavailableError | None = None
        primary_down = self.circuit.open_reason()
        if primary_down is None:
            try:
                return self.primary.send(message, sender, recipient, deadline)
            except ProviderUnavailableError as exc:
                self.circuit.trip(str(exc))
                primary_error = exc
        fallback = self.fallback
        if fallback is None:
            if primary_error is not None:
                raise primary_error
            raise CircuitOpenError(
                f"not tried: the SMTP provider's circuit is open ({primary_down})"
            )
        fallback_down = (
            None if self.fallback_circuit is None else self.fallback_circuit.open_reason()
        )
        if fallback_down is not None:
            if primary_error is not None:
                raise ProviderUnavailableError(
                    f"primary: {primary_error}; fallback: circuit open ({fallback_down})"
                )
            raise CircuitOpenError(
                "not tried: both SMTP providers' circuits are open "
                f"(primary: {primary_down}; fallback: {fallback_down})"
            )
        try:
            return fallback.send(message, sender, recipient, deadline)
        except ProviderUnavailableError as exc:
            if self.fallback_circuit is not None:
                self.fallback_circuit.trip(str(exc))
            if primary_error is None:
                raise
            raise ProviderUnavailableError(f"primary: {primary_error}; fallback: {exc}") from exc

    def down(self) -> bool:
        """Every provider's circuit is open: nothing would be tried (``notifier.hold``)."""
        if not self.circuit.is_open():
            return False
        if self.fallback is None:
            return True
        return self.fallback_circuit is not None and self.fallback_circuit.is_open()

    def circuits(self) -> list[tuple[SmtpChannel, CircuitBreaker]]:
        """Each provider with its circuit breaker, the primary first (for the outage probe)."""
        pairs = [(self.primary, self.circuit)]
        if self.fallback is not None and self.fallback_circuit is not None:
            pairs.append((self.fallback, self.fallback_circuit))
        return pairs

    def close(self) -> None:
        """Close both connections."""
        self.primary.close()
        if self.fallback is not None:
            self.fallback.close()
