"""Every Redis key notifier writes, in one place, so an operator can find them all.

All keys start with ``notifier:``; the Celery queues are named ``notifier.*``
(Celery's Redis transport keeps each queue in a list of the same name).
"""

from __future__ import annotations

__all__ = [
    "CALLBACKS_QUEUE",
    "CALLBACK_TASK",
    "CONSOLE_BULK_TASK",
    "CONSOLE_BULK_TTL",
    "DELIVER_TASK",
    "DLQ_BY_PREFIX",
    "DLQ_COUNTS",
    "DLQ_FACETS",
    "DLQ_INDEX",
    "DLQ_RETENTION_LOCK",
    "EMAIL_QUEUE",
    "EVENTS_QUEUE",
    "HANDLE_EVENTS_TASK",
    "HANDLE_EVENT_TASK",
    "HOLD_DEADLINES",
    "HOLD_JOBS",
    "HOLD_LOCK",
    "HOLD_SINCE",
    "MAX_BATCH_EVENTS",
    "PREFIX",
    "QUEUES",
    "RECEIPTS_PENDING",
    "RECEIPTS_PENDING_CODES",
    "RECEIPT_SWEEP_LOCK",
    "REPLAY_GRANT_TTL",
    "SMS_QUEUE",
    "STATS_OUTCOMES_TTL",
    "STATUS_PREFIX",
    "TRANSPORT_REJECTED",
    "TRANSPORT_REJECTED_LOCK",
    "TRANSPORT_REJECTED_SEQ",
    "circuit",
    "console_bulk",
    "dlq_entry",
    "ledger",
    "rate_limit",
    "redeliveries",
    "replay_grant",
    "stats_outcomes",
    "status_delivery",
    "status_event",
    "status_replays",
    "status_sid",
    "throttle",
]

PREFIX = "notifier:"

EVENTS_QUEUE = "notifier.events"
EMAIL_QUEUE = "notifier.email"
SMS_QUEUE = "notifier.sms"
# Callbacks to the producer (docs/DESIGN.md §9, §10): a queue of their own, so a
# slow endpoint never holds up a send.
CALLBACKS_QUEUE = "notifier.callbacks"
QUEUES = (EVENTS_QUEUE, EMAIL_QUEUE, SMS_QUEUE, CALLBACKS_QUEUE)

# Celery task names: the public contract (docs/DESIGN.md §1).
HANDLE_EVENT_TASK = "notifier.handle_event"
DELIVER_TASK = "notifier.deliver"
CALLBACK_TASK = "notifier.callback"
HANDLE_EVENTS_TASK = "notifier.handle_events"
"""The bulk path: one positional argument, a JSON array of events (docs/DESIGN.md §10)."""
MAX_BATCH_EVENTS = 100
"""The most events one ``notifier.handle_events`` message may carry."""
# The console's bulk actions over a filter (docs/DESIGN.md §10): on notifier.email.
CONSOLE_BULK_TASK = "notifier.console_bulk"


def ledger(delivery_id: str) -> str:
    """Idempotency ledger entry of one delivery: a claim, then a ``sent`` marker."""
    return f"{PREFIX}ledger:{delivery_id}"


def circuit(provider: str) -> str:
    """Present while a provider's circuit breaker is open (TTL = the cool-down)."""
    return f"{PREFIX}circuit:{provider}"


DLQ_INDEX = f"{PREFIX}dlq:index"
"""Sorted set of dead-letter ids, scored by the time of the last failure."""


def dlq_entry(entry_id: str) -> str:
    """One dead-letter entry, a JSON document."""
    return f"{PREFIX}dlq:entry:{entry_id}"


DLQ_FACETS = f"{PREFIX}dlq:facets"
"""Hash, entry id → its facets (status, channel, type, fingerprint), for counts and filters."""

DLQ_COUNTS = f"{PREFIX}dlq:counts"
"""Hash of counters kept as entries are written and removed: ``status:failed`` → n, …"""

DLQ_BY_PREFIX = f"{PREFIX}dlq:by:"
"""Secondary indexes: ``notifier:dlq:by:<facet>:<value>``, sorted sets scored as the index."""

DLQ_RETENTION_LOCK = f"{PREFIX}dlq:retention:lock"
"""Held (with a lease) by the one worker host removing entries past NOTIFIER_DLQ_RETENTION."""


def redeliveries(message_id: str) -> str:
    """How often a Celery message was redelivered (poison detection); expires."""
    return f"{PREFIX}redeliveries:{message_id}"


