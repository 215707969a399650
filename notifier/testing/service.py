"""The shape every local server here has: ``start``/``stop``, and a ``with`` block."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Service"]


class Service:
    """A local server with ``start``/``stop``, usable as a context manager."""

    def start(self) -> None:
        """Start serving (subclasses)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving (subclasses)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
