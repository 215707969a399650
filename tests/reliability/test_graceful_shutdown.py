"""SIGTERM (a deploy, a scale-down): sends in flight finish, everything else goes back to Redis.

Celery's warm shutdown must neither cut a send in half (a duplicate later)
nor take with it the messages the worker held: prefetched events and retries
waiting for their countdown. A new worker then finishes the job, once.
"""

from __future__ import annotations

import json

import pytest

from notifier import keys
from tests.polling import eventually
from tests.reliability.conftest import (
    UNACKED,
    System,
    event_batch,
    planned_emails,
    report,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FIRST_ATTEMPTS_REFUSED = 6


@pytest.mark.parametrize("sink_delay", [0.3], ids=["smtp-takes-300ms"])
def test_sigterm_finishes_sends_in_flight_and_hands_back_held_retries(system: System) -> None:
    # Retries wait up to 8 s, so most are still waiting in the worker at the SIGTERM
    # (8 s, then a run of up to the 5.7 s hard limit: inside the visibility timeout).
    system.configure(NOTIFIER_RETRY_BACKOFF_BASE="8", NOTIFIER_RETRY_BACKOFF_MAX="8")
    events = event_batch(24, tag="term-")
    planned = planned_emails(events)
    system.sink.fail_next(451, "4.3.0 try again later", times=FIRST_ATTEMPTS_REFUSED)
    worker = system.worker().wait_ready()
    system.publish(events)

    eventually(
        lambda: (
            worker.log().count('"delivery.retried"') == FIRST_ATTEMPTS_REFUSED and system.claims()
        ),
        timeout=60,
        what="retries scheduled and a send in flight",
    )
    in_flight = system.claims()
    exit_code = worker.terminate(timeout=30)

    with system.redis() as client:
        held_after_exit = client.hlen(UNACKED)
        returned = [json.loads(m) for m in client.lrange(keys.EMAIL_QUEUE, 0, -1)]
    waiting_retries = [m for m in returned if m["headers"].get("eta")]
    sent_in_flight = {i for i in in_flight if system.ledger_state(i).startswith("sent:")}
    claims_left = system.claims()

    system.worker()
    tally = system.settle(planned, timeout=60)

    report(
        "sigterm during work",
        **tally.figures(),
        sends_in_flight_at_sigterm=len(in_flight),
        retries_handed_back=len(waiting_retries),
    )
    assert exit_code == 0
    assert sent_in_flight == in_flight, "every send in flight finished and was recorded"
    assert claims_left == set(), "no send was abandoned half-way"
    assert held_after_exit == 0, "the worker kept nothing it had taken"
    assert waiting_retries, "retries waiting for their countdown went back to their queue"
    assert tally.lost == set()
    assert tally.duplicates == 0, "a warm shutdown causes no duplicate"
