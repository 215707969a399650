"""How long one send attempt can take, and how much of a task's time it may use.

One place for the arithmetic that ties the send timeouts (``MAIL_TIMEOUT``,
``TWILIO_TIMEOUT``) to the task time limits and the claim lease, so that
``Settings`` can refuse a configuration where a time limit could cut a send
after its message was handed over (a send the server holds, dead-lettered as
``failed``: a replay sends it twice), and ``pipeline.handle_event`` can stop
sending inline before its budget runs out.

The worst case counts *waits*: every place the code blocks on the server,
each bounded by the timeout (smtplib sets it on the socket; requests on the
connection and on each read). It bounds an attempt against servers that
answer each command within the timeout or not at all. It does not bound a
server that drips a reply a byte at a time (each byte restarts the socket
timeout), DNS (``getaddrinfo`` has no timeout), or a host name whose several
addresses all fail to connect (each is tried with the full timeout): there
only a deadline for the whole attempt in the mailer stops a send in time.
Counted, per SMTP provider (``smtp_waits``):

- a pooled connection that went dead while idle: its first reply never
  comes, then a fresh connection (``SmtpChannel`` reconnects once): 1
- TCP connect 1; the TLS handshake when ``*_USE_SSL`` 1; the greeting 1; EHLO 1
- STARTTLS when ``*_USE_TLS``: its reply, the handshake, EHLO again: 3
- login when ``*_USERNAME`` is set: 5 (smtplib tries CRAM-MD5 with 2 round
  trips, PLAIN with 1, LOGIN with 2, each after the server refused the last)
- the transaction: MAIL, RCPT, DATA, writing the message, its reply: 5. With
  PIPELINING the first three replies are read one after another all the same,
  and with CHUNKING the message goes with them (4): a server's extensions are
  not known before it is asked, so the count without them stands.

Not counted: the RSET after a refused message, because the outcome is known
by then (a time limit cutting it dead-letters a message the server refused:
replayed, it is sent once).

With a fallback provider an attempt may try both (``FailoverMailer``), so
their waits add up.

That worst case is for the docs and for sizing the lease, not a start-up
refusal: with login or a fallback at the default ``MAIL_TIMEOUT`` it exceeds
any lease that still returns a dead worker's messages within 5 minutes
(docs/guarantees.md). What keeps a time limit from cutting a send the server
holds is the task's own deadline (``hand_over_deadline``): the pipeline
passes it to the mailer with the delivery's, every wait before the hand-over
is cut to it, and the message is not handed over after it. It comes one reply
wait before the end of the time for sends, so the server's answer to a
message handed over in time still arrives before the soft limit. An attempt
that meets it is cut *before* the hand-over and retried. The settings check
asks only that the time for sends holds one transaction on an open
connection (``inline_floor``), and ``handle_event`` sends inline only while
that much is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifier.settings import Settings

__all__ = [
    "TWILIO_WAITS",
    "TimeLimits",
    "email_attempt_worst_case",
    "email_waits",
    "hand_over_by",
    "inline_floor",
    "minimum_claim_lease",
    "reply_wait",
    "sms_attempt_worst_case",
    "smtp_waits",
    "time_limits",
    "visibility_floor",
]

STALE_CONNECTION_WAITS = 1
CONNECT_WAITS = 1
IMPLICIT_TLS_WAITS = 1
GREETING_WAITS = 1
EHLO_WAITS = 1
STARTTLS_WAITS = 3
LOGIN_WAITS = 5
TRANSACTION_WAITS = 5

# TCP connect, TLS handshake, writing the request, reading the response: the
# twilio client's requests session makes one request per SMS, no retries.
TWILIO_WAITS = 4

# The slack between the lease and the hard limit, the hard and the soft limit,
# and the soft limit and the end of the sends: 5 s, or a twentieth of the lease
# when that is less (the tests' leases of a few seconds).
MAX_GAP = 5.0
GAP_FRACTION = 1 / 20


def smtp_waits(*, use_ssl: bool, use_tls: bool, logs_in: bool) -> int:
    """Waits on one SMTP provider in one attempt, at worst (the module's list)."""
    waits = STALE_CONNECTION_WAITS + CONNECT_WAITS + GREETING_WAITS + EHLO_WAITS
    if use_ssl:
        waits += IMPLICIT_TLS_WAITS
    if use_tls:
        waits += STARTTLS_WAITS
    if logs_in:
        waits += LOGIN_WAITS
    return waits + TRANSACTION_WAITS


def email_waits(settings: Settings) -> int:
    """Waits of one email attempt at worst: the primary's, plus the fallback's when set."""
    waits = smtp_waits(
        use_ssl=settings.mail_use_ssl,
        use_tls=settings.mail_use_tls,
        logs_in=bool(settings.mail_username),
    )
    if settings.mail_fallback_server:
        waits += smtp_waits(
            use_ssl=settings.mail_fallback_use_ssl,
            use_tls=settings.mail_fallback_use_tls,
            logs_in=bool(settings.mail_fallback_username),
        )
    return waits


def email_attempt_worst_case(settings: Settings) -> float:
    """Seconds one email attempt can take: its waits times ``MAIL_TIMEOUT``."""
    return email_waits(settings) * settings.mail_timeout


def sms_attempt_worst_case(settings: Settings) -> float:
    """Seconds one SMS attempt can take: ``TWILIO_WAITS`` times ``TWILIO_TIMEOUT``."""
    return TWILIO_WAITS * settings.twilio_timeout


def inline_floor(settings: Settings) -> float:
    """The time an email needs left to be started: a transaction on an open connection."""
    return TRANSACTION_WAITS * settings.mail_timeout


def reply_wait(settings: Settings, channel: str) -> float:
    """How long the provider's answer may take once the message was handed over."""
    return settings.mail_timeout if channel == "email" else settings.twilio_timeout


def hand_over_by(settings: Settings, channel: str, started: float) -> float:
    """When, on the task's monotonic clock, a message must have been handed over at the latest.

    ``started`` is the task's start. The time for sends ends a gap before
    the soft limit; the last reply wait fits before that.
    """
    return (
        started + time_limits(settings.notifier_claim_lease).sends - reply_wait(settings, channel)
    )


@dataclass(frozen=True, slots=True)
class TimeLimits:
    """A task's limits, from its start, in seconds."""

    soft: float
    """Celery raises SoftTimeLimitExceeded in the task: the failure is recorded."""
    hard: float
    """Celery kills the pool process; still ``gap`` before the claim could run out."""
    sends: float
    """Every send must have ended by then, leaving ``gap`` to record its outcome."""
    gap: float


def _gap(lease: float) -> float:
    return min(MAX_GAP, lease * GAP_FRACTION)


def time_limits(lease: float) -> TimeLimits:
    """The task time limits for a claim lease: 130/135 s for the default lease of 140 s.

    Each step is one gap shorter: the hard limit comes a gap before the
    lease (a claim is taken after its task started, so none runs out under
    a live send), the soft limit a gap before that (time for ``on_failure``
    to dead-letter what it cut), and sends must end a gap before the soft
    limit (time to mark a send in the ledger).
    """
    gap = _gap(lease)
    hard = lease - gap
    soft = hard - gap
    return TimeLimits(soft=soft, hard=hard, sends=soft - gap, gap=gap)


def minimum_claim_lease(worst_case: float) -> float:
    """The shortest lease whose send budget holds a send of ``worst_case`` seconds."""
    # sends = lease - 3 x gap, with gap = min(MAX_GAP, lease / 20).
    small = worst_case / (1 - 3 * GAP_FRACTION)
    return small if _gap(small) < MAX_GAP else worst_case + 3 * MAX_GAP


def visibility_floor(lease: float, backoff_max: float) -> float:
    """What the visibility timeout must exceed: the longest countdown, then a run.

    A countdown is a retry's (``NOTIFIER_RETRY_BACKOFF_MAX``) or a busy
    delivery's (the lease + 1 s); the worker that took the message holds it
    unacked meanwhile, then runs it for up to the hard time limit.
    """
    return max(backoff_max, lease + 1) + time_limits(lease).hard
