"""What the SMTP sink and the Twilio stand-in share: a record of what arrived, to wait on."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from notifier.testing.service import Service

__all__ = ["Recorder", "check_failure_code"]

Item = TypeVar("Item")


def check_failure_code(code: int) -> None:
    """Refuse an injected failure whose status is not a 4xx or 5xx."""
    if not 400 <= code <= 599:
        raise ValueError(f"failure code must be a 4xx or 5xx status, got {code}")


class Recorder(Service, Generic[Item]):
    """A server keeping a thread-safe record of what arrived, that tests can wait on.

    Subclasses append under ``_cond`` and ``notify_all`` it.
    """

    _noun = "item(s)"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: list[Item] = []

    @property
    def messages(self) -> list[Item]:
        """A snapshot copy of what was accepted since creation or ``clear()``."""
        with self._cond:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Item]:
        """Block until at least ``count`` have arrived; return them all.

        Raises :class:`TimeoutError` naming how many arrived if ``timeout``
        seconds pass first.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"{type(self).__name__}: expected {count} {self._noun} within "
                    f"{timeout:g}s, {len(self._messages)} arrived"
                )
            return list(self._messages)
