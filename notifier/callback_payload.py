"""What a callback to the producer carries: the payload of docs/DESIGN.md §9.

Low in the import graph on purpose: the dead-letter entry holds one (a callback
that ran out of attempts), and the callbacks module sends them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from notifier.status_store import FinalState
from notifier.truncation import truncate

__all__ = ["CallbackPayload", "payload_from"]

# A rejected event's id and type are whatever a producer sent: cap them, as the
# dead-letter store caps its fields (notifier/deadletter_entries.py).
_MAX_ID_BYTES = 200
_MAX_NAME_BYTES = 256
_MAX_ERROR_BYTES = 1024
# What a message on the queue may hold, in characters: the caps above plus their
# marks. A forged job cannot make a dead letter larger than the store allows
# (70,000 bytes, notifier/deadletter_entries.py): at most 4 × 4,100 bytes here.
_ID_CHARS = 300
_NAME_CHARS = 400
_ERROR_CHARS = 1100


class CallbackPayload(BaseModel):
    """The JSON object POSTed to ``NOTIFIER_CALLBACK_URL``, fields in the contract's order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(max_length=_ID_CHARS)
    delivery_id: str | None = Field(max_length=_ID_CHARS)
    """None for a rejected event."""
    type: str | None = Field(max_length=_NAME_CHARS)
    channel: str | None = Field(max_length=_NAME_CHARS)
    template: str | None = Field(max_length=_NAME_CHARS)
    state: str = Field(max_length=_NAME_CHARS)
    provider_id: str | None = Field(max_length=_NAME_CHARS)
    error: str | None = Field(max_length=_ERROR_CHARS)
    at: str = Field(max_length=_NAME_CHARS)


def _cut(text: str | None, max_bytes: int) -> str | None:
    return None if text is None else truncate(text, max_bytes)


def payload_from(final: FinalState) -> CallbackPayload:
    """The callback for one final state, each field as docs/DESIGN.md §9 names it."""
    return CallbackPayload(
        event_id=truncate(final.event_id, _MAX_ID_BYTES),
        delivery_id=_cut(final.delivery_id, _MAX_ID_BYTES),
        type=_cut(final.type, _MAX_NAME_BYTES),
        channel=_cut(final.channel, _MAX_NAME_BYTES),
        template=_cut(final.template, _MAX_NAME_BYTES),
        state=truncate(final.state, _MAX_NAME_BYTES),
        provider_id=_cut(final.provider_id, _MAX_NAME_BYTES),
        error=_cut(final.error, _MAX_ERROR_BYTES),
        at=truncate(final.at, _MAX_NAME_BYTES),
    )
