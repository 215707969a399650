"""Send budgets (issue 14): a send's worst case, the time limits, and the recovery bound."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

import celeryconfig
from notifier import budget
from notifier.errors import ConfigurationError
from notifier.retry import RetryPolicy
from notifier.testing import make_settings

PASSWORD = "hunter2-mail-password"
TOKEN = "tw-auth-token-0123456789abcdef"
TWILIO = {
    "twilio_account_sid": "AC0123456789abcdef0123456789abcdef",
    "twilio_auth_token": TOKEN,
    "twilio_phone_number": "+14155550123",
}


def refusal(**values: Any) -> str:
    with pytest.raises(ConfigurationError) as info:
        make_settings(**values)
    return "".join(traceback.format_exception(info.value))


# --- the worst case of one attempt --------------------------------------------------------


def test_one_email_to_the_default_server_waits_twelve_times_at_worst() -> None:
    # A dropped pooled connection, connect, greeting, EHLO, STARTTLS + EHLO, 5 in the transaction.
    assert budget.email_waits(make_settings()) == 12
    assert budget.email_attempt_worst_case(make_settings()) == 120


def test_login_adds_every_mechanism_smtplib_may_try_and_implicit_tls_its_handshake() -> None:
    plain = budget.smtp_waits(use_ssl=False, use_tls=False, logs_in=False)
    assert budget.smtp_waits(use_ssl=False, use_tls=False, logs_in=True) == plain + 5
    assert budget.smtp_waits(use_ssl=True, use_tls=False, logs_in=False) == plain + 1
    assert budget.smtp_waits(use_ssl=False, use_tls=True, logs_in=False) == plain + 3


def test_a_fallback_server_adds_its_own_waits_to_the_attempt() -> None:
    settings = make_settings(
        mail_timeout=1,
        mail_username="mailer",
        mail_fallback_server="smtp2.example.com",
        mail_fallback_use_tls=False,
    )
    primary = budget.smtp_waits(use_ssl=False, use_tls=True, logs_in=True)
    fallback = budget.smtp_waits(use_ssl=False, use_tls=False, logs_in=False)
    assert budget.email_attempt_worst_case(settings) == primary + fallback


def test_one_sms_waits_four_twilio_timeouts_at_worst() -> None:
    assert budget.sms_attempt_worst_case(make_settings(twilio_timeout=7)) == 28


# --- the settings check -------------------------------------------------------------------


def test_a_lease_of_8_s_with_mail_timeout_10_is_refused_naming_both() -> None:
    shown = refusal(
        notifier_claim_lease=8,
        notifier_visibility_timeout=30,
        notifier_retry_backoff_max=1,
        mail_timeout=10,
        mail_username="mailer",
        mail_password=PASSWORD,
    )

    assert "MAIL_TIMEOUT" in shown
    assert "NOTIFIER_CLAIM_LEASE" in shown
    assert PASSWORD not in shown


def test_a_transaction_inside_the_time_for_sends_is_accepted_and_one_past_it_refused() -> None:
    # Lease 8: hard 7.6 s, soft 7.2 s, sends must end by 6.8 s: 5 waits of MAIL_TIMEOUT.
    short = {
        "notifier_claim_lease": 8,
        "notifier_visibility_timeout": 17,
        "notifier_retry_backoff_max": 1,
    }
    limits = budget.time_limits(8)
    assert (limits.soft, limits.hard, limits.sends) == pytest.approx((7.2, 7.6, 6.8))
    assert make_settings(**short, mail_timeout=1.35)  # 6.75 s
    refusal(**short, mail_timeout=1.37)  # 6.85 s


def test_a_refusal_says_which_mail_timeout_or_lease_would_fit() -> None:
    short = {
        "notifier_claim_lease": 30,
        "notifier_visibility_timeout": 61,
        "notifier_retry_backoff_max": 30,
    }
    shown = refusal(**short, mail_username="mailer", mail_password=PASSWORD)  # 50 s > 25.5 s
    assert PASSWORD not in shown
    timeout = float(shown.split("lower MAIL_TIMEOUT to ")[1].split(" s")[0])
    lease = int(shown.split("raise NOTIFIER_CLAIM_LEASE to ")[1].split(" s")[0])
    visibility = int(shown.split("NOTIFIER_VISIBILITY_TIMEOUT above ")[1].split(" s")[0])

    assert make_settings(**short, mail_timeout=timeout)
    assert make_settings(
        **short | {"notifier_claim_lease": lease, "notifier_visibility_timeout": visibility + 1}
    )


@pytest.mark.parametrize(
    "mail",
    [
        pytest.param({"mail_username": "mailer", "mail_password": PASSWORD}, id="tls-and-login"),
        pytest.param(
            {
                "mail_username": "mailer",
                "mail_password": PASSWORD,
                "mail_fallback_server": "smtp2.example.com",
                "mail_fallback_username": "mailer2",
            },
            id="with-a-fallback",
        ),
    ],
)
def test_login_and_a_fallback_start_with_the_defaults_though_their_worst_case_is_longer(
    mail: dict[str, Any],
) -> None:
    # 170 s and 340 s at worst: such an attempt is cut by the task's deadline
    # before its message is handed over, and retried (notifier/budget.py).
    settings = make_settings(**mail)
    assert budget.email_attempt_worst_case(settings) > settings.time_limits.sends
    assert budget.inline_floor(settings) <= settings.time_limits.sends


def test_a_message_is_handed_over_one_reply_wait_before_the_time_for_sends_ends() -> None:
    settings = make_settings(mail_timeout=10, twilio_timeout=7)  # sends end 125 s in
    assert budget.hand_over_by(settings, "email", started=1000.0) == 1115.0
    assert budget.hand_over_by(settings, "sms", started=1000.0) == 1118.0


def test_sms_attempts_are_checked_only_when_twilio_is_configured() -> None:
    short = {
        "notifier_claim_lease": 30,
        "notifier_visibility_timeout": 60,
        "notifier_retry_backoff_max": 30,
        "mail_timeout": 1,
    }
    assert make_settings(**short, twilio_timeout=10)  # 40 s > 25.5 s, but SMS is off
    shown = refusal(**short, **TWILIO, twilio_timeout=10)
    assert "TWILIO_TIMEOUT" in shown
    assert TOKEN not in shown


def test_the_time_limits_end_in_order_before_the_claim_lease() -> None:
    for lease in (2, 6, 8, 16, 100, 140, 300):
        limits = budget.time_limits(lease)
        assert 0 < limits.sends < limits.soft < limits.hard < lease


# --- the defaults (issue 14 item 7) -------------------------------------------------------


def test_the_defaults_let_one_email_to_the_default_server_end_before_the_time_for_sends() -> None:
    settings = make_settings()
    assert budget.email_attempt_worst_case(settings) < settings.time_limits.sends
    assert budget.sms_attempt_worst_case(settings) < settings.time_limits.sends


def test_a_dead_workers_messages_return_within_five_minutes_by_default() -> None:
    settings = make_settings()
    bound = settings.notifier_visibility_timeout + celeryconfig.unacked_sweep_interval(settings)
    assert bound == 289
    assert bound <= 300


def test_the_default_retry_schedule_waits_at_most_395_s_over_its_seven_retries() -> None:
    policy = RetryPolicy.from_settings(make_settings())
    ceilings = [min(policy.cap, policy.base * 2 ** (retry - 1)) for retry in range(1, 8)]
    assert policy.max_attempts == 8
    assert ceilings == [5, 10, 20, 40, 80, 120, 120]
    assert sum(ceilings) == 395
