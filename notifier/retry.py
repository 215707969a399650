"""Retry policy: when to try again, and how long to wait.

Two pure pieces, kept apart from the tasks so they can be tested alone:
``backoff`` (full-jitter exponential delay) and ``classify`` (a provider's
exception → ``TransientError`` or ``PermanentError``). Every decision to retry
in the service goes through these two functions.
"""

from __future__ import annotations

import random
import smtplib
import ssl
from dataclasses import dataclass

import requests
from twilio.base.exceptions import TwilioRestException

from notifier.errors import (
    ConfigurationError,
    NotifierError,
    PermanentError,
    ProviderUnavailableError,
    TransientError,
)
from notifier.settings import Settings

__all__ = ["ProviderError", "RetryPolicy", "backoff", "classify"]

# The exception families the channels catch and hand to ``classify``.
ProviderError = (smtplib.SMTPException, OSError, TwilioRestException)


def backoff(retry: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): full jitter.

    ``uniform(0, min(cap, base * 2**(retry-1)))``: only the upper bound grows,
    which spreads a thundering herd of retries over the whole window.
    """
    if retry < 1:
        raise ValueError("retry counts from 1")
    # min() before the power would overflow for large retry numbers.
    exponent = min(retry - 1, 62)
    ceiling = min(cap, base * 2.0**exponent)
    return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a delivery gets (the first included) and the backoff bounds."""

    max_attempts: int
    base: float
    cap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy configured by ``NOTIFIER_RETRY_*``."""
        return cls(
            max_attempts=settings.notifier_retry_max_attempts,
            base=settings.notifier_retry_backoff_base,
            cap=settings.notifier_retry_backoff_max,
        )

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float | None:
        """Countdown before the attempt after ``attempt``, or None when attempts are used up."""
        if attempt >= self.max_attempts:
            return None
        return backoff(attempt, self.base, self.cap, rng)


def _by_reply_code(code: int, text: str) -> NotifierError:
    if 500 <= code < 600:
        return PermanentError(text)
    return TransientError(text)


def _smtp_reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {text}".strip()


def classify(exc: BaseException) -> NotifierError:
    """Map a provider's exception to our split; the table is docs/DESIGN.md §1 / issue 4.

    SMTP: 5xx replies and authentication failures are permanent, 4xx replies,
    dropped connections, refusals and timeouts transient. Twilio: 429 and 5xx
    transient, other 4xx (invalid number, unsubscribed) permanent; network
    errors transient.
    """
    if isinstance(exc, NotifierError):
        return exc
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        # An operator must fix the credentials; hammering the server won't.
        return ConfigurationError(
            f"SMTP authentication failed: {_smtp_reply(exc.smtp_code, exc.smtp_error)}"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = list(exc.recipients.values())
        text = "; ".join(_smtp_reply(code, msg) for code, msg in replies)
        if replies and all(500 <= code < 600 for code, _ in replies):
            return PermanentError(f"recipient refused: {text}")
        return TransientError(f"recipient deferred: {text}")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = _smtp_reply(exc.smtp_code, exc.smtp_error)
        if exc.smtp_code == 421 or isinstance(exc, smtplib.SMTPConnectError):
            return ProviderUnavailableError(f"SMTP service unavailable: {text}")
        return _by_reply_code(exc.smtp_code, text)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return ConfigurationError(f"SMTP server lacks a required extension: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return ProviderUnavailableError(f"SMTP server disconnected: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return TransientError(f"SMTP error: {exc}")
    if isinstance(exc, TwilioRestException):
        text = f"Twilio {exc.status} (code {exc.code}): {exc.msg}"
        if exc.status == 429 or exc.status >= 500:
            return TransientError(text)
        return PermanentError(text)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or exc
        return ConfigurationError(f"TLS certificate rejected: {reason}")
    # requests' exceptions are OSErrors too: look at them before the generic case.
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return ProviderUnavailableError(f"HTTP request failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, requests.RequestException):
        return ConfigurationError(f"HTTP request invalid: {type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return ProviderUnavailableError(f"{type(exc).__name__}: {exc}")
    raise TypeError(f"classify() got an exception it has no rule for: {exc!r}") from exc
