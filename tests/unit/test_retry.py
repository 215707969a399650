"""Retry policy (docs/DESIGN.md §1): full-jitter backoff bounds, the transient/permanent split."""

from __future__ import annotations

import random
import smtplib
import socket
import ssl
from collections.abc import Callable
from statistics import fmean

import pytest
import requests
from twilio.base.exceptions import TwilioRestException

from notifier.errors import (
    ConfigurationError,
    InvalidEventError,
    NotifierError,
    PermanentError,
    ProviderUnavailableError,
    TransientError,
)
from notifier.retry import RetryPolicy, backoff, classify
from tests.conftest import make_settings

BASE = 5.0
CAP = 600.0


def ceiling(retry: int, base: float = BASE, cap: float = CAP) -> float:
    return min(cap, base * 2.0 ** (retry - 1))


# --- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize("retry", range(1, 13))
def test_backoff_stays_between_zero_and_the_capped_exponential_ceiling(retry: int) -> None:
    rng = random.Random(retry)

    delays = [backoff(retry, BASE, CAP, rng) for _ in range(500)]

    assert all(0 <= delay <= ceiling(retry) for delay in delays)


@pytest.mark.parametrize("retry", [1, 2, 3, 5, 8, 12])
def test_backoff_uses_the_whole_window_up_to_its_ceiling(retry: int) -> None:
    rng = random.Random(1000 + retry)

    delays = [backoff(retry, BASE, CAP, rng) for _ in range(500)]

    assert max(delays) > 0.95 * ceiling(retry)
    assert min(delays) < 0.05 * ceiling(retry)


@pytest.mark.parametrize("retry", [1, 4, 20])
def test_backoff_is_roughly_uniform_with_its_mean_near_half_the_ceiling(retry: int) -> None:
    rng = random.Random(42)

    delays = [backoff(retry, BASE, CAP, rng) for _ in range(2000)]

    # The mean of 2,000 uniform samples varies by ~1.3 % of the expected mean (one
    # standard deviation); 6 % is far outside chance, and the seed makes it repeatable.
    assert fmean(delays) == pytest.approx(ceiling(retry) / 2, rel=0.06)
    below_half = sum(delay < ceiling(retry) / 2 for delay in delays)
    assert 900 < below_half < 1100


@pytest.mark.parametrize("retry", [100, 1_000, 100_000])
def test_backoff_respects_the_cap_at_large_retry_numbers_without_overflow(retry: int) -> None:
    rng = random.Random(retry)

    delays = [backoff(retry, BASE, CAP, rng) for _ in range(200)]

    assert all(0 <= delay <= CAP for delay in delays)
    assert max(delays) > 0.9 * CAP


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff(3, BASE, CAP, random.Random(7)) for _ in range(3)]
    second = [backoff(3, BASE, CAP, random.Random(7)) for _ in range(3)]

    assert first == second


def test_backoff_works_without_an_rng() -> None:
    assert 0 <= backoff(2, BASE, CAP) <= ceiling(2)


@pytest.mark.parametrize("retry", [0, -1])
def test_backoff_rejects_retry_numbers_below_one(retry: int) -> None:
    with pytest.raises(ValueError, match="retry"):
        backoff(retry, BASE, CAP)


# --- RetryPolicy --------------------------------------------------------------------------


def test_no_delay_is_given_once_all_attempts_are_used() -> None:
    policy = RetryPolicy(max_attempts=3, base=BASE, cap=CAP)

    assert policy.delay_after(3) is None
    assert policy.delay_after(4) is None


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_delay_within_the_retry_ceiling_is_given_before_the_last_attempt(attempt: int) -> None:
    policy = RetryPolicy(max_attempts=3, base=BASE, cap=CAP)

    delay = policy.delay_after(attempt, random.Random(attempt))

    assert delay is not None
    assert 0 <= delay <= ceiling(attempt)


def test_a_single_attempt_policy_never_retries() -> None:
    assert RetryPolicy(max_attempts=1, base=BASE, cap=CAP).delay_after(1) is None


def test_the_policy_is_read_from_the_notifier_retry_settings() -> None:
    settings = make_settings(
        notifier_retry_max_attempts=4,
        notifier_retry_backoff_base=0.5,
        notifier_retry_backoff_max=30,
        notifier_visibility_timeout=60,
        notifier_claim_lease=30,
        mail_timeout=2,  # one send fits the time limits of that lease
    )

    assert RetryPolicy.from_settings(settings) == RetryPolicy(max_attempts=4, base=0.5, cap=30)


# --- classify -----------------------------------------------------------------------------


def cert_error() -> ssl.SSLCertVerificationError:
    """The exception as the ssl module raises it, with its verify_* attributes set."""
    exc = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    exc.verify_code = 18
    exc.verify_message = "self-signed certificate"
    return exc


def twilio(status: int, code: int | None, msg: str = "error") -> TwilioRestException:
    return TwilioRestException(status=status, uri="/x", msg=msg, code=code)


Case = tuple[Callable[[], BaseException], type[NotifierError], tuple[str, ...]]

