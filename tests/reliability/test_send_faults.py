"""Faults inside one send, against worker processes: a slow server and a lost reply.

A reset link must not leave after it expired, however slow the server is
(the deadline holds during the send); and a message whose reply was lost is
sent again only as a new, logged attempt (docs/DESIGN.md §10: ``ambiguous``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests import samples
from tests.polling import eventually
from tests.reliability.conftest import System, report
from tests.smtp_faults import FaultySmtpServer

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

# Task time limits far beyond the waits here: the deadline, not a time limit, must end them.
LONG_TASKS = {"NOTIFIER_CLAIM_LEASE": "60", "NOTIFIER_VISIBILITY_TIMEOUT": "130"}


def point_at(system: System, server: FaultySmtpServer, **overrides: str) -> None:
    system.configure(MAIL_SERVER=server.host, MAIL_PORT=str(server.port), **overrides)


@pytest.fixture
def slow_greeter() -> Iterator[FaultySmtpServer]:
    with FaultySmtpServer(greet_after=5.0) as server:
        yield server


def test_a_reset_link_that_expires_while_the_server_is_slow_is_dead_lettered_unsent(
    system: System, slow_greeter: FaultySmtpServer
) -> None:
    point_at(system, slow_greeter, MAIL_TIMEOUT="10", **LONG_TASKS)
    system.worker(concurrency=1).wait_ready()
    now = datetime.now(UTC)
    event = samples.password_reset_requested(
        occurred_at=now.isoformat(), expires_at=(now + timedelta(seconds=2)).isoformat()
    )
    published = time.monotonic()

    system.publish([event])
    [entry] = eventually(system.dead_letters, timeout=30, what="a dead letter")
    settled = time.monotonic() - published

    report("reset expiring during a slow greeting", seconds_to_dead_letter=round(settled, 2))
    assert entry.status == "expired"
    assert entry.error.startswith("DeadlineExpired: not sent")
    # Well under the 5 s greeting and the 10 s MAIL_TIMEOUT, with room for a loaded machine.
    assert settled < 4.9, f"{settled:.1f}s: the send outlived its 2 s deadline"
    eventually(lambda: slow_greeter.closed >= 1, timeout=15, what="the worker to hang up")
    assert slow_greeter.commands == []
    assert slow_greeter.messages == []


def test_an_email_whose_reply_was_lost_goes_again_only_as_a_logged_ambiguous_attempt(
    system: System,
) -> None:
    # The second transaction on the worker's one connection: a reused connection.
    with FaultySmtpServer(pipelining=True, drop_after_body=[2]) as server:
        point_at(system, server)
        worker = system.worker(concurrency=1).wait_ready()
        first, second = samples.user_registered(), samples.user_registered()
        system.publish([first])
        eventually(lambda: len(server.messages) == 1, timeout=30, what="the first email")

        system.publish([second])
        eventually(lambda: len(server.messages) == 3, timeout=30, what="the retry's copy")
        eventually(system.idle, timeout=30, what="the worker to finish")

    log = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    ambiguous = [record for record in log if record.get("event") == "delivery.ambiguous"]
    sent = [record for record in log if record.get("event") == "delivery.sent"]
    report("reply lost after the body", received=len(server.messages), ambiguous=len(ambiguous))
    assert len(ambiguous) == 1
    assert ambiguous[0]["attempt"] == 1
    assert ambiguous[0]["error"].startswith("ambiguous: ")
    assert [record["attempt"] for record in sent] == [1, 2]  # the copy was a new attempt
    assert server.connections == 2
    assert system.dead_letters() == []
