"""Issue 14 item 5: an SMTP outage longer than the retry schedule needs no operator.

The short version of ``python -m tests.reliability.outage``: a steady stream
of 10 events/s, the SMTP server refusing connections for 12 s (the retry
schedule here is used up in under a second, so the old code dead-lettered
every email of the outage), two password resets whose link expires during
it. Settings are scaled about 1:30 (circuit cool-down 1 s); the recovery
bound of 6 s is the issue's 2 minutes at 1:20, for a loaded machine.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import report
from tests.reliability.outage import Figures, Scenario, run

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SHORT = Scenario(rate=10.0, before=2.0, outage=12.0, after=2.0, resets=2, reset_lifetime=3.0)
RECOVERY_BOUND = 6.0
BYTES_PER_HELD_BOUND = 4096  # an email's job is about 1.5 KB of JSON


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """One run of the scenario, shared by the tests below (each checks one outcome of it)."""
    figures = run(SHORT, tmp_path_factory.mktemp("outage-hold"))
    report("smtp outage held", **figures.as_dict())
    return figures


def test_the_emails_of_the_outage_wait_in_the_hold(outage: Figures) -> None:
    # Sampled every 0.2 s: the last moments before the return may be missed.
    assert outage.held_peak >= 0.9 * (outage.during_outage - SHORT.resets)


def test_no_email_is_dead_lettered_but_the_resets_that_expired(outage: Figures) -> None:
    assert outage.dead_unexpected == 0, outage.dead_by_status


def test_a_reset_whose_link_expires_during_the_outage_is_dead_lettered_expired(
    outage: Figures,
) -> None:
    assert outage.expired_resets == SHORT.resets


def test_every_other_email_is_delivered_once_and_none_is_lost(outage: Figures) -> None:
    assert outage.lost == 0
    assert outage.delivered == outage.planned - SHORT.resets
    assert outage.duplicates == 0


def test_the_held_emails_are_delivered_soon_after_the_provider_returns(outage: Figures) -> None:
    assert outage.recovery_seconds <= RECOVERY_BOUND


def test_the_hold_costs_a_bounded_number_of_bytes_per_email_and_empties(outage: Figures) -> None:
    assert outage.bytes_per_held <= BYTES_PER_HELD_BOUND
    assert outage.hold_left == 0


def test_redis_grows_during_the_outage_by_no_more_than_the_held_emails_need(
    outage: Figures,
) -> None:
    # Beside the hold: the ledger's markers, kombu's bookkeeping, tallies (2 MiB is ample).
    growth = outage.used_memory_peak - outage.used_memory_before
    assert growth <= outage.held_peak * BYTES_PER_HELD_BOUND + 2 * 1024 * 1024
