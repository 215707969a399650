"""The long-lived things a worker process needs, made once and reused.

A ``Runtime`` owns the Redis pool, the Jinja2 environment, the SMTP
connection and the Twilio client. Under Celery's prefork pool each child
process builds its own on first use (``notifier.app`` checks the pid), so no
socket is ever shared across a fork.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from email.headerregistry import Address
from typing import TYPE_CHECKING, Any, Protocol

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from notifier import metrics
from notifier.channels.sms import SmsChannel
from notifier.channels.smtp import CircuitBreaker, FailoverMailer, SmtpChannel, SmtpProvider
from notifier.compose import parse_sender
from notifier.deadletter import DeadLetterStore
from notifier.errors import ConfigurationError
from notifier.ledger import Ledger
from notifier.logs import configure_logging
from notifier.ratelimit import RecipientLimiter, Throttle, parse_rate_limits
from notifier.retry import RetryPolicy
from notifier.settings import Settings
from notifier.templates import Renderer

if TYPE_CHECKING:
    from notifier.pipeline import Job

__all__ = ["Runtime", "Scheduler", "redis_client"]


class Scheduler(Protocol):
    """Puts a job on its channel's queue, now or after a countdown."""

    def schedule(self, job: Job, countdown: float) -> None:
        """Enqueue ``notifier.deliver(job)`` to run in ``countdown`` seconds."""

    def publish_event(self, event: dict[str, Any]) -> None:
        """Enqueue ``notifier.handle_event(event)`` (replaying a rejected event)."""


def redis_client(settings: Settings) -> redis.Redis:
    """The worker's Redis client: timeouts, and retries that ride out a Redis restart.

    A hung Redis must fail a call, not freeze a worker; a restart (AOF reload,
    failover) of a second or two must not fail the deliveries in flight, which
    would turn into duplicates or dead letters. Six tries with jittered backoff
    capped at 2 s cover about ten seconds. ``notifier health`` uses its own
    fail-fast client.
    """
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(EqualJitterBackoff(cap=2.0, base=0.2), 6),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def _now() -> datetime:
    return datetime.now().astimezone()


class Runtime:
    """Everything the pipeline uses, for one process."""

    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        *,
        clock: Callable[[], datetime] = _now,
        client: redis.Redis | None = None,
    ) -> None:
        configure_logging(settings)
        self.settings = settings
        self.scheduler = scheduler
        self.clock = clock
        self.redis = client if client is not None else redis_client(settings)
        self.renderer = Renderer(settings.notifier_template_dir)
        self.ledger = Ledger(
            self.redis, ttl=settings.notifier_ledger_ttl, lease=settings.notifier_claim_lease
        )
        self.dead_letters = DeadLetterStore(self.redis)
        self.retry = RetryPolicy.from_settings(settings)
        fallback = SmtpProvider.fallback(settings)
        self.smtp = FailoverMailer(
            SmtpChannel(SmtpProvider.primary(settings)),
            SmtpChannel(fallback) if fallback else None,
            CircuitBreaker(self.redis, "smtp-primary", settings.notifier_circuit_cooldown),
        )
        self.recipient_limits = RecipientLimiter(
            self.redis, parse_rate_limits(settings.notifier_rate_limits)
        )
        self.throttles = {
            "email": Throttle(self.redis, "smtp", settings.notifier_smtp_mps),
            "sms": Throttle(self.redis, "twilio", settings.notifier_sms_mps),
        }
        self._sms: SmsChannel | None = None
        self._sender: Address | None = None

    def sender(self) -> Address:
        """The From address (``MAIL_DEFAULT_SENDER``); a ConfigurationError if unset."""
        if self._sender is None:
            self._sender = parse_sender(
                self.settings.mail_default_sender,
                allow_special_domains=self.settings.notifier_allow_special_domains,
            )
        return self._sender

    def sms(self) -> SmsChannel:
        """The Twilio channel, made on first use; a ConfigurationError when SMS is off."""
        if self._sms is None:
            if not self.settings.sms_enabled:
                raise ConfigurationError(
                    "SMS is off: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER"
                )
            self._sms = SmsChannel(self.settings)
        return self._sms

    def close(self) -> None:
        """Close connections (worker process shutdown)."""
        self.smtp.close()
        if self._sms is not None:
            self._sms.close()
        metrics.recent.detach(self.redis)
        self.redis.close()
