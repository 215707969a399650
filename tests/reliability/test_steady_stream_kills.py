"""Issue 18: workers SIGKILLed under a steady stream of events lose nothing that was accepted.

The short version of ``python -m tests.reliability.soak`` (``make soak`` runs
the full one): 30 s of a 20 events/s stream, three kills of the worker's
whole process group, each followed by a fresh worker, then a drain. Every
email the accepted events call for must end delivered or dead-lettered, no
message may be left in a queue or in kombu's ``unacked`` hash, and duplicates
stay within the documented window (one per pool process per kill).
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import report
from tests.reliability.soak import RunResult, Scenario, run

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SHORT = Scenario(
    seed=18,
    duration=30.0,
    kill_every=(8.0, 9.5),  # exactly three kills in 30 s
    rate=20.0,
    # conftest's FAST timings: a dead worker's messages return 14 s (plus a
    # 1 s sweep) after they were taken, so well inside the drain.
    visibility_timeout=14,
    claim_lease=6,
    drain_timeout=25.0,
    # Each kill lands 1 ms before a publish, so the next message reaches Redis
    # while the dead worker's BRPOP is still registered there (Redis dropped
    # it 1.4-81 ms after the SIGKILL, 6 ms typically, measured here): the
    # moment issue 18's losses came from. At random instants about one kill
    # in six met a publish there (6 in 36), which three kills would seldom show.
    kill_lead=0.001,
)


def evidence(result: RunResult) -> str:
    """Where the lost messages went, for the failure message."""
    lines = [
        f"kill {k.number} at {k.at:.1f}s (worker up {k.uptime:.1f}s): {k.fetch}"
        for k in result.kills
    ]
    if result.forensics is not None:
        lines += [f"lost event {e}: {what}" for e, what in result.forensics.lost_explained.items()]
    lines.append(f"worker logs and Redis's AOF: {result.workdir}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """One run of the scenario, shared by the tests below (each checks one outcome of it)."""
    result = run(SHORT, tmp_path_factory.mktemp("steady-stream"))
    report("steady-stream kills", **result.figures())
    # The scenario happened as designed, or nothing below means anything.
    assert len(result.kills) == 3
    assert result.accepted >= 0.9 * SHORT.rate * SHORT.duration, "the stream was not steady"
    return result


def test_kill_9_under_a_steady_stream_loses_no_accepted_event(stream: RunResult) -> None:
    assert stream.tally.lost == set(), (
        f"{len(stream.tally.lost)} emails of {len(stream.lost_events)} accepted events "
        f"were never delivered nor dead-lettered\n{evidence(stream)}"
    )
    assert stream.strangers == 0, "emails that no accepted event called for"


def test_kill_9_under_a_steady_stream_leaves_no_message_in_redis(stream: RunResult) -> None:
    assert stream.leftovers == {}, f"still held after the drain\n{evidence(stream)}"


def test_kill_9_under_a_steady_stream_duplicates_at_most_one_per_pool_process_per_kill(
    stream: RunResult,
) -> None:
    assert stream.tally.duplicates <= stream.duplicate_window, sorted(stream.tally.duplicated)