CLASSIFY: dict[str, Case] = {
    # SMTP: 5xx permanent, 4xx transient, the reply code and text kept.
    "recipient-refused-550": (
        lambda: smtplib.SMTPRecipientsRefused({"a@x": (550, b"5.1.1 no")}),
        PermanentError,
        ("550", "5.1.1 no"),
    ),
    "recipient-refused-451": (
        lambda: smtplib.SMTPRecipientsRefused({"a@x": (451, b"4.7.1 greylisted")}),
        TransientError,
        ("451", "4.7.1 greylisted"),
    ),
    "sender-refused-552": (
        lambda: smtplib.SMTPSenderRefused(552, b"5.3.4 too big", "b@x"),
        PermanentError,
        ("552", "5.3.4 too big"),
    ),
    "sender-refused-451": (
        lambda: smtplib.SMTPSenderRefused(451, b"4.3.0 try later", "b@x"),
        TransientError,
        ("451", "4.3.0 try later"),
    ),
    "data-error-554": (
        lambda: smtplib.SMTPDataError(554, b"5.7.1 spam"),
        PermanentError,
        ("554", "5.7.1 spam"),
    ),
    "data-error-421": (
        lambda: smtplib.SMTPDataError(421, b"4.4.2 timeout"),
        ProviderUnavailableError,
        ("421", "4.4.2 timeout"),
    ),
    "auth-failed-535": (
        lambda: smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"),
        ConfigurationError,
        ("535", "5.7.8 bad credentials"),
    ),
    "server-disconnected": (
        lambda: smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
        ProviderUnavailableError,
        ("Connection unexpectedly closed",),
    ),
    "connect-error-421": (
        lambda: smtplib.SMTPConnectError(421, b"4.3.2 too busy"),
        ProviderUnavailableError,
        ("421", "4.3.2 too busy"),
    ),
    # Network.
    "connection-refused": (
        lambda: ConnectionRefusedError(111, "Connection refused"),
        ProviderUnavailableError,
        ("Connection refused",),
    ),
    "timeout": (lambda: TimeoutError("timed out"), ProviderUnavailableError, ("timed out",)),
    "socket-timeout": (
        lambda: socket.timeout("timed out"),  # noqa: UP041 - the name older code raises
        ProviderUnavailableError,
        ("timed out",),
    ),
    "connection-reset": (
        lambda: ConnectionResetError(104, "Connection reset by peer"),
        ProviderUnavailableError,
        ("Connection reset by peer",),
    ),
    "tls-certificate": (cert_error, ConfigurationError, ("self-signed certificate",)),
    # Twilio: 429 and 5xx transient, other 4xx permanent, the Twilio code kept.
    "twilio-400-21211": (
        lambda: twilio(400, 21211, "invalid"),
        PermanentError,
        ("21211", "invalid"),
    ),
    "twilio-400-21610": (
        lambda: twilio(400, 21610, "unsubscribed"),
        PermanentError,
        ("21610",),
    ),
    "twilio-401": (lambda: twilio(401, 20003, "auth"), PermanentError, ("401", "20003")),
    "twilio-429": (lambda: twilio(429, 20429, "too many"), TransientError, ("429", "20429")),
    "twilio-500": (lambda: twilio(500, None, "oops"), TransientError, ("500",)),
    "twilio-503": (lambda: twilio(503, 20503, "unavailable"), TransientError, ("503", "20503")),
    # HTTP transport (Twilio's client uses requests).
    "requests-connection-error": (
        lambda: requests.ConnectionError("connection aborted"),
        ProviderUnavailableError,
        ("connection aborted",),
    ),
    "requests-timeout": (
        lambda: requests.Timeout("read timed out"),
        ProviderUnavailableError,
        ("read timed out",),
    ),
    "requests-invalid-url": (
        lambda: requests.exceptions.InvalidURL("bad url"),
        ConfigurationError,
        ("bad url",),
    ),
}


@pytest.mark.parametrize(("make", "expected", "_"), list(CLASSIFY.values()), ids=list(CLASSIFY))
def test_classify_maps_each_provider_error_to_its_kind(
    make: Callable[[], BaseException], expected: type[NotifierError], _: tuple[str, ...]
) -> None:
    assert type(classify(make())) is expected


@pytest.mark.parametrize(("make", "_", "fragments"), list(CLASSIFY.values()), ids=list(CLASSIFY))
def test_classify_keeps_the_provider_code_and_text_in_the_message(
    make: Callable[[], BaseException], _: type[NotifierError], fragments: tuple[str, ...]
) -> None:
    message = str(classify(make()))

    for fragment in fragments:
        assert fragment in message


def test_a_configuration_error_is_a_permanent_error() -> None:
    assert isinstance(classify(smtplib.SMTPAuthenticationError(535, b"no")), PermanentError)


def test_a_bare_certificate_error_is_a_configuration_error_not_a_crash() -> None:
    # ssl.CertificateError is SSLCertVerificationError; raised by hand it has no
    # verify_message attribute.
    exc = ssl.CertificateError("hostname 'smtp.example.com' doesn't match 'mail.example.net'")

    result = classify(exc)

    assert type(result) is ConfigurationError
    assert "smtp.example.com" in str(result)


def test_an_exception_without_a_rule_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="ValueError"):
        classify(ValueError("what is this"))


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(TransientError("later"), id="transient"),
        pytest.param(PermanentError("never"), id="permanent"),
        pytest.param(ConfigurationError("fix it"), id="configuration"),
        pytest.param(InvalidEventError(["type: missing"]), id="invalid-event"),
    ],
)
def test_a_notifier_error_passes_through_unchanged(exc: NotifierError) -> None:
    assert classify(exc) is exc
