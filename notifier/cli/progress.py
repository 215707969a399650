"""A progress line on stderr, every second, for the CLI's long operations.

``dlq replay --all`` over a million entries runs for minutes: the operator
sees how many are done, the rate and the time left at least once a second
(issue 16), while each result still goes to stdout as it happens. A thread
prints, so a stalled broker shows a falling rate rather than silence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from notifier.cli import output

__all__ = ["ProgressLine", "describe"]


def describe(label: str, done: int, total: int, seconds: float) -> str:
    """``replayed 12,000 of 20,000 (60%), 3,100/s, 3 s left``."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{label} {done:,} of {total:,}"
    if total:
        text += f" ({100 * done // total}%)"
    text += f", {rate:,.0f}/s"
    if rate > 0 and total >= done:
        text += f", {(total - done) / rate:,.0f} s left"
    return text


def _stderr(text: str) -> None:
    output.line(text, err=True)


class ProgressLine:
    """Prints ``describe(...)`` every ``interval`` seconds while in use (a context manager).

    Quiet for an operation that ends within the first interval; once it has
    printed, it prints a last line at the end.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] = _stderr,
    ) -> None:
        self.label = label
        self.total = total
        self._interval = interval
        self._clock = clock
        self._write = write
        self._done = 0
        self._started = 0.0
        self._printed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notifier-progress", daemon=True)

    def update(self, done: int) -> None:
        """How many are done so far."""
        self._done = done

    def _line(self) -> str:
        return describe(self.label, self._done, self.total, self._clock() - self._started)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._write(self._line())
            self._printed = True

    def __enter__(self) -> ProgressLine:
        self._started = self._clock()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join()
        if self._printed:
            self._write(self._line())
