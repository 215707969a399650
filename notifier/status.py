"""Per-delivery status: what became of each notification (docs/DESIGN.md §9).

INTERFACE SKELETON (issue 15, 2026-12-07): the models and the store's methods are
fixed here so the web process, receipts and callbacks can be written against them
while the store is implemented. Bodies raising NotImplementedError are filled in by
the status-store work before anything ships.

Redis layout (``notifier.keys``), every key expiring after ``NOTIFIER_STATUS_TTL``:

- ``notifier:status:event:<event_id>``: a hash: ``type``, ``state`` (``accepted`` or
  ``rejected``), ``reasons`` (JSON list), ``dead_letter_id``, ``deliveries`` (JSON list of
  delivery ids, in plan order; replays and fallbacks are appended).
- ``notifier:status:delivery:<delivery_id>``: a hash: ``event_id``, ``channel``,
  ``template``, ``recipient`` (already redacted), ``state``, ``attempts``, ``provider``,
  ``provider_id``, ``dead_letter_id``, ``updated_at``, ``timeline`` (JSON list of
  ``[state, at, detail]``; at most 20: the first and the last 19; detail ≤ 500 chars).
- ``notifier:status:sid:<provider_id>``: the delivery id an SMS's Twilio MessageSid
  belongs to (for receipts).

Precedence (docs/DESIGN.md §10): ranks ``sent`` 2 < ``delivered`` = ``undelivered`` 3;
every other state is rank 0. A write whose rank is lower than the stored state's
rank ≥ 2 appends to the timeline but leaves ``state`` alone; at rank 3 the first
final state wins. Every write happens in one Lua call, so concurrent writers
(a worker and the web process's receipt) cannot interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "FINAL_STATES",
    "DeliveryState",
    "DeliveryStatus",
    "EventState",
    "EventStatus",
    "FinalState",
    "TimelineEntry",
]

DeliveryState = Literal[
    "queued",
    "retrying",
    "held",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "expired",
    "rate_limited",
    "skipped",
]
EventState = Literal["accepted", "rejected"]

FINAL_STATES: frozenset[str] = frozenset(
    {"delivered", "undelivered", "failed", "expired", "rate_limited", "skipped"}
)
"""Final for every channel; ``sent`` is final too for email, and for SMS without receipts."""

MAX_TIMELINE = 20
MAX_DETAIL_CHARS = 500


class TimelineEntry(BaseModel):
    """One transition: the state, when (ISO 8601 UTC), and a short detail."""

    model_config = ConfigDict(frozen=True)

    state: DeliveryState
    at: str
    detail: str = ""


class DeliveryStatus(BaseModel):
    """One delivery as the trace shows it (docs/DESIGN.md §9)."""

    delivery_id: str
    channel: str
    template: str
    recipient: str
    """Redacted as in ``dlq list``."""
    state: DeliveryState
    attempts: int
    provider: str | None = None
    provider_id: str | None = None
    dead_letter_id: str | None = None
    updated_at: str
    timeline: list[TimelineEntry]


class EventStatus(BaseModel):
    """``notifier.status(event_id)``; ``.model_dump(mode="json")`` is the trace JSON."""

    event_id: str
    type: str | None
    state: EventState
    reasons: list[str]
    dead_letter_id: str | None
    deliveries: list[DeliveryStatus]


@dataclass(frozen=True, slots=True)
class FinalState:
    """A delivery (or a rejected event) that has just reached a final state, once.

    What a callback to the producer carries (docs/DESIGN.md §9); the store reports
    one only to the writer whose write made the state final.
    """

    event_id: str
    delivery_id: str | None
    type: str | None
    channel: str | None
    template: str | None
    state: str
    provider_id: str | None
    error: str | None
    at: str
