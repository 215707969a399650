"""Twilio's delivery receipts (status callbacks) as plain functions (docs/DESIGN.md §9, §10).

``parse_receipt`` turns a callback's form into a ``TwilioReceipt``;
``delivery_state`` maps its ``MessageStatus`` (docs/DESIGN.md §10, "Twilio
statuses"): ``queued``/``accepted``/``scheduled``/``sending`` are a timeline
detail only; ``sent`` → ``sent``; ``delivered``/``read`` → ``delivered``;
``undelivered``/``failed``/``canceled`` → ``undelivered``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from notifier.errors import PermanentError

__all__ = [
    "InvalidReceiptError",
    "ReceiptState",
    "TwilioReceipt",
    "delivery_state",
    "parse_receipt",
]

ReceiptState = Literal["sent", "delivered", "undelivered"]

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
