"""With the outage hold off, an SMTP outage ends in dead letters; replay delivers each once.

(With the hold on, the default, the emails wait instead: test_outage_hold.py.)

Replay is an operator's command (``notifier dlq replay``) run as a separate
process against a running worker, twice at once where that is the point.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import samples
from tests.polling import eventually
from tests.reliability.conftest import (
    FAST,
    System,
    event_batch,
    operator_environment,
    planned_emails,
    report,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

REPLAY_ALL = [sys.executable, "-m", "notifier", "dlq", "replay", "--all", "--yes"]

# `notifier dlq replay --all`, loaded first (then it says so with a ready-<pid> file),
# started when the file named by argv[1] appears.
AT_THE_START_LINE = """
import os, pathlib, sys, time
import notifier.app, notifier.cli, notifier.cli.dlq, notifier.pipeline
go = pathlib.Path(sys.argv[1])
go.with_name(f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.001)
sys.argv = ["notifier", "dlq", "replay", "--all", "--yes"]
notifier.cli.main()
"""


def replay_all(system: System) -> subprocess.CompletedProcess[str]:
    environment = operator_environment(system.settings.redis_url)
    return subprocess.run(
        REPLAY_ALL, capture_output=True, text=True, timeout=60, env=environment, check=False
    )


def replayed_count(output: str) -> int:
    """N from the command's last line, "N replayed, M could not be replayed"."""
    return int(output.strip().splitlines()[-1].split()[0])


def test_an_smtp_outage_longer_than_the_retry_schedule_ends_in_replay_delivering_once(
    system: System,
) -> None:
    # No hold and no circuit: every attempt tries the server, then a dead letter.
    system.configure(NOTIFIER_OUTAGE_HOLD_MAX="0", NOTIFIER_CIRCUIT_COOLDOWN="0")
    events = event_batch(40, tag="outage-")
    planned = planned_emails(events)
    system.worker().wait_ready()
    system.sink.stop()  # the provider is gone for longer than every retry together
    system.publish(events)

    attempts = int(FAST["NOTIFIER_RETRY_MAX_ATTEMPTS"])
    eventually(
        lambda: system.tally(planned).dead_only == set(planned) and system.idle(),
        timeout=60,
        what="every email dead-lettered after its last retry",
    )
    entries = system.dead_letters()
    system.sink.start()
    first = replay_all(system)
    tally = system.settle(planned, timeout=60)
    second = replay_all(system)

    report("smtp outage then replay", events=len(events), **tally.figures())
    assert {entry.attempts for entry in entries} == {attempts}
    assert {entry.error.split(":", 1)[0] for entry in entries} == {"ProviderUnavailableError"}
    assert first.returncode == 0, first.stderr
    assert replayed_count(first.stdout) == len(planned)
    assert tally.delivered == set(planned)
    assert tally.duplicates == 0, "replay sends each dead letter exactly once"
    assert system.dead_letters() == []
    assert replayed_count(second.stdout) == 0, "nothing left to replay"


def test_two_replays_at_once_send_each_dead_letter_once(system: System, tmp_path: Path) -> None:
    events = [one_email(index) for index in range(50)]
    planned = planned_emails(events)
    system.sink.fail_next(550, "5.1.1 mailbox unavailable", times=len(events), stage="rcpt")
    system.worker().wait_ready()
    system.publish(events)
    eventually(
        lambda: len(system.dead_letters()) == len(events) and system.idle(),
        timeout=60,
        what="50 dead letters",
    )

    # Two operators press enter at the same moment: both commands are loaded
    # and wait at a start line, so their replay loops really do overlap.
    start_line = tmp_path / "go"
    environment = operator_environment(system.settings.redis_url)
    replays = [
        subprocess.Popen(
            [sys.executable, "-c", AT_THE_START_LINE, str(start_line)],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        eventually(lambda: len(list(tmp_path.glob("ready-*"))) == 2, timeout=30, what="both loaded")
        start_line.touch()
        outputs = [process.communicate(timeout=60)[0] for process in replays]
    finally:
        for process in replays:
            process.kill()
            process.wait()
    tally = system.settle(planned, timeout=60)

    counts = [replayed_count(output) for output in outputs]
    report("concurrent replay", entries=len(events), replayed_by_each=counts, **tally.figures())
    assert sum(counts) == len(events), "each entry is taken by exactly one replay"
    assert tally.delivered == set(planned)
    assert tally.duplicates == 0
    assert system.dead_letters() == []


def one_email(index: int) -> dict[str, Any]:
    who = {"name": f"Replay {index}", "email": f"replay{index}@example.com", "phone": None}
    return samples.user_registered(user=who)
