"""Per-recipient caps and provider send rates, on fakeredis."""

from __future__ import annotations

import fakeredis
import pytest

from notifier import keys
from notifier.errors import ConfigurationError
from notifier.ratelimit import RateRule, RecipientLimiter, Throttle, parse_rate_limits
from tests.conftest import make_settings


def test_the_default_rules_cap_password_resets_and_sms() -> None:
    assert parse_rate_limits("password_reset=5/h,sms=10/h") == (
        RateRule("password_reset", 5, 3600),
        RateRule("sms", 10, 3600),
    )


def test_a_period_may_carry_a_multiple() -> None:
    assert parse_rate_limits("sms=3/15m") == (RateRule("sms", 3, 900),)


def test_an_empty_spec_means_no_limits() -> None:
    assert parse_rate_limits("") == ()


def test_none_turns_every_limit_off() -> None:
    assert parse_rate_limits("none") == ()


@pytest.mark.parametrize("spec", ["sms=10", "sms=ten/h", "sms=10/w", "=5/h", "sms:5/h"])
def test_a_malformed_rule_is_refused_with_the_expected_form(spec: str) -> None:
    with pytest.raises(ValueError, match="NAME=COUNT/PERIOD"):
        parse_rate_limits(spec)


def test_a_malformed_rule_is_named_by_its_position_not_its_text() -> None:
    with pytest.raises(ValueError, match="rule 2 ") as info:
        parse_rate_limits("sms=10/h, password_reset=lots")

    assert "lots" not in str(info.value)


def test_settings_refuse_a_malformed_rate_limit() -> None:
    with pytest.raises(ConfigurationError, match=r"NOTIFIER_RATE_LIMITS: .*NAME=COUNT/PERIOD"):
        make_settings(notifier_rate_limits="password_reset=lots")


@pytest.fixture
def limiter() -> RecipientLimiter:
    return RecipientLimiter(fakeredis.FakeRedis(), (RateRule("password_reset", 5, 3600),))


def check(limiter: RecipientLimiter, delivery_id: str, *, address: str = "ada@example.com",
          template: str = "password_reset", now: float = 7200.0) -> RateRule | None:  # fmt: skip
    return limiter.exceeded(
        delivery_id=delivery_id, template=template, channel="email", address=address, now=now
    )


def test_a_recipient_gets_up_to_the_limit_and_no_more(limiter: RecipientLimiter) -> None:
    verdicts = [check(limiter, f"d{i}") for i in range(8)]

    assert verdicts[:5] == [None] * 5
    assert verdicts[5:] == [RateRule("password_reset", 5, 3600)] * 3


def test_a_retried_delivery_is_counted_once(limiter: RecipientLimiter) -> None:
    for _ in range(10):
        assert check(limiter, "same-delivery") is None


def test_limits_are_per_recipient_and_ignore_address_case(limiter: RecipientLimiter) -> None:
    for i in range(5):
        check(limiter, f"a{i}", address="ada@example.com")

    assert check(limiter, "a5", address="ADA@example.com") is not None
    assert check(limiter, "g0", address="grace@example.com") is None


def test_plus_addressed_variants_share_one_allowance(limiter: RecipientLimiter) -> None:
    # Most providers deliver ada+anything@ to ada@: one mailbox, one allowance.
    verdicts = [check(limiter, f"d{i}", address=f"ada+{i}@example.com") for i in range(5)]

    assert verdicts == [None] * 5
    assert check(limiter, "d5", address="ada@example.com") is not None
    assert check(limiter, "d6", address="Ada+other+tags@example.com") is not None


def test_mailboxes_that_differ_before_the_tag_are_counted_apart(
    limiter: RecipientLimiter,
) -> None:
    for i in range(5):
        check(limiter, f"a{i}", address=f"ada+{i}@example.com")

    assert check(limiter, "b0", address="adam+1@example.com") is None
    assert check(limiter, "c0", address="ada+1@example.org") is None


def test_phone_numbers_are_counted_each_on_its_own() -> None:
    # An E.164 number starts with "+": there is no tag to cut.
    limiter = RecipientLimiter(fakeredis.FakeRedis(), (RateRule("sms", 1, 3600),))

    def sms_to(number: str, delivery_id: str) -> RateRule | None:
        return limiter.exceeded(
            delivery_id=delivery_id, template="t", channel="sms", address=number, now=7200.0
        )

    assert sms_to("+447911123456", "s0") is None
    assert sms_to("+447911123457", "s1") is None
    assert sms_to("+447911123456", "s2") is not None


def test_a_new_window_starts_afresh(limiter: RecipientLimiter) -> None:
    for i in range(5):
        check(limiter, f"d{i}", now=7200.0)

    assert check(limiter, "d5", now=7200.0 + 3600) is None


def test_templates_without_a_rule_are_not_limited(limiter: RecipientLimiter) -> None:
    for i in range(20):
        assert check(limiter, f"d{i}", template="registration_confirmation") is None


def test_the_limiter_keeps_no_address_in_redis_keys() -> None:
    client = fakeredis.FakeRedis()
    limiter = RecipientLimiter(client, (RateRule("password_reset", 5, 3600),))
    check(limiter, "d0")

    assert all(b"ada" not in key for key in client.keys("*"))


# --- an operator's leave to skip the limits, once ------------------------------------


def test_a_replay_grant_lets_its_delivery_skip_the_limits_once(limiter: RecipientLimiter) -> None:
    token = limiter.grant("d-1")

    assert limiter.redeem(token, "d-1") is True
    assert limiter.redeem(token, "d-1") is False


def test_a_replay_grant_is_for_its_own_delivery_only(limiter: RecipientLimiter) -> None:
    token = limiter.grant("d-1")

    assert limiter.redeem(token, "d-2") is False
    assert limiter.redeem(token, "d-1") is False  # spent by the attempt, not kept for d-1


def test_a_made_up_replay_grant_is_refused(limiter: RecipientLimiter) -> None:
    assert limiter.redeem("made-up-token", "d-1") is False


def test_a_replay_grant_expires_in_redis() -> None:
    client = fakeredis.FakeRedis()
    limiter = RecipientLimiter(client, ())

    token = limiter.grant("d-1")

    assert 0 < client.ttl(keys.replay_grant(token)) <= keys.REPLAY_GRANT_TTL


def test_replay_grants_are_unguessable(limiter: RecipientLimiter) -> None:
    tokens = {limiter.grant("d-1") for _ in range(100)}

    assert len(tokens) == 100
    assert all(len(token) >= 32 for token in tokens)


def test_a_throttle_lets_its_rate_through_then_delays() -> None:
    throttle = Throttle(fakeredis.FakeRedis(), "twilio", per_second=3)

    delays = [throttle.delay(now=100.2) for _ in range(7)]

    assert delays[:3] == [0.0, 0.0, 0.0]
    assert delays[3:6] == pytest.approx([0.8, 0.8, 0.8])
    assert delays[6] == pytest.approx(1.8)


def test_a_throttle_below_one_per_second_spaces_sends_out() -> None:
    throttle = Throttle(fakeredis.FakeRedis(), "twilio", per_second=0.5)

    assert throttle.delay(now=100.0) == 0.0
    assert throttle.delay(now=100.5) == pytest.approx(1.5)


def test_a_zero_rate_means_no_throttle_and_no_redis_call() -> None:
    client = fakeredis.FakeRedis()
    throttle = Throttle(client, "smtp", per_second=0)

    assert [throttle.delay(now=1.0) for _ in range(100)] == [0.0] * 100
    assert client.keys("*") == []
