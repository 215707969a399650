"""The parts a worker process uses, assembled in one place and passed in.

``Runtime.from_settings`` is the one assembly point: the Redis pool, the
Jinja2 environment, the SMTP mailer, the Twilio sender, the ledger, the
status store, the dead-letter store, the limits, the scheduler and the clock, each made once
per process and reused. Everything else receives a ``Runtime`` and reads its
parts; tests build one with fakes through the constructor (or
``dataclasses.replace``). Under Celery's prefork pool each child process
builds its own on first use (``notifier.app`` checks the pid), so no socket is
ever shared across a fork.

Logging is configured by the process entry points (the worker's start-up,
the CLI, the demo), never here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from typing import Protocol

from redis import Redis

from notifier import metrics as metrics_package
from notifier.callbacks import CallbackPoster, CallbackPublisher, CallbackSender
from notifier.channels import Receipt
from notifier.channels.sms import SmsChannel
from notifier.channels.smtp.connection import SmtpChannel, SmtpProvider
from notifier.channels.smtp.failover import CircuitBreaker, FailoverMailer
from notifier.compose import ComposedEmail, SmsMessage, parse_sender
from notifier.deadletter import DeadLetterStore
from notifier.deadlines import Deadline
from notifier.errors import ConfigurationError
from notifier.hold import OutageHold
from notifier.jobs import CallbackQueue, Scheduler
from notifier.ledger import Ledger
from notifier.ratelimit import RecipientLimiter, Throttle, parse_rate_limits
from notifier.redis_clients import redis_client
from notifier.retry import RetryPolicy
from notifier.settings import Settings
from notifier.status_store import FinalStateSink, StatusStore, ignore_final
from notifier.templates import Renderer

__all__ = ["Mailer", "MetricsRecorder", "Runtime", "SmsSender"]


class Mailer(Protocol):
    """Sends one composed email (``channels.smtp.failover.FailoverMailer`` in production)."""

    def send(
        self,
        message: ComposedEmail,
        sender: str,
        recipient: str,
        deadline: Deadline | None = None,
    ) -> Receipt:
        """Hand the message to a provider; raise Transient/PermanentError otherwise.

        Nothing is handed over once ``deadline`` (None: no deadline) has
        passed: a ``DeadlineExpiredError`` says so. A message that may have
        arrived although the reply was lost raises ``AmbiguousDeliveryError``.
        """

    def close(self) -> None:
        """Close pooled connections."""


class MetricsRecorder(Protocol):
    """Counts what the pipeline does (``metrics.ProcessRecorder`` in production)."""

    def record_delivery(self, channel: str | None, event_type: str | None, outcome: str) -> None:
        """Count one delivery outcome."""

    def record_event(self, event_type: str) -> None:
        """Count one accepted event."""

    def timed_send(self, send: Callable[[], Receipt]) -> Receipt:
        """Call ``send`` (a provider send) and observe how long it took."""

    def record_callback(self, outcome: str) -> None:
        """Count one callback outcome (``notifier.callbacks``)."""


class SmsSender(Protocol):
    """Sends one SMS (``channels.sms.SmsChannel`` in production)."""

    def send(self, message: SmsMessage, deadline: Deadline | None = None) -> Receipt:
        """Hand the message to the provider; raise Transient/PermanentError otherwise.

        Nothing is handed over once ``deadline`` (None: no deadline) has
        passed: a ``DeadlineExpiredError`` says so.
        """

    def close(self) -> None:
        """Close the HTTP session."""


def _now() -> datetime:
    # UTC, not local time: a send reads the clock a dozen times (every wait is
    # cut to a deadline), and astimezone() costs five times as much (about
    # 10 us an email, bench/README.md). Emails' Date headers say +0000.
    return datetime.now(UTC)


def _mailer(settings: Settings, client: Redis) -> FailoverMailer:
    fallback = SmtpProvider.fallback(settings)
    cooldown = settings.notifier_circuit_cooldown
    return FailoverMailer(
        SmtpChannel(SmtpProvider.primary(settings)),
        SmtpChannel(fallback) if fallback else None,
        CircuitBreaker(client, "smtp-primary", cooldown),
        CircuitBreaker(client, "smtp-fallback", cooldown) if fallback else None,
    )


def _hold(settings: Settings, client: Redis, mailer: FailoverMailer) -> OutageHold | None:
    # Holding needs circuits to tell an outage (a cool-down of 0 has none).
    if settings.notifier_outage_hold_max <= 0 or settings.notifier_circuit_cooldown <= 0:
        return None
    return OutageHold(client, mailer.down)


def _callback_poster(settings: Settings, clock: Callable[[], datetime]) -> CallbackPoster | None:
    url, secret = settings.notifier_callback_url, settings.notifier_callback_secret
    if not settings.callbacks_enabled or url is None or secret is None:
        return None
    return CallbackPoster(url, secret, settings.callback_timeout, clock=clock)


@dataclass
class Runtime:
    """Everything the pipeline uses, for one process."""

    settings: Settings
    scheduler: Scheduler
    redis: Redis
    renderer: Renderer
    ledger: Ledger
    dead_letters: DeadLetterStore
    retry: RetryPolicy
    smtp: Mailer
    sms_sender: SmsSender | None
    """None when Twilio is not configured (``Settings.sms_enabled``)."""
    recipient_limits: RecipientLimiter
    throttles: Mapping[str, Throttle]
    """Provider send rates, by channel."""
    status: StatusStore
    """What became of each delivery (``notifier trace``; docs/status.md)."""
    clock: Callable[[], datetime] = _now
    monotonic: Callable[[], float] = time.monotonic
    """Seconds for time spent (a task's budget, notifier.budget); wall-clock jumps don't move it."""
    hold: OutageHold | None = None
    """Where emails wait while every SMTP provider is down; None: no hold (``notifier.hold``)."""
    mailer: FailoverMailer | None = None
    """The production mailer behind ``smtp``, for the outage watch's probes and circuits."""
    metrics: MetricsRecorder = field(default_factory=metrics_package.ProcessRecorder)
    callback_queue: CallbackQueue | None = None
    """Where ``notifier.callback`` jobs go (the Celery app); None: nowhere (some tests)."""
    callback_poster: CallbackSender | None = None
    """POSTs callbacks to the producer; None unless NOTIFIER_CALLBACK_URL and _SECRET are set."""
    on_final: FinalStateSink = ignore_final
    """Told once per delivery (and rejected event) reaching a final state: callbacks' seam."""
    _sender: Address | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        scheduler: Scheduler,
        *,
        clock: Callable[[], datetime] = _now,
        client: Redis | None = None,
        callback_queue: CallbackQueue | None = None,
    ) -> Runtime:
        """The production parts for these settings (``client``: a Redis client to use).

        ``callback_queue`` puts callbacks to the producer on ``notifier.callbacks``
        (the Celery app's scheduler). With ``Settings.callbacks_enabled`` and a
        queue, ``on_final`` enqueues a callback for each final state
        (``callbacks.CallbackPublisher``); otherwise it ignores them.
        """
        client = client if client is not None else redis_client(settings)
        mailer = _mailer(settings, client)
        dead_letters = DeadLetterStore(client, clock=clock)
        recorder = metrics_package.ProcessRecorder()
        on_final: FinalStateSink = ignore_final
        if settings.callbacks_enabled and callback_queue is not None:
            on_final = CallbackPublisher(callback_queue, dead_letters, recorder)
        return cls(
            settings=settings,
            scheduler=scheduler,
            redis=client,
            renderer=Renderer(settings.notifier_template_dir),
            ledger=Ledger(
                client, ttl=settings.notifier_ledger_ttl, lease=settings.notifier_claim_lease
            ),
            dead_letters=dead_letters,
            retry=RetryPolicy.from_settings(settings),
            smtp=mailer,
            sms_sender=SmsChannel(settings) if settings.sms_enabled else None,
            recipient_limits=RecipientLimiter(
                client, parse_rate_limits(settings.notifier_rate_limits)
            ),
            throttles={
                "email": Throttle(client, "smtp", settings.notifier_smtp_mps),
                "sms": Throttle(client, "twilio", settings.notifier_sms_mps),
            },
            status=StatusStore(client, ttl=settings.notifier_status_ttl, clock=clock),
            clock=clock,
            hold=_hold(settings, client, mailer),
            mailer=mailer,
            metrics=recorder,
            callback_queue=callback_queue,
            callback_poster=_callback_poster(settings, clock),
            on_final=on_final,
        )

    def sender(self) -> Address:
        """The From address (``MAIL_DEFAULT_SENDER``); a ConfigurationError if unset."""
        if self._sender is None:
            self._sender = parse_sender(
                self.settings.mail_default_sender,
                allow_special_domains=self.settings.notifier_allow_special_domains,
            )
        return self._sender

    def sms(self) -> SmsSender:
        """The Twilio sender; a ConfigurationError when SMS is off."""
        if self.sms_sender is None:
            raise ConfigurationError(
                "SMS is off: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER"
            )
        return self.sms_sender

    def close(self) -> None:
        """Close connections (worker process shutdown)."""
        self.smtp.close()
        if self.sms_sender is not None:
            self.sms_sender.close()
        if self.callback_poster is not None:
            self.callback_poster.close()
        metrics_package.recent.detach(self.redis)
        self.redis.close()
