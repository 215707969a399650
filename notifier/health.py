"""The checks behind ``notifier health``: can this worker do its job right now?

* ``redis``: PING answers (the broker and every store live there), and
  Redis is not full: over ``maxmemory`` under ``noeviction`` it refuses
  writes, so the check fails with a detail starting ``full:``
  (``notifier.redis_memory``).
* ``smtp`` (and ``smtp-fallback`` when ``MAIL_FALLBACK_SERVER`` is set): a
  TCP connection, EHLO, and STARTTLS with certificate verification when
  configured. No login and no message: a healthcheck every minute must not
  lock an account or send mail. With a fallback configured, one of the two
  being down is a warning (mail still flows), both down a failure.
* ``twilio``: the three settings are all present (SMS on) or all absent (SMS
  off, planned SMS are skipped): a warning for off, a failure for a partial
  set, which would silently switch SMS off. No network call: Twilio bills and
  rate-limits its API, and its reachability shows in delivery outcomes.
* ``dead_letters``: the store holds fewer entries than
  ``NOTIFIER_DLQ_ALERT_THRESHOLD`` (nothing is ever evicted, so a growing
  store needs an operator).

Unhealthy means any check failed; warnings are shown but keep it healthy.
Details never contain secrets: Redis is named by host, port and database,
SMTP by host and port, Twilio settings by name only.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal
from urllib.parse import urlsplit

import redis

from notifier import keys
from notifier.channels.smtp.connection import SmtpProvider, open_connection, start_tls
from notifier.redis_clients import quick_redis
from notifier.redis_memory import read_memory
from notifier.sentinel_url import DEFAULT_MASTER_NAME, SentinelUrl, is_sentinel_url
from notifier.settings import Settings

__all__ = [
    "Check",
    "Report",
    "check_dead_letters",
    "check_redis",
    "check_smtp",
    "check_twilio",
    "describe_redis_url",
    "run_checks",
]

Status = Literal["ok", "warn", "fail"]

# A healthcheck must answer within the container runtime's timeout, whatever
# MAIL_TIMEOUT allows a real send.
CHECK_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    """The result of one check."""

    name: str
    status: Status
    detail: str
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Report:
    """Every check, and the verdict."""

    checks: list[Check]

    @property
    def healthy(self) -> bool:
        """True unless a check failed (warnings don't count)."""
        return all(check.status != "fail" for check in self.checks)

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` document: ``{"healthy": bool, "checks": [...]}``."""
        return {
            "healthy": self.healthy,
            "checks": [
                {**asdict(check), "seconds": round(check.seconds, 4)} for check in self.checks
            ],
        }


def _timed(name: str, probe: Callable[[], tuple[Status, str]]) -> Check:
    started = time.perf_counter()
    status, detail = probe()
    return Check(name, status, detail, time.perf_counter() - started)


def describe_redis_url(url: str, master_name: str = DEFAULT_MASTER_NAME) -> str:
    """``host:port/db`` of a Redis URL, or the master and its Sentinels: no user, no password."""
    if is_sentinel_url(url):
        return SentinelUrl.parse(url).describe(master_name)
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    database = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{port}/{database}"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def check_redis(client: redis.Redis, where: str) -> Check:
    """PING the broker/store Redis, and read its memory: a full Redis fails ("full: …")."""

    def probe() -> tuple[Status, str]:
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            return "fail", f"{where}: {_error(exc)}"
        try:
            memory = read_memory(client)
        except redis.ResponseError:
            # INFO renamed or denied (some managed Redis): reachable is all we know.
            return "ok", f"{where}: PONG (memory unknown: INFO refused)"
        except (redis.RedisError, OSError) as exc:
            return "fail", f"{where}: {_error(exc)}"
        if memory.full:
            return "fail", f"{where}: {memory.describe()}"
        return "ok", f"{where}: PONG, {memory.describe()}"

    return _timed("redis", probe)


def check_smtp(provider: SmtpProvider, name: str = "smtp") -> Check:
    """Connect, EHLO and (if configured) STARTTLS, then QUIT; nothing is sent.

    The connection is opened by the channel's own code, so the check sees the
    TLS settings and certificate checks a send would; it stops before login.
    """
    where = f"{provider.host}:{provider.port}"

    def probe() -> tuple[Status, str]:
        probed = replace(provider, timeout=min(provider.timeout, CHECK_TIMEOUT))
        connection: smtplib.SMTP | None = None
        try:
            connection = open_connection(probed)
            code, _ = connection.ehlo()
            if code != 250:
                return "fail", f"{where}: EHLO answered {code}"
            security = "implicit TLS" if provider.use_ssl else "plain"
            if provider.use_tls:
                code, _ = start_tls(connection, probed)
                if code != 250:
                    return "fail", f"{where}: EHLO after STARTTLS answered {code}"
                security = "STARTTLS"
        except (smtplib.SMTPException, OSError) as exc:
            return "fail", f"{where}: {_error(exc)}"
        finally:
            if connection is not None:
                try:
                    connection.quit()
                except (smtplib.SMTPException, OSError):
                    connection.close()
        return "ok", f"{where}: EHLO accepted ({security})"

    return _timed(name, probe)


def check_twilio(settings: Settings) -> Check:
    """The Twilio settings are complete (SMS on) or absent (SMS off); never half set."""
    present = {
        "TWILIO_ACCOUNT_SID": bool(settings.twilio_account_sid),
        "TWILIO_AUTH_TOKEN": bool(settings.twilio_auth_token),
        "TWILIO_PHONE_NUMBER": bool(settings.twilio_phone_number),
    }
    if all(present.values()):
        return Check("twilio", "ok", f"SMS on via {settings.twilio_api_base_url}")
    if not any(present.values()):
        return Check("twilio", "warn", "SMS off: Twilio is not configured, planned SMS are skipped")
    missing = ", ".join(name for name, given in present.items() if not given)
    return Check("twilio", "fail", f"SMS off: {missing} missing (the others are set)")


def check_dead_letters(client: redis.Redis, threshold: int) -> Check:
    """Fewer dead letters than ``NOTIFIER_DLQ_ALERT_THRESHOLD``."""

    def probe() -> tuple[Status, str]:
        try:
            count = int(client.zcard(keys.DLQ_INDEX))
        except (redis.RedisError, OSError) as exc:
            return "fail", f"cannot count: {_error(exc)}"
        if count >= threshold:
            return "fail", f"{count} entries, threshold {threshold}: see `notifier dlq stats`"
        return "ok", f"{count} entries (threshold {threshold})"

    return _timed("dead_letters", probe)


def _smtp_checks(settings: Settings) -> list[Check]:
    primary = check_smtp(SmtpProvider.primary(settings))
    fallback_provider = SmtpProvider.fallback(settings)
    if fallback_provider is None:
        return [primary]
    fallback = check_smtp(fallback_provider, name="smtp-fallback")
    if primary.status == "ok" or fallback.status == "ok":
        # Mail still flows through the other one: degraded, not down.
        return [
            check
            if check.status == "ok"
            else Check(check.name, "warn", check.detail, check.seconds)
            for check in (primary, fallback)
        ]
    return [primary, fallback]


def run_checks(settings: Settings) -> Report:
    """Run every check against the configured services."""
    master = settings.notifier_redis_master_name
    client = quick_redis(settings.redis_url, timeout=CHECK_TIMEOUT, master_name=master)
    try:
        reachable = check_redis(client, describe_redis_url(settings.redis_url, master))
        checks = [reachable, *_smtp_checks(settings), check_twilio(settings)]
        if reachable.status == "ok" or ": full: " in reachable.detail:
            # A full Redis still answers reads: count what it holds.
            checks.append(check_dead_letters(client, settings.notifier_dlq_alert_threshold))
        else:
            # Don't wait for a second connection timeout to learn the same thing.
            checks.append(Check("dead_letters", "fail", "not counted: Redis is unreachable"))
    finally:
        client.close()
    return Report(checks)
