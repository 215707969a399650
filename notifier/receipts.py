"""Twilio's delivery receipts (status callbacks) as plain functions (docs/DESIGN.md §9, §10).

``parse_receipt`` turns a callback's form into a ``TwilioReceipt``;
``delivery_state`` maps its ``MessageStatus`` (docs/DESIGN.md §10, "Twilio
statuses"): ``queued``/``accepted``/``scheduled``/``sending`` are a timeline
detail only; ``sent`` → ``sent``; ``delivered``/``read`` → ``delivered``;
``undelivered``/``failed``/``canceled`` → ``undelivered``.

``apply_receipt`` records one in the status store (found by its MessageSid)
and, for an SMS that ends ``undelivered``, does the follow-up once: the
SMS→email fallback, the dead letter (status ``undelivered``, error
``Twilio ErrorCode N: …``), the final state for callbacks, and last the dead
letter's id on the status record. That id is the mark that the follow-up is
done: a later ``undelivered``/``failed`` for the same SMS (Twilio sends both,
and retries) finds it and does nothing; one that finds it missing (the
process died part way) does the follow-up again, which repeats nothing a
recipient sees: the fallback email's delivery id is fixed and the ledger sends
it once, and the dead letter is written under the SMS's delivery id
(docs/guarantees.md, "Receipts"). Two receipts at once (``failed`` and
``undelivered`` arrive together) are kept from both doing it by a lease of
``FOLLOW_UP_LEASE`` seconds in Redis, taken before the first step and given
back after the last (or after an error); a process that dies holding it
leaves it to expire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from notifier import keys
from notifier.deadletter import AttemptRecord
from notifier.errors import PermanentError
from notifier.jobs import Job
from notifier.logs import get_logger
from notifier.planner import Delivery, sms_fallback
from notifier.runtime import Runtime
from notifier.status_store import FinalState, ReceiptResult
from notifier.twilio_errors import describe

__all__ = [
    "FOLLOW_UP_LEASE",
    "TWILIO_STATUSES",
    "InvalidReceiptError",
    "ReceiptState",
    "TwilioReceipt",
    "apply_receipt",
    "delivery_state",
    "parse_receipt",
]

ReceiptState = Literal["sent", "delivered", "undelivered"]

FOLLOW_UP_LEASE = 60
"""Seconds one receipt holds an undelivered SMS's follow-up; a crashed holder's is redone after."""

_STATES: dict[str, ReceiptState | None] = {
    "queued": None,
    "accepted": None,
    "scheduled": None,
    "sending": None,
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "undelivered",
    "canceled": "undelivered",
}

TWILIO_STATUSES: tuple[str, ...] = tuple(_STATES)
"""Every ``MessageStatus`` a status callback may carry."""

# Twilio's Message SID: SM (or MM for MMS) and 32 hex digits.
_SID = re.compile(r"[SM]M[0-9a-fA-F]{32}")
_CODE = re.compile(r"[0-9]{1,9}")


class InvalidReceiptError(PermanentError):
    """A signed callback whose form is not a status callback (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class TwilioReceipt:
    """One status callback: which message, what Twilio says, and its ErrorCode if any."""

    message_sid: str
    message_status: str
    error_code: int | None = None

    @property
    def state(self) -> ReceiptState | None:
        """The delivery state it means; None for a timeline detail only."""
        return delivery_state(self.message_status)

    @property
    def detail(self) -> str:
        """The timeline entry's detail: Twilio's status, and its ErrorCode if any."""
        detail = f"twilio: {self.message_status}"
        return detail if self.error_code is None else f"{detail} (ErrorCode {self.error_code})"


def delivery_state(message_status: str) -> ReceiptState | None:
    """The delivery state for a known ``MessageStatus``; None for a detail-only one."""
    return _STATES[message_status]


def parse_receipt(form: Mapping[str, str]) -> TwilioReceipt:
    """The receipt in a callback's form; ``InvalidReceiptError`` naming what is wrong."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    problems = []
    if not sid:
        problems.append("MessageSid is required")
    elif not _SID.fullmatch(sid):
        problems.append("MessageSid is not a Twilio message SID")
    if not status:
        problems.append("MessageStatus is required")
    elif status not in _STATES:
        problems.append(f"MessageStatus {status[:40]!r} is not one Twilio sends")
    raw_code = form.get("ErrorCode") or ""
    code: int | None = None
    if raw_code:
        if not _CODE.fullmatch(raw_code):
            problems.append("ErrorCode is not a number")
        else:
            code = int(raw_code)
    if problems:
        raise InvalidReceiptError("; ".join(problems))
    return TwilioReceipt(message_sid=sid, message_status=status, error_code=code)


def apply_receipt(receipt: TwilioReceipt, rt: Runtime) -> ReceiptResult:
    """Record a validated receipt; an unknown MessageSid is logged and changes nothing.

    A detail-only status is written as a ``sent`` timeline entry carrying it:
    the SID is known only once the SMS was recorded ``sent``, so it never
    moves the state (docs/DESIGN.md §10, ranks). An undelivered receipt is
    first put on the sweep's list (``notifier.receipt_sweep``) and taken off
    once its follow-up is known done: a web process that dies part way leaves
    it there, and a worker finishes it even if Twilio never calls again.
    """
    log = get_logger()
    if receipt.state == "undelivered":
        _remember(receipt, rt)
    result = rt.status.receipt(receipt.message_sid, receipt.state or "sent", receipt.detail)
    delivery = result.delivery
    if delivery is None:
        log.info(
            "receipt.unknown_sid",
            provider_id=receipt.message_sid,
            message_status=receipt.message_status,
        )
        if receipt.state == "undelivered":
            _forget(receipt, rt)
        return result
    log.info(
        "receipt.recorded",
        delivery_id=delivery.delivery_id,
        event_id=delivery.event_id,
        provider_id=receipt.message_sid,
        message_status=receipt.message_status,
        error_code=receipt.error_code,
        state=result.state,
        became_final=result.became_final,
    )
    if result.state == "undelivered" and receipt.state == "undelivered":
        done = not result.became_final and _followed_up(delivery, rt)
        if not done and _lease(delivery, rt):
            try:
                # Looked at again under the lease: another receipt may have
                # finished it between the look above and the lease.
                if not _followed_up(delivery, rt):
                    _undelivered(delivery, receipt, rt)
                done = True
            finally:
                # Done (the mark is written) or failed part way (an error goes
                # back to Twilio as a 5xx, and its retry, or the sweep, takes it up).
                rt.redis.delete(keys.receipt_follow_up(delivery.delivery_id))
        if done:
            _forget(receipt, rt)
    elif receipt.state == "undelivered":
        # Delivered won first (docs/DESIGN.md §10): nothing to follow up.
        _forget(receipt, rt)
    elif result.state == "delivered" and result.became_final:
        rt.metrics.record_delivery("sms", delivery.event_type, "delivered")
        _final(delivery, "delivered", receipt, None, rt)
    return result


def _remember(receipt: TwilioReceipt, rt: Runtime) -> None:
    """Put the receipt on the sweep's list, keeping when it first came (NX)."""
    code = "" if receipt.error_code is None else str(receipt.error_code)
    with rt.redis.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.RECEIPTS_PENDING, {receipt.message_sid: rt.clock().timestamp()}, nx=True)
        pipe.hset(keys.RECEIPTS_PENDING_CODES, receipt.message_sid, code)
        pipe.execute()


