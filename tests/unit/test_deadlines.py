"""Deadline: an instant on an injected clock, what is left of it, and the sooner of two."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from notifier.deadlines import Deadline, earliest
from notifier.errors import DeadlineExpiredError, TransientError

START = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_remaining_counts_down_with_the_clock_and_stops_at_zero() -> None:
    clock = Clock()
    deadline = Deadline.after(2.0, clock)

    assert deadline.remaining() == 2.0
    clock.advance(1.5)
    assert deadline.remaining() == 0.5
    clock.advance(1.0)
    assert deadline.remaining() == 0.0


def test_a_deadline_is_expired_from_its_instant_on() -> None:
    clock = Clock()
    deadline = Deadline(START + timedelta(seconds=1), clock)

    assert not deadline.expired()
    clock.advance(1)
    assert deadline.expired()


def test_cap_cuts_a_timeout_to_the_time_left() -> None:
    clock = Clock()
    deadline = Deadline.after(2.0, clock)

    assert deadline.cap(10.0) == 2.0
    assert deadline.cap(1.0) == 1.0


def test_cap_raises_rather_than_give_a_zero_timeout_once_expired() -> None:
    clock = Clock()
    deadline = Deadline.after(2.0, clock, name="its deadline")
    clock.advance(2)

    with pytest.raises(DeadlineExpiredError, match=r"its deadline .* passed") as raised:
        deadline.cap(10.0)
    assert raised.value.deadline is deadline


def test_check_names_what_was_next() -> None:
    clock = Clock()
    deadline = Deadline.after(0, clock)

    with pytest.raises(DeadlineExpiredError, match="before handing the message over"):
        deadline.check("handing the message over")


def test_a_passed_deadline_is_transient_for_callers_that_do_not_know_it() -> None:
    # A task's time budget running out is for the retry schedule; only the
    # pipeline knows when it is the delivery's own expiry.
    assert issubclass(DeadlineExpiredError, TransientError)


def test_earliest_picks_the_one_with_less_time_left() -> None:
    clock = Clock()
    soon, later = Deadline.after(1, clock, "soon"), Deadline.after(5, clock, "later")

    assert soon.earliest(later) is soon
    assert later.earliest(soon) is soon
    assert earliest(later, soon) is soon


def test_earliest_with_none_means_no_other_deadline() -> None:
    clock = Clock()
    deadline = Deadline.after(1, clock)

    assert deadline.earliest(None) is deadline
    assert earliest(None, deadline) is deadline
    assert earliest(deadline, None) is deadline
    assert earliest(None, None) is None
