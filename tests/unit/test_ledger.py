"""The idempotency ledger on fakeredis: claim, busy, sent, release, lease expiry."""

from __future__ import annotations

import importlib.util

import fakeredis
import pytest
from fakeredis._socket import _base as fakeredis_base

from notifier import keys
from notifier.channels import Receipt
from notifier.ledger import Claim, ClaimState, Ledger, SentMarker, parse_sent

DELIVERY = "6b470297-e06f-5aaf-bf23-694e1e4e0c63"
OTHER_DELIVERY = "0d1a3c52-63bb-5f0e-8d3e-2f1c9d7b4a10"
TTL = 3600
LEASE = 300
RECEIPT = Receipt(channel="email", provider="primary", provider_id="<abc@example.com>")


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail(
            "the ledger runs Lua scripts; fakeredis needs lupa for them: "
            "install the dev extra (fakeredis[lua], which pulls lupa)"
        )
    return fakeredis.FakeRedis()


class RedisTime:
    """fakeredis's clock, moved by the test: a lease runs out without sleeping.

    fakeredis reads ``time.time()`` through its ``_socket._base`` module when it
    stamps each command; that is the clock leases (``PX``) are measured by.
    """

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def redis_time(monkeypatch: pytest.MonkeyPatch) -> RedisTime:
    clock = RedisTime()
    monkeypatch.setattr(fakeredis_base, "time", clock)
    return clock


@pytest.fixture
def ledger(client: fakeredis.FakeRedis) -> Ledger:
    return Ledger(client, ttl=TTL, lease=LEASE)


def test_first_claim_is_ours(ledger: Ledger) -> None:
    claim = ledger.claim(DELIVERY)

    assert claim.state is ClaimState.CLAIMED
    assert claim.token.startswith("claim:")


def test_claim_holds_a_lease(ledger: Ledger, client: fakeredis.FakeRedis) -> None:
    ledger.claim(DELIVERY)

    assert client.pttl(keys.ledger(DELIVERY)) == pytest.approx(LEASE * 1000, abs=1000)


def test_second_claim_is_busy_until_the_lease_runs_out(ledger: Ledger) -> None:
    ledger.claim(DELIVERY)

    second = ledger.claim(DELIVERY)

    assert second.state is ClaimState.BUSY
    assert second.token == ""
    assert second.retry_after == pytest.approx(LEASE, abs=1)


def test_claims_are_per_delivery(ledger: Ledger) -> None:
    ledger.claim(DELIVERY)

    assert ledger.claim(OTHER_DELIVERY).state is ClaimState.CLAIMED


def test_each_claim_gets_its_own_token(ledger: Ledger) -> None:
    first = ledger.claim(DELIVERY)
    ledger.release(DELIVERY, first)

    assert ledger.claim(DELIVERY).token != first.token


def test_claim_after_mark_sent_is_sent(ledger: Ledger) -> None:
    ledger.claim(DELIVERY)
    ledger.mark_sent(DELIVERY, RECEIPT)

    claim = ledger.claim(DELIVERY)

    assert claim.state is ClaimState.SENT
    assert claim.token == ""


def test_sent_marker_names_the_provider_and_its_id(ledger: Ledger) -> None:
    ledger.claim(DELIVERY)
    ledger.mark_sent(DELIVERY, RECEIPT)

    assert ledger.state(DELIVERY) == "sent:primary:<abc@example.com>"


def test_sent_marker_expires_after_the_ledger_ttl(
    ledger: Ledger, client: fakeredis.FakeRedis
) -> None:
    ledger.claim(DELIVERY)
    ledger.mark_sent(DELIVERY, RECEIPT)

    assert client.ttl(keys.ledger(DELIVERY)) == TTL


def test_release_frees_the_claim_for_the_next_attempt(ledger: Ledger) -> None:
    claim = ledger.claim(DELIVERY)

    ledger.release(DELIVERY, claim)

    assert ledger.state(DELIVERY) is None
    assert ledger.claim(DELIVERY).state is ClaimState.CLAIMED