def _forget(receipt: TwilioReceipt, rt: Runtime) -> None:
    with rt.redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.RECEIPTS_PENDING, receipt.message_sid)
        pipe.hdel(keys.RECEIPTS_PENDING_CODES, receipt.message_sid)
        pipe.execute()


def _followed_up(delivery: Delivery, rt: Runtime) -> bool:
    """Whether an earlier receipt finished the follow-up (its last step: the dead letter's id)."""
    found = rt.status.for_delivery(delivery.delivery_id)
    return bool(found and found.deliveries and found.deliveries[0].dead_letter_id)


def _lease(delivery: Delivery, rt: Runtime) -> bool:
    """Take the follow-up's lease; False while another receipt holds it."""
    key = keys.receipt_follow_up(delivery.delivery_id)
    return bool(rt.redis.set(key, "1", nx=True, ex=FOLLOW_UP_LEASE))


def _undelivered(delivery: Delivery, receipt: TwilioReceipt, rt: Runtime) -> None:
    """Fallback, dead letter, final state, mark: each step safe to repeat (module docstring)."""
    error = describe(receipt.error_code)
    fallback = sms_fallback(delivery)
    if fallback is not None:
        rt.status.link(fallback, detail=f"fallback for undelivered SMS {delivery.delivery_id}")
        rt.scheduler.schedule(Job(delivery=fallback), countdown=0)
    entry = rt.dead_letters.add_delivery(
        delivery,
        status="undelivered",
        error=error,
        history=[AttemptRecord(attempt=0, at=rt.status.now(), error=error)],
        fallback=fallback.delivery_id if fallback else None,
    )
    rt.metrics.record_delivery("sms", delivery.event_type, "undelivered")
    _final(delivery, "undelivered", receipt, error, rt)
    rt.status.dead_lettered(delivery.delivery_id, entry.id)
    get_logger().warning(
        "delivery.undelivered",
        delivery_id=delivery.delivery_id,
        event_id=delivery.event_id,
        provider_id=receipt.message_sid,
        error=error,
        dead_letter_id=entry.id,
        fallback_delivery_id=fallback.delivery_id if fallback else None,
    )


def _final(
    delivery: Delivery, state: str, receipt: TwilioReceipt, error: str | None, rt: Runtime
) -> None:
    rt.on_final(
        FinalState.of(
            delivery, state, rt.status.now(), provider_id=receipt.message_sid, error=error
        )
    )
