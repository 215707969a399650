"""Abuse limits with a real worker: per-recipient caps, provider rates."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from notifier.app import NotifierCelery
from notifier.client import publish_many
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.pipeline import replay
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn
from tests import samples
from tests.polling import eventually

pytestmark = pytest.mark.integration


def test_a_burst_of_thirty_password_resets_to_one_address_delivers_five(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    publish_many([samples.password_reset_requested() for _ in range(30)], app=app)

    limited = eventually(
        lambda: list(dead_letters) if dead_letters.count() == 25 else None,
        timeout=30,
        what="25 limited",
    )
    assert len(smtp_sink.messages) == 5
    assert {entry.status for entry in limited} == {"rate_limited"}
    assert "more than 5 password_reset" in limited[0].error


def test_plus_addressed_password_resets_share_the_mailboxs_five(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    people = [{**samples.FAN, "email": f"ada+{i}@example.com"} for i in range(6)]

    publish_many([samples.password_reset_requested(user=person) for person in people], app=app)

    [limited] = eventually(lambda: list(dead_letters), timeout=20, what="one limited")
    assert limited.status == "rate_limited"
    assert len(smtp_sink.wait_for(5, timeout=10)) == 5


def test_an_operator_may_replay_a_rate_limited_delivery(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    publish_many([samples.password_reset_requested() for _ in range(6)], app=app)
    [entry] = eventually(lambda: list(dead_letters), timeout=20, what="one limited")
    smtp_sink.wait_for(5, timeout=10)

    taken = dead_letters.take(entry.id)
    assert isinstance(taken, DeadLetter)
    replay(taken, app.runtime)

    smtp_sink.wait_for(6, timeout=15)


def test_sms_over_the_provider_rate_are_delayed_not_dropped(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    twilio: TwilioStandIn,
    dead_letters: DeadLetterStore,
) -> None:
    app = worker_for(settings_for(notifier_sms_mps=2))
    fans = [
        {"name": f"Fan {i}", "email": f"fan{i}@example.com", "phone": f"+4479111234{i:02d}"}
        for i in range(6)
    ]
    started = time.monotonic()
    publish_many([samples.booking_created(fan=fan) for fan in fans], app=app)

    received = twilio.wait_for(6, timeout=30)
    elapsed = time.monotonic() - started

    assert sorted(sms.to for sms in received) == sorted(str(fan["phone"]) for fan in fans)
    assert elapsed >= 1.0  # 6 messages at 2 per second span three one-second windows
    assert dead_letters.count() == 0
