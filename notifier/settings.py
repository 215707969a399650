"""The one settings object, read from the environment once per process.

Names come from docs/DESIGN.md §4 (the seed's ``MAIL_*``/``TWILIO_*`` plus ours); they
are a public contract. Everything else in notifier asks this object, never
``os.environ``.

A bad configuration raises ``ConfigurationError`` naming each setting and what
is wrong with it, never a value: pydantic's own ``ValidationError`` prints the
input (``input_value={...}``), and for a cross-check that input is every
setting, credentials included.
"""

from __future__ import annotations

import ipaddress
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from notifier import budget
from notifier.errors import ConfigurationError
from notifier.ratelimit import parse_rate_limits
from notifier.sentinel_url import DEFAULT_MASTER_NAME, SentinelUrl, is_sentinel_url

__all__ = ["Settings", "get_settings"]

TWILIO_DEFAULT_BASE_URL = "https://api.twilio.com"


class Settings(BaseSettings):
    """Every knob of the service. Field ``mail_server`` is read from ``MAIL_SERVER``, etc."""

    # env_ignore_empty: `MAIL_CA_FILE=` in an .env file means "unset", not Path("").
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, env_ignore_empty=True
    )

    # repr=False: the URL may carry a password (redis://:secret@host/0).
    redis_url: str = Field("redis://localhost:6379/0", repr=False)
    # Which master the Sentinels are asked for, with a sentinel:// REDIS_URL
    # (notifier/sentinel_url.py, docs/DESIGN.md §9).
    notifier_redis_master_name: str = Field(DEFAULT_MASTER_NAME, min_length=1)

    mail_server: str = "localhost"
    mail_port: int = Field(587, ge=1, le=65535)
    mail_use_tls: bool = True
    mail_use_ssl: bool = False
    mail_username: str | None = None
    mail_password: SecretStr | None = None
    mail_default_sender: str | None = None
    mail_timeout: float = Field(10.0, gt=0)
    mail_ca_file: Path | None = None
    mail_allow_plain_auth: bool = False

    # A second SMTP provider, tried within the same attempt when the primary
    # is unavailable. Unset server = no failover.
    mail_fallback_server: str | None = None
    mail_fallback_port: int = Field(587, ge=1, le=65535)
    mail_fallback_use_tls: bool = True
    mail_fallback_use_ssl: bool = False
    mail_fallback_username: str | None = None
    mail_fallback_password: SecretStr | None = None

    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_phone_number: str | None = None
    twilio_api_base_url: str = TWILIO_DEFAULT_BASE_URL
    twilio_timeout: float = Field(10.0, gt=0)

    notifier_retry_max_attempts: int = Field(8, ge=1)
    notifier_retry_backoff_base: float = Field(5.0, gt=0)
    # The three below bring a dead worker's messages back within 5 minutes
    # (289 s: the visibility timeout plus a sweep, celeryconfig), with every
    # relation of ``_consistent`` holding for the default mail settings.
    notifier_retry_backoff_max: float = Field(120.0, gt=0)
    notifier_visibility_timeout: int = Field(280, ge=1)
    notifier_ledger_ttl: int = Field(604_800, ge=60)
    notifier_max_redeliveries: int = Field(5, ge=1)
    # Seconds a delivery's claim in the ledger outlives a crashed sender; the
    # task time limits are derived from it (notifier.budget), so it always outlasts a send.
    notifier_claim_lease: int = Field(140, ge=2)
    notifier_rate_limits: str = "password_reset=5/h,sms=10/h"
    notifier_sms_mps: float = Field(1.0, ge=0)  # long code 1, toll-free 3, short code 100
    notifier_smtp_mps: float = Field(0.0, ge=0)  # 0 = the provider sets no quota
    notifier_circuit_cooldown: float = Field(30.0, ge=0)
    # Seconds an email may wait in the outage hold while every SMTP provider is
    # down (notifier.hold); 0 = no hold: retries and dead letters as before.
    notifier_outage_hold_max: float = Field(86_400.0, ge=0)
    notifier_dlq_alert_threshold: int = Field(1000, ge=1)
    # Seconds a dead letter is kept; 0 = forever (docs/DESIGN.md §10: nothing is
    # evicted unless an operator says so). Removed by notifier.dlq_retention.
    notifier_dlq_retention: float = Field(0.0, ge=0)
    # Seconds every per-delivery status key lives (notifier/status.py, docs/status.md).
    notifier_status_ttl: int = Field(604_800, ge=1)
    # Where Twilio reaches `notifier web` (docs/DESIGN.md §9); unset: no receipts are
    # requested, and an SMS's `sent` is final.
    notifier_public_url: str | None = None
    notifier_metrics_port: int = Field(9808, ge=0, le=65535)  # 0 = no metrics endpoint
    notifier_template_dir: Path | None = None
    notifier_log_level: str = "INFO"
    notifier_log_format: Literal["json", "console"] = "json"
    # Accept recipient addresses under .test (RFC 6761), which email-validator
    # refuses as not deliverable: for staging against a local MTA, never production.
    notifier_allow_special_domains: bool = False

    # Callbacks to the producer (docs/DESIGN.md §9, notifier/callbacks.py): off
    # unless both the URL and the secret are set. repr=False: a URL may carry a token.
    notifier_callback_url: str | None = Field(None, repr=False)
    notifier_callback_secret: SecretStr | None = None
    # Seconds per request (connect, then the reply's head); capped by the task's
    # time for sends, so a hanging endpoint never meets a time limit.
    notifier_callback_timeout: float = Field(10.0, gt=0)
    # `notifier web` (docs/DESIGN.md §9); NOTIFIER_PUBLIC_URL is above, with the status.
    notifier_web_host: str = "127.0.0.1"
    notifier_web_port: int = Field(8808, ge=0, le=65535)
    # The Bearer key of /v1/*; unset, those answer 503 (docs/DESIGN.md §10, "web auth").
    notifier_api_key: SecretStr | None = Field(None, repr=False)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # from None: the chained ValidationError would print every value.
            raise ConfigurationError(_describe(exc)) from None

    @field_validator("redis_url")
    @classmethod
    def _sentinel_url_parses(cls, value: str) -> str:
        # A redis:// URL is left to redis-py; a sentinel:// one is parsed here so
        # a mistake is named at start-up, not at the first connection.
        if is_sentinel_url(value):
            SentinelUrl.parse(value)  # ValueError without the URL (it may hold a password)
        return value

    @field_validator("twilio_api_base_url")
    @classmethod
    def _origin_only(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) origin such as https://api.twilio.com")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be an origin only (scheme://host[:port]), without a path")
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            # Every request carries TWILIO_AUTH_TOKEN (HTTP basic auth).
            raise ValueError(
                "must use https: plain http would send the auth token in clear "
                "(http is allowed to loopback only: 127.0.0.0/8, ::1, localhost)"
            )
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("notifier_callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an absolute http(s) URL such as https://app.example.com/hooks"
            )
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return value

    @field_validator("notifier_public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://notifier.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        # No trailing slash: paths are appended to it (``/twilio/status``).
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    @property
    def twilio_status_callback_url(self) -> str | None:
        """Where Twilio posts SMS status callbacks; None without ``NOTIFIER_PUBLIC_URL``."""
        if self.notifier_public_url is None:
            return None
        return self.notifier_public_url + "/twilio/status"

    @field_validator("notifier_rate_limits")
    @classmethod
    def _rate_limits_parse(cls, value: str) -> str:
        parse_rate_limits(value)  # raises ValueError naming the rule by position
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.mail_use_tls and self.mail_use_ssl:
            raise ValueError(
                "MAIL_USE_TLS (STARTTLS) and MAIL_USE_SSL (implicit TLS) exclude each other"
            )
        if self.mail_fallback_use_tls and self.mail_fallback_use_ssl:
            raise ValueError("MAIL_FALLBACK_USE_TLS and MAIL_FALLBACK_USE_SSL exclude each other")
        limits = self.time_limits
        if self.notifier_visibility_timeout <= self.notifier_retry_backoff_max + limits.hard:
            # A retry waits out its countdown in the worker that took it, then
            # runs: all of it before Redis hands the message to a second worker
            # (a duplicate run, counted as a redelivery towards poison).
            raise ValueError(
                "NOTIFIER_VISIBILITY_TIMEOUT must exceed NOTIFIER_RETRY_BACKOFF_MAX plus the "
                f"hard time limit ({_seconds(limits.hard)} s, from NOTIFIER_CLAIM_LEASE)"
            )
        if self.notifier_visibility_timeout <= self.notifier_claim_lease + 1 + limits.hard:
            # A delivery claimed by another worker is looked at again once the
            # lease runs out (a countdown of lease + 1 s), then runs for up to the
            # hard time limit: all of it before Redis would hand it out again.
            raise ValueError(
                "NOTIFIER_VISIBILITY_TIMEOUT must exceed NOTIFIER_CLAIM_LEASE + 1 plus the hard "
                f"time limit ({_seconds(limits.hard)} s, from NOTIFIER_CLAIM_LEASE)"
            )
        self._sends_fit(limits)
        if self.notifier_status_ttl > self.notifier_ledger_ttl:
            # An email's `sent` is read from its ledger marker (docs/status.md): a record
            # outliving the marker would show a sent email as queued again.
            raise ValueError(
                "NOTIFIER_STATUS_TTL must not exceed NOTIFIER_LEDGER_TTL: an email's sent "
                "state is read from the ledger's marker, which expires after the latter"
            )
        if self.notifier_callback_url and not self.notifier_callback_secret:
            # Unsigned callbacks could be forged by anyone who finds the URL.
            raise ValueError(
                "NOTIFIER_CALLBACK_URL is set but NOTIFIER_CALLBACK_SECRET is not: callbacks "
                "are signed with the secret, so set both (or neither: no callbacks)"
            )
        return self

    def _sends_fit(self, limits: budget.TimeLimits) -> None:
        """Refuse time limits too short for one send on an open connection (issue 14).

        A slower attempt (a new connection, TLS, login, a fallback) is cut by
        the task's deadline before its message is handed over and retried
        (``notifier.budget``); one that cannot even carry a transaction on an
        open connection would never send at all. Messages name settings and
        seconds derived from them, never a value of a secret.
        """
        floor = budget.inline_floor(self)
        if floor > limits.sends:
            timeout = math.floor(limits.sends / budget.TRANSACTION_WAITS * 100) / 100
            lease = math.ceil(budget.minimum_claim_lease(floor)) + 1
            visibility = budget.visibility_floor(lease, self.notifier_retry_backoff_max)
            raise ValueError(
                f"one SMTP transaction can take {_seconds(floor)} s at worst "
                f"({budget.TRANSACTION_WAITS} waits of MAIL_TIMEOUT: MAIL, RCPT, DATA, the "
                "message, its reply; notifier/budget.py), but the task time limits from "
                f"NOTIFIER_CLAIM_LEASE leave {_seconds(limits.sends)} s for sends: lower "
                f"MAIL_TIMEOUT to {timeout:g} s or less, or raise NOTIFIER_CLAIM_LEASE to "
                f"{lease} s or more and "
                f"NOTIFIER_VISIBILITY_TIMEOUT above {math.floor(visibility)} s "
                "(a dead worker's messages then return later)"
            )
        sms = budget.sms_attempt_worst_case(self)
        if self.sms_enabled and sms > limits.sends:
            raise ValueError(
                f"one SMS attempt can take {_seconds(sms)} s at worst ({budget.TWILIO_WAITS} "
                "waits of TWILIO_TIMEOUT), but the task time limits from NOTIFIER_CLAIM_LEASE "
                f"leave {_seconds(limits.sends)} s for it: lower TWILIO_TIMEOUT or raise "
                "NOTIFIER_CLAIM_LEASE"
            )

    @property
    def time_limits(self) -> budget.TimeLimits:
        """Soft and hard task time limits and the time for sends (``notifier.budget``)."""
        return budget.time_limits(self.notifier_claim_lease)

    @property
    def task_time_limits(self) -> tuple[float, float]:
        """(soft, hard) seconds for every task: 130 and 135 with the default lease of 140.

        The hard limit comes before the claim lease runs out, so no second
        worker can take a delivery still being sent; the soft one leaves time
        to record the failure (``notifier.budget.time_limits``).
        """
        limits = self.time_limits
        return limits.soft, limits.hard

    @property
    def callbacks_enabled(self) -> bool:
        """Callbacks to the producer are on when both the URL and the secret are set."""
        return bool(self.notifier_callback_url and self.notifier_callback_secret)

    @property
    def callback_timeout(self) -> float:
        """Seconds for each of a callback's connect and reply waits.

        ``NOTIFIER_CALLBACK_TIMEOUT``, capped at half the task's time for sends
        (``notifier.budget``): the two waits together end before the soft time
        limit, so a hanging endpoint is a retried timeout, never a killed task.
        """
        return min(self.notifier_callback_timeout, self.time_limits.sends / 2)

    @property
    def sms_enabled(self) -> bool:
        """SMS is on only when all three Twilio settings are present."""
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_phone_number)


def _seconds(value: float) -> str:
    return f"{value:.4g}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _describe(exc: ValidationError) -> str:
    """Every problem, by setting name; pydantic's messages hold no input, ours neither."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        message = error["msg"].removeprefix("Value error, ")
        names = [str(part).upper() for part in error["loc"] if isinstance(part, str)]
        # A cross-check (loc is empty) names its settings in its message.
        problems.append(f"{'.'.join(names)}: {message}" if names else message)
    return "invalid settings: " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
