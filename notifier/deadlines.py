"""A point in time after which a send must not be made, as a value the send path carries.

A password reset's link dies at ``expires_at``, so its email must not leave
afterwards (docs/guarantees.md). Checking the deadline once before the send
is not enough: a server that greets after 5 s, or a Twilio request that takes
its whole timeout, carries the send past it. So the pipeline hands a
``Deadline`` down to the channels, which cap every network operation's
timeout to ``remaining()`` and check ``expired()`` again right before the
message is handed over. ``None`` where a ``Deadline`` is expected means no
deadline. Two deadlines (a delivery's expiry and a task's time budget, say)
combine with ``earliest``.

The instant is read from an injected clock (the runtime's), so tests move
time without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.errors import DeadlineExpiredError

__all__ = ["Clock", "Deadline", "earliest"]

Clock = Callable[[], datetime]
"""An aware ``datetime`` for now (``Runtime.clock``)."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute instant read against ``clock``; ``name`` says what it is, for errors."""

    at: datetime
    clock: Clock
    name: str = "deadline"

    @classmethod
    def after(cls, seconds: float, clock: Clock, name: str = "deadline") -> Deadline:
        """The deadline ``seconds`` from the clock's now."""
        return cls(clock() + timedelta(seconds=seconds), clock, name)

    def remaining(self) -> float:
        """Seconds left, never below zero."""
        return max(0.0, (self.at - self.clock()).total_seconds())

    def expired(self) -> bool:
        """Whether the instant has been reached."""
        return self.clock() >= self.at

    def earliest(self, other: Deadline | None) -> Deadline:
        """Whichever of the two leaves less time (this one when ``other`` is None)."""
        if other is None or self.remaining() <= other.remaining():
            return self
        return other

    def cap(self, timeout: float) -> float:
        """``timeout`` cut to the time left; a DeadlineExpiredError when none is left.

        A socket timeout of 0 would mean "non-blocking" rather than "give
        up", so an expired deadline raises instead of returning 0.
        """
        left = (self.at - self.clock()).total_seconds()  # one clock read: this runs per wait
        if left <= 0:
            raise self._passed("waiting on the provider")
        return min(timeout, left)

    def check(self, before: str) -> None:
        """Raise ``DeadlineExpiredError`` if the instant has passed (``before``: what was next)."""
        if self.expired():
            raise self._passed(before)

    def _passed(self, before: str) -> DeadlineExpiredError:
        return DeadlineExpiredError(
            f"{self.name} {self.at.isoformat()} passed before {before}", deadline=self
        )


def earliest(first: Deadline | None, second: Deadline | None) -> Deadline | None:
    """The sooner of two optional deadlines; None when both are None."""
    if first is None:
        return second
    return first.earliest(second)
