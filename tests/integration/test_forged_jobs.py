"""Jobs written straight to ``notifier.deliver`` by anyone who can write to the queue (issue 13).

A job is believed only as far as its event goes: the event passes the
contract again, and the delivery must be one that planning the event gives,
field for field. Each forged job here goes to a real worker on real Redis, as
``send_task`` from any Celery client would send it. For each one:

* nothing is sent to anyone for it;
* it is kept as a ``rejected`` dead letter with the reason, and no claim of
  it is left in the ledger to block the real delivery;
* the worker goes on: a good event published after it is delivered.

A job cannot grant itself the operator's leave to skip the per-recipient
limits either: that takes a one-time grant the operator's replay writes to
Redis (tests/integration/test_rate_limits.py replays for real).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from notifier.app import NotifierCelery
from notifier.client import publish_many
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.events import parse_event
from notifier.ledger import Ledger
from notifier.pipeline import Job
from notifier.planner import plan
from notifier.testing import SmtpSink
from tests import samples
from tests.integration.test_bad_input import (
    GOOD_RECIPIENT,
    publish_good_event_and_wait,
    the_rejected_entry,
)
from tests.polling import eventually

pytestmark = pytest.mark.integration


def job_for(event: dict[str, Any], **delivery: Any) -> dict[str, Any]:
    """The event's (first) email job as JSON, with delivery fields replaced."""
    [planned, *_] = plan(parse_event(event))
    raw = Job(delivery=planned).model_dump(mode="json")
    return {**raw, "delivery": {**raw["delivery"], **delivery}}


def publish_job(app: NotifierCelery, job: dict[str, Any]) -> None:
    app.send_task("notifier.deliver", args=[job], queue="notifier.email")


def assert_rejected_and_nothing_sent(
    job: dict[str, Any],
    reason: str,
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
    ledger: Ledger,
) -> None:
    assert [mail.rcpt_tos for mail in smtp_sink.messages] == [(GOOD_RECIPIENT,)]
    entry = the_rejected_entry(dead_letters)
    assert entry.status == "rejected"
    assert reason in entry.error
    assert ledger.state(job["delivery"]["delivery_id"]) is None


def test_a_job_whose_role_is_not_in_its_event_is_rejected_and_leaves_no_claim(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, ledger: Ledger
) -> None:
    job = job_for(samples.user_registered(), role="admin")

    publish_job(app, job)
    publish_good_event_and_wait(app, smtp_sink)

    assert_rejected_and_nothing_sent(job, "delivery.role", smtp_sink, dead_letters, ledger)


def test_an_old_password_reset_job_without_a_deadline_is_rejected_unsent(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, ledger: Ledger
) -> None:
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    event = samples.password_reset_requested(occurred_at=two_hours_ago.isoformat())
    job = job_for(event, not_after=None)

    publish_job(app, job)
    publish_good_event_and_wait(app, smtp_sink)

    assert_rejected_and_nothing_sent(job, "delivery.not_after", smtp_sink, dead_letters, ledger)


def test_a_job_claiming_to_be_replayed_gets_no_leave_from_the_rate_limits(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    publish_many([samples.password_reset_requested() for _ in range(6)], app=app)
    [limited] = eventually(lambda: list(dead_letters), timeout=20, what="one limited")
    smtp_sink.wait_for(5, timeout=10)
    assert limited.delivery is not None
    job = {**Job(delivery=limited.delivery).model_dump(mode="json"), "replayed": True}

    publish_job(app, job)

    def handled() -> bool:
        entry = dead_letters.get(limited.id)
        assert entry is None or isinstance(entry, DeadLetter)
        return len(smtp_sink.messages) > 5 or (entry is not None and len(entry.history) > 1)

    eventually(handled, timeout=10, what="the forged job to be handled")
    assert len(smtp_sink.messages) == 5
    entry = dead_letters.get(limited.id)
    assert entry is not None
    assert entry.status == "rate_limited"
