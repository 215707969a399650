"""The exception tree: one root, and the split every caller cares about.

``TransientError`` means "try again later, it may work"; ``PermanentError``
means "it will never work as it is, stop and dead-letter it". Code that sends
decides which one it raises; nothing else in the service second-guesses it.
"""

from __future__ import annotations

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "DeliveryBusyError",
    "InvalidEventError",
    "NotifierError",
    "PermanentError",
    "ProviderUnavailableError",
    "PublishError",
    "TransientError",
]


class NotifierError(Exception):
    """Root of every error notifier raises on purpose."""


class PermanentError(NotifierError):
    """Retrying cannot help: bad address, rejected content, missing configuration."""


class TransientError(NotifierError):
    """The same attempt may succeed later: timeouts, refused connections, 4xx SMTP, 429."""


class ProviderUnavailableError(TransientError):
    """The provider itself is unreachable or refusing service (not one message's problem).

    Connection refused or reset, timeouts, SMTP 421, HTTP connection errors:
    the cue to fail over to another provider and to open the circuit breaker.
    """


class CircuitOpenError(ProviderUnavailableError):
    """Nothing was tried: every provider's circuit breaker is open (an outage under way)."""


class InvalidEventError(PermanentError):
    """An event does not match the contract; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid event: " + "; ".join(self.errors))


class ConfigurationError(PermanentError):
    """A setting needed for this delivery is missing or wrong (an operator problem)."""


class DeliveryBusyError(TransientError):
    """Another worker holds the claim on this delivery right now; look again later."""


class PublishError(NotifierError):
    """The broker did not take the event: it was not published (safe to try again)."""
