"""The exception tree: one root, and the split every caller cares about.

``TransientError`` means "try again later, it may work"; ``PermanentError``
means "it will never work as it is, stop and dead-letter it". Code that sends
decides which one it raises; nothing else in the service second-guesses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifier.deadlines import Deadline

__all__ = [
    "AmbiguousDeliveryError",
    "CircuitOpenError",
    "ConfigurationError",
    "DeadlineExpiredError",
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


class AmbiguousDeliveryError(TransientError):
    """The provider may have the message: the connection dropped after it was handed over.

    The server received the whole body (DATA's final dot, or the BDAT chunk)
    and the connection closed before its reply, so whether it queued the
    message is unknown. It is never sent again within the same attempt, nor
    through the fallback provider (either would be a silent second copy);
    the pipeline logs it (``delivery.ambiguous``) and retries it as a normal
    attempt: at least once (docs/DESIGN.md §10, docs/guarantees.md).
    """


class DeadlineExpiredError(TransientError):
    """A deadline passed before the message was handed over: nothing was sent.

    ``deadline`` is the ``notifier.deadlines.Deadline`` that passed. Transient
    because the deadline may be a task's time budget (try again later); when
    it is the delivery's own ``not_after`` the pipeline dead-letters the
    delivery as ``expired`` instead of retrying it.
    """

    def __init__(self, message: str, *, deadline: Deadline) -> None:
        super().__init__(message)
        self.deadline = deadline


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
    """The broker did not take every event; the message says which were published.

    ``published``: event_ids the broker certainly took; ``not_published``:
    certainly not taken (refused, e.g. Redis full, or never sent);
    ``uncertain``: sent when the connection failed, so either. Publishing any
    of them again is safe: one event_id, one notification.
    """

    def __init__(
        self,
        message: str,
        *,
        published: list[str] | None = None,
        not_published: list[str] | None = None,
        uncertain: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.published = list(published or [])
        self.not_published = list(not_published or [])
        self.uncertain = list(uncertain or [])
