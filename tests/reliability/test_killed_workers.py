"""Workers die mid-batch (kill -9, a pool process killed): nothing is lost, nothing sent twice.

The one duplicate we allow is the documented window: a send the SMTP server
had accepted when its sender died, before the ledger recorded it. Each test
names the sends in flight at the kill (their claims in the ledger) and checks
that a duplicate, if any, is one of them.
"""

from __future__ import annotations

import time

import pytest

from tests.polling import eventually
from tests.reliability.conftest import (
    POOL_KILLS,
    WORKER_PROCESSES,
    System,
    Tarpit,
    clients_of,
    event_batch,
    planned_emails,
    report,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def test_kill_9_of_a_whole_worker_mid_batch_loses_nothing(system: System) -> None:
    events = event_batch(200)
    planned = planned_emails(events)
    worker = system.worker().wait_ready()
    system.publish(events)
    eventually(
        lambda: len(system.sink.messages) >= len(planned) // 3,
        timeout=60,
        what="a third of the emails to arrive",
    )

    worker.kill()  # the parent and both pool processes, no warning
    in_flight = system.claims()
    received_at_kill = len(system.sink.messages)
    system.worker()  # a replacement, as an orchestrator would start
    tally = system.settle(planned, timeout=90)

    report(
        "kill -9 mid-batch",
        events=len(events),
        **tally.figures(),
        received_before_kill=received_at_kill,
        sends_in_flight_at_kill=len(in_flight),
    )
    assert tally.lost == set()
    assert tally.strangers == set()
    assert tally.duplicated <= in_flight, "a duplicate that was not in flight at the kill"


@pytest.mark.parametrize("sink_delay", [1.0], ids=["smtp-takes-1s"])
def test_a_pool_process_killed_mid_send_is_redelivered_and_the_worker_keeps_going(
    system: System,
) -> None:
    first = event_batch(1, tag="first-")  # one email
    later = event_batch(6, tag="later-")
    planned = planned_emails(first + later)
    [first_delivery] = planned_emails(first)
    system.configure(**POOL_KILLS)
    worker = system.worker().wait_ready()

    system.publish(first)
    [victim] = eventually(
        lambda: clients_of(worker, system.sink.port), timeout=30, what="a pool process to send"
    )
    # The sink holds the whole message and answers a second later: mid-send.
    system.sink.wait_for_bodies(1, timeout=30)
    in_flight = system.claims()
    victim.kill()
    eventually(
        lambda: (
            len(pids := {p.pid for p in worker.children()}) == WORKER_PROCESSES
            and victim.pid not in pids
        ),
        timeout=30,
        what="the pool to replace the killed process",
    )
    system.publish(later)
    tally = system.settle(planned, timeout=60)

    report("pool process killed", **tally.figures(), sends_in_flight_at_kill=len(in_flight))
    assert worker.running(), "the worker itself survives the loss of a pool process"
    assert first_delivery in tally.delivered
    # Only a live process that finished the send records it: the killed one never did.
    assert system.ledger_state(first_delivery).startswith("sent:")
    assert tally.lost == set()
    assert tally.duplicated <= in_flight


def test_a_message_that_kills_its_worker_every_time_is_dead_lettered_not_looped(
    system: System,
) -> None:
    tarpit = Tarpit()  # every send blocks before a byte of the message is out
    try:
        system.configure(MAIL_PORT=str(tarpit.port), NOTIFIER_MAX_REDELIVERIES="1", **POOL_KILLS)
        events = event_batch(1, tag="poison-")
        planned = planned_emails(events)
        [delivery_id] = planned
        worker = system.worker().wait_ready()
        system.publish(events)

        kills = 0
        seen: dict[int, float] = {}
        deadline = time.monotonic() + 80
        while "PoisonMessage" not in getattr(system.dead_letter(delivery_id), "error", ""):
            # Whichever process picks the delivery up dies a moment after it starts
            # sending. (Not within milliseconds of taking the job: Celery then
            # sometimes noticed the death only at the hard time limit.)
            for victim in clients_of(worker, tarpit.port):
                if time.monotonic() - seen.setdefault(victim.pid, time.monotonic()) > 0.3:
                    victim.kill()
                    kills += 1
            if time.monotonic() > deadline:
                pytest.fail(f"still not dead-lettered after {kills} kills\n{worker.log_tail()}")
            time.sleep(0.02)
        tally = system.settle(planned, timeout=30)
    finally:
        tarpit.close()

    entry = system.dead_letter(delivery_id)
    assert entry is not None
    report("poison message", kills=kills, **tally.figures(), error=entry.error)
    assert "PoisonMessage" in entry.error
    assert kills <= 1 + 2  # the first run, then NOTIFIER_MAX_REDELIVERIES + 1 redeliveries
    assert worker.running()
    assert tally.lost == set()
