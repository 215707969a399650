"""The CLI's progress line: count, rate and time left, at least once per interval."""

from __future__ import annotations

import threading

from notifier.cli.progress import ProgressLine, describe


def test_the_line_says_count_rate_and_time_left() -> None:
    assert describe("replayed", 3000, 12000, 1.0) == (
        "replayed 3,000 of 12,000 (25%), 3,000/s, 3 s left"
    )


def test_a_line_is_printed_every_interval_while_the_work_goes_on() -> None:
    lines: list[str] = []
    three = threading.Event()

    def write(line: str) -> None:
        lines.append(line)
        if len(lines) >= 3:
            three.set()

    with ProgressLine("replayed", 10, interval=0.01, write=write) as progress:
        progress.update(4)
        assert three.wait(10), "no progress lines"

    assert lines[0].startswith("replayed 4 of 10 (40%)")
    assert lines[-1].startswith("replayed 4 of 10")


def test_an_operation_shorter_than_the_interval_prints_nothing() -> None:
    lines: list[str] = []

    with ProgressLine("replayed", 10, interval=60, write=lines.append) as progress:
        progress.update(10)

    assert lines == []