def stats_outcomes(minute: int) -> str:
    """Hash of delivery outcomes in one minute (epoch seconds // 60): ``channel:outcome`` → n."""
    return f"{PREFIX}stats:outcomes:{minute}"


STATS_OUTCOMES_TTL = 2 * 3600
"""Seconds a minute's outcome hash is kept: ``notifier stats`` reads the last hour."""


def rate_limit(rule: str, who: str, window: int) -> str:
    """Deliveries counted against a per-recipient rule in one window (a set; expires)."""
    return f"{PREFIX}ratelimit:{rule}:{who}:{window}"


def replay_grant(token: str) -> str:
    """An operator's one-time leave for one replayed delivery to skip the per-recipient
    limits: written by ``notifier dlq replay``, holds the delivery id, taken once (GETDEL)."""
    return f"{PREFIX}replay-grant:{token}"


REPLAY_GRANT_TTL = 24 * 3600
"""Seconds a replay grant waits for its job, which runs long before that even behind a backlog."""


def throttle(provider: str, window: int) -> str:
    """Sends through a provider in one window (a counter; expires)."""
    return f"{PREFIX}throttle:{provider}:{window}"


TRANSPORT_REJECTED = f"{PREFIX}transport:rejected"
"""Malformed queue entries taken off a queue, until a worker has dead-lettered them."""

TRANSPORT_REJECTED_SEQ = f"{PREFIX}transport:rejected:seq"
"""Counter giving each rejected queue entry its id."""

TRANSPORT_REJECTED_LOCK = f"{PREFIX}transport:rejected:lock"
"""Held (with a lease) by the one consumer draining the rejected entries."""

HOLD_JOBS = f"{PREFIX}hold:jobs"
"""Emails held during an SMTP outage: a hash, delivery id → ``<token>\\n<job JSON>``."""

HOLD_SINCE = f"{PREFIX}hold:since"
"""Sorted set of held delivery ids, scored by when each was first held (epoch seconds)."""

HOLD_DEADLINES = f"{PREFIX}hold:deadlines"
"""Sorted set of held delivery ids that have a deadline (``not_after``), scored by it."""

HOLD_LOCK = f"{PREFIX}hold:lock"
"""Held (with a lease) by the one worker host that probes and releases the hold."""


STATUS_PREFIX = f"{PREFIX}status:"
"""Every per-delivery status key starts here (notifier/status.py, docs/status.md)."""


def status_event(event_id: str) -> str:
    """An event's status: a hash (type, state, reasons, dead_letter_id, deliveries); expires."""
    return f"{STATUS_PREFIX}event:{event_id}"


def status_delivery(delivery_id: str) -> str:
    """One delivery's status: a hash (state, attempts, timeline, …); expires."""
    return f"{STATUS_PREFIX}delivery:{delivery_id}"


def status_sid(provider_id: str) -> str:
    """The delivery (its JSON) an SMS's Twilio MessageSid belongs to, for receipts; expires."""
    return f"{STATUS_PREFIX}sid:{provider_id}"


def status_replays(delivery_id: str) -> str:
    """A counter of the resends of an undelivered SMS (``<id>:r<n>``); expires."""
    return f"{STATUS_PREFIX}replays:{delivery_id}"


RECEIPTS_PENDING = f"{PREFIX}receipt:pending"
"""Sorted set of MessageSids whose undelivered receipt's follow-up is not known done,
scored by when the receipt first came (epoch seconds): the receipt sweep's work list."""

RECEIPTS_PENDING_CODES = f"{PREFIX}receipt:pending:codes"
"""Hash, MessageSid → the pending receipt's Twilio ErrorCode ("" without one)."""

RECEIPT_SWEEP_LOCK = f"{PREFIX}receipt:sweep:lock"
"""Held (with a lease) by the one worker host finishing cut-short receipt follow-ups."""


def receipt_follow_up(delivery_id: str) -> str:
    """A short lease: which receipt does an undelivered SMS's follow-up (notifier.receipts)."""
    return f"{PREFIX}receipt:follow-up:{delivery_id}"


def console_bulk(job_id: str) -> str:
    """One console bulk action (replay or purge over a filter): its JSON record and progress."""
    return f"{PREFIX}console:bulk:{job_id}"


CONSOLE_BULK_TTL = 7 * 24 * 3600
"""Seconds a bulk action's record is kept after its last progress write."""