def test_release_with_a_stale_token_leaves_the_current_claim_alone(ledger: Ledger) -> None:
    current = ledger.claim(DELIVERY)
    stale = Claim(ClaimState.CLAIMED, token="claim:0123456789abcdef")

    ledger.release(DELIVERY, stale)

    assert ledger.state(DELIVERY) == current.token
    assert ledger.claim(DELIVERY).state is ClaimState.BUSY


def test_release_after_mark_sent_keeps_the_sent_marker(ledger: Ledger) -> None:
    claim = ledger.claim(DELIVERY)
    ledger.mark_sent(DELIVERY, RECEIPT)

    ledger.release(DELIVERY, claim)

    assert ledger.is_sent(DELIVERY)


def test_expired_lease_can_be_claimed_again(
    client: fakeredis.FakeRedis, redis_time: RedisTime
) -> None:
    ledger = Ledger(client, ttl=TTL, lease=1)
    crashed = ledger.claim(DELIVERY)

    redis_time.advance(1.1)
    retry = ledger.claim(DELIVERY)

    assert retry.state is ClaimState.CLAIMED
    assert retry.token != crashed.token


def test_crashed_worker_releasing_late_does_not_free_the_new_claim(
    client: fakeredis.FakeRedis, redis_time: RedisTime
) -> None:
    ledger = Ledger(client, ttl=TTL, lease=1)
    crashed = ledger.claim(DELIVERY)
    redis_time.advance(1.1)
    current = ledger.claim(DELIVERY)

    ledger.release(DELIVERY, crashed)

    assert ledger.state(DELIVERY) == current.token


def test_unknown_delivery_has_no_state(ledger: Ledger) -> None:
    assert ledger.state(DELIVERY) is None
    assert not ledger.is_sent(DELIVERY)


def test_claimed_delivery_is_not_sent(ledger: Ledger) -> None:
    claim = ledger.claim(DELIVERY)

    assert ledger.state(DELIVERY) == claim.token
    assert not ledger.is_sent(DELIVERY)


def test_marked_delivery_is_sent(ledger: Ledger) -> None:
    ledger.claim(DELIVERY)
    ledger.mark_sent(DELIVERY, RECEIPT)

    assert ledger.is_sent(DELIVERY)


def test_ledger_works_with_a_client_that_decodes_responses() -> None:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("fakeredis needs lupa for the ledger's Lua scripts")
    ledger = Ledger(fakeredis.FakeRedis(decode_responses=True), ttl=TTL, lease=LEASE)
    ledger.claim(DELIVERY)
    ledger.mark_sent(DELIVERY, RECEIPT)

    assert ledger.claim(DELIVERY).state is ClaimState.SENT
    assert ledger.is_sent(DELIVERY)


def test_the_first_record_of_a_send_says_so_and_a_repeat_does_not(ledger: Ledger) -> None:
    ledger.claim(DELIVERY)

    first = ledger.record_sent(DELIVERY, RECEIPT, at="2026-12-08T10:00:00.000Z", attempt=2)
    again = ledger.record_sent(DELIVERY, RECEIPT, at="2026-12-08T10:00:01.000Z", attempt=3)

    assert (first, again) == (True, False)


def test_a_recorded_send_reads_back_with_its_time_and_attempt(ledger: Ledger) -> None:
    ledger.record_sent(DELIVERY, RECEIPT, at="2026-12-08T10:00:00.000Z", attempt=2)

    assert ledger.is_sent(DELIVERY)
    assert parse_sent(ledger.state(DELIVERY)) == SentMarker(
        "primary", "<abc@example.com>", "2026-12-08T10:00:00.000Z", 2
    )


def test_a_marker_from_before_the_time_was_recorded_still_reads_as_sent() -> None:
    assert parse_sent("sent:primary:<abc@example.com>") == SentMarker(
        "primary", "<abc@example.com>"
    )
    assert parse_sent("claim:0123") is None
