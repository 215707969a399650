"""Per-delivery status: what became of each notification (docs/DESIGN.md §9).

``StatusStore`` keeps, per event and per delivery, the state the trace shows
(``notifier trace``, ``notifier.status``, ``GET /v1/events/{id}``): the pipeline
writes each transition, the web process's Twilio receipts write ``delivered`` /
``undelivered``. Each write reports whether it made the delivery final for the
first time, which is when a callback to the producer is due (``FinalStateSink``).
The happy path's writes ride the ledger's own round trips (``notifier.script_calls``,
docs/status.md).

Redis layout (``notifier.keys``), every key expiring after ``NOTIFIER_STATUS_TTL``:

- ``notifier:status:event:<event_id>``: a hash: ``type``, ``state`` (``accepted`` or
  ``rejected``), ``reasons`` (JSON list), ``dead_letter_id``, ``deliveries`` (JSON list of
  delivery ids, in plan order; replays and fallbacks are appended).
- ``notifier:status:delivery:<delivery_id>``: a hash: ``event_id``, ``channel``,
  ``template``, ``recipient`` (already redacted), ``state``, ``attempts``, ``provider``,
  ``provider_id``, ``dead_letter_id``, ``updated_at``, ``timeline`` (JSON list of
  ``[state, at, detail]``; at most 20: the first and the last 19; detail ≤ 500 chars).
  Also ``final`` (``1`` once a final state was reported), never shown.
- ``notifier:status:sid:<provider_id>``: the delivery (``planner.Delivery`` JSON) an
  SMS's Twilio MessageSid belongs to (for receipts).
- ``notifier:status:replays:<delivery_id>``: the resends of an undelivered SMS.

Precedence (docs/DESIGN.md §10): ranks ``sent`` 2 < ``delivered`` = ``undelivered`` 3;
every other state is rank 0. A write whose rank is lower than the stored state's
rank ≥ 2 appends to the timeline but leaves ``state`` alone; at rank 3 the first
final state wins. Every write happens in one Lua call, so concurrent writers
(a worker and the web process's receipt) cannot interleave.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import redis
from pydantic import BaseModel, ConfigDict

from notifier import keys
from notifier.inert import inert
from notifier.ledger import SentMarker, parse_sent
from notifier.logs import get_logger
from notifier.redaction import redact_address, redact_text
from notifier.script_calls import ScriptCall, run_together
from notifier.timestamps import iso_utc

if TYPE_CHECKING:
    from notifier.planner import Delivery

__all__ = [
    "FINAL_STATES",
    "DeliveryState",
    "DeliveryStatus",
    "EventState",
    "EventStatus",
    "FinalState",
    "FinalStateSink",
    "ReceiptResult",
    "StatusStore",
    "TimelineEntry",
    "ignore_final",
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

    @classmethod
    def of(
        cls,
        delivery: Delivery,
        state: str,
        at: str,
        *,
        provider_id: str | None = None,
        error: str | None = None,
    ) -> FinalState:
        """A delivery's final state, ``error`` as given (already fit to store)."""
        return cls(
            event_id=delivery.event_id,
            delivery_id=delivery.delivery_id,
            type=delivery.event_type,
            channel=delivery.channel,
            template=delivery.template,
            state=state,
            provider_id=provider_id,
            error=error,
            at=at,
        )


class FinalStateSink(Protocol):
    """Told once about each delivery (or rejected event) reaching a final state."""

    def __call__(self, final: FinalState, /) -> None:
        """Act on it (the callbacks' seam: ``Runtime.on_final``)."""


def ignore_final(final: FinalState) -> None:
    """The default sink: nothing to do (no callbacks configured)."""


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    """What a provider receipt did: the delivery it is for (None: an unknown sid),
    the state stored after it, and whether it made the delivery final first."""

    delivery: Delivery | None
    state: str | None
    became_final: bool


# Shared by the writing scripts: the precedence of docs/DESIGN.md §10 and the
# timeline's cap, applied inside one Lua call so concurrent writers cannot interleave.
_LIB = """
local function rank(s)
  if s == 'sent' then return 2 end
  if s == 'delivered' or s == 'undelivered' then return 3 end
  return 0
end
local FINAL = {delivered=true, undelivered=true, failed=true, expired=true,
               rate_limited=true, skipped=true}

local function link(ekey, delivery_id, ttl)
  local raw = redis.call('HGET', ekey, 'deliveries')
  local ids = {}
  if raw then ids = cjson.decode(raw) end
  for _, id in ipairs(ids) do
    if id == delivery_id then
      redis.call('EXPIRE', ekey, ttl)
      return
    end
  end
  table.insert(ids, delivery_id)
  if redis.call('EXISTS', ekey) == 0 then
    redis.call('HSET', ekey, 'state', 'accepted', 'reasons', '[]', 'dead_letter_id', '')
  end
  redis.call('HSET', ekey, 'deliveries', cjson.encode(ids))
  redis.call('EXPIRE', ekey, ttl)
end

-- w: state, at, detail, attempts, provider, provider_id, dead_letter_id, sent_final,
-- ttl, max, delivery_id, event_id, channel, template, recipient
local function apply(dkey, ekey, w)
  local cur = redis.call('HMGET', dkey, 'state', 'timeline', 'attempts', 'final')
  local old = cur[1]
  local fields = {'updated_at', w.at}
  if not old then
    for _, name in ipairs({'event_id', 'channel', 'template', 'recipient'}) do
      table.insert(fields, name)
      table.insert(fields, w[name])
    end
  end
  local timeline = {}
  if cur[2] then timeline = cjson.decode(cur[2]) end
  table.insert(timeline, {w.state, w.at, w.detail})
  if #timeline > w.max then
    local kept = {timeline[1]}
    for i = #timeline - w.max + 2, #timeline do table.insert(kept, timeline[i]) end
    timeline = kept
  end
  local changes = true
  if old then
    local was, now = rank(old), rank(w.state)
    if (was >= 2 and now < was) or (was == 3 and now == 3) then changes = false end
  end
  local state = old
  if changes then state = w.state end
  local became = 0
  if changes and cur[4] ~= '1' and
     (FINAL[w.state] or (w.state == 'sent' and w.sent_final == '1')) then
    became = 1
    table.insert(fields, 'final')
    table.insert(fields, '1')
  end
  local attempts = tonumber(cur[3] or '0') or 0
  if w.attempts ~= '' and tonumber(w.attempts) > attempts then attempts = tonumber(w.attempts) end
  for _, name in ipairs({'provider', 'provider_id', 'dead_letter_id'}) do
    if w[name] ~= '' then
      table.insert(fields, name)
      table.insert(fields, w[name])
    end
  end
  redis.call('HSET', dkey, 'state', state, 'attempts', attempts,
             'timeline', cjson.encode(timeline), unpack(fields))
  redis.call('EXPIRE', dkey, w.ttl)
  if not old then link(ekey, w.delivery_id, w.ttl) end
  return {became, state}
end
"""

# KEYS: delivery, event[, sid]. ARGV[1]: ``apply``'s w as one JSON object (one argument
# to send instead of fifteen: packing them was most of the write's cost), ARGV[2]: the
# sid's value (the delivery's JSON) when a third key is given.
_TRANSITION = (
    _LIB
    + """
local w = cjson.decode(ARGV[1])
local reply = apply(KEYS[1], KEYS[2], w)
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', w.ttl)
end
return reply
"""
)

# KEYS: the sid. ARGV: state, at, detail, ttl, max, key prefix. The delivery's keys
# follow from the sid's value, so they are built here: Redis is never a Cluster
# (docs/DESIGN.md §9: one master, Sentinels optional).
_RECEIPT = (
    _LIB
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local d = cjson.decode(raw)
local w = {state=ARGV[1], at=ARGV[2], detail=ARGV[3], attempts='', provider='',
           provider_id='', dead_letter_id='', sent_final='0', ttl=ARGV[4],
           max=tonumber(ARGV[5]), delivery_id=d.delivery_id, event_id=d.event_id,
           channel=d.channel, template=d.template, recipient=''}
local reply = apply(ARGV[6] .. 'delivery:' .. d.delivery_id,
                    ARGV[6] .. 'event:' .. d.event_id, w)
return {raw, reply[1], reply[2]}
"""
)

# KEYS: event, then each planned delivery. ARGV[1]: JSON [ttl, at, event_id, type,
# [[id, channel, template, recipient, state (queued or skipped), detail], …]].
# Replies with the ids that became final (skipped). A delivery already recorded (the
# event came again) is left as it is.
_ACCEPT = """
local a = cjson.decode(ARGV[1])
local ttl, at, event_id, event_type = a[1], a[2], a[3], a[4]
local planned, seen, became = {}, {}, {}
for i = 2, #KEYS do
  local d = a[5][i - 1]
  local id, state = d[1], d[5]
  table.insert(planned, id)
  seen[id] = true
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local final = '0'
    if state == 'skipped' then
      final = '1'
      table.insert(became, id)
    end
    redis.call('HSET', KEYS[i], 'event_id', event_id, 'channel', d[2],
               'template', d[3], 'recipient', d[4], 'state', state,
               'attempts', 0, 'updated_at', at, 'final', final,
               'timeline', cjson.encode({{state, at, d[6]}}))
  end
  redis.call('EXPIRE', KEYS[i], ttl)
end
local raw = redis.call('HGET', KEYS[1], 'deliveries')
if raw then
  for _, id in ipairs(cjson.decode(raw)) do
    if not seen[id] then table.insert(planned, id) end
  end
end
local encoded = '[]'
if #planned > 0 then encoded = cjson.encode(planned) end
redis.call('HSET', KEYS[1], 'type', event_type, 'state', 'accepted', 'reasons', '[]',
           'dead_letter_id', '', 'deliveries', encoded)
redis.call('EXPIRE', KEYS[1], ttl)
return became
"""

# KEYS: event. ARGV: ttl, type, reasons (JSON), dead letter id. An accepted event is
# not overwritten (a forged copy of its id is rejected on its own). Replies 1 the
# first time the event is recorded as rejected.
_REJECT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'accepted' then return 0 end
redis.call('HSET', KEYS[1], 'type', ARGV[2], 'state', 'rejected', 'reasons', ARGV[3],
           'dead_letter_id', ARGV[4])
if not redis.call('HGET', KEYS[1], 'deliveries') then
  redis.call('HSET', KEYS[1], 'deliveries', '[]')
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if redis.call('HSETNX', KEYS[1], 'final', '1') == 1 then return 1 end
return 0
"""

# KEYS: delivery. ARGV: dead letter id, ttl. Only on a delivery already recorded.
_DEAD_LETTERED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'dead_letter_id', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def clean_detail(detail: str) -> str:
    """A timeline detail as stored: addresses redacted, inert, at most 500 characters."""
    return inert(redact_text(detail))[:MAX_DETAIL_CHARS]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class StatusStore:
    """The per-delivery status in Redis (layout above); every key lives ``ttl`` seconds."""

    def __init__(
        self, client: redis.Redis, *, ttl: int, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self._redis = client
        self.ttl = ttl
        self._clock = clock
        self._transition = client.register_script(_TRANSITION)
        self._receipt = client.register_script(_RECEIPT)
        self._accept = client.register_script(_ACCEPT)
        self._reject = client.register_script(_REJECT)
        self._dead_lettered = client.register_script(_DEAD_LETTERED)

    def now(self) -> str:
        """The time a write records (ISO 8601 UTC), from the store's clock."""
        return iso_utc(self._clock())

    # -- writes, as calls that can ride another round trip ---------------------------

    def accept_call(
        self,
        event_id: str,
        event_type: str,
        planned: Sequence[tuple[Delivery, DeliveryState, str]],
    ) -> ScriptCall:
        """An accepted event and its planned deliveries (``queued``, or ``skipped`` with why)."""
        deliveries = [
            [
                delivery.delivery_id,
                delivery.channel,
                delivery.template,
                redact_address(delivery.address),
                state,
                clean_detail(detail),
            ]
            for delivery, state, detail in planned
        ]
        args = (json.dumps([self.ttl, self.now(), event_id, event_type, deliveries]),)
        return ScriptCall(
            self._accept,
            (
                keys.status_event(event_id),
                *(keys.status_delivery(d.delivery_id) for d, _, _ in planned),
            ),
            args,
        )

    def transition_call(
        self,
        delivery: Delivery,
        state: DeliveryState,
        *,
        detail: str = "",
        attempts: int | None = None,
        provider: str | None = None,
        provider_id: str | None = None,
        dead_letter_id: str | None = None,
        sent_final: bool = True,
        sid: bool = False,
    ) -> ScriptCall:
        """One transition of one delivery; ``sid``: also index it by its provider id."""
        values: dict[str, str | int] = {
            "state": state,
            "at": self.now(),
            "detail": clean_detail(detail),
            "attempts": "" if attempts is None else attempts,
            "provider": provider or "",
            "provider_id": provider_id or "",
            "dead_letter_id": dead_letter_id or "",
            "sent_final": "1" if sent_final else "0",
            "ttl": self.ttl,
            "max": MAX_TIMELINE,
            "delivery_id": delivery.delivery_id,
            "event_id": delivery.event_id,
            "channel": delivery.channel,
            "template": delivery.template,
            "recipient": redact_address(delivery.address),
        }
        args = [json.dumps(values)]
        key_list = [
            keys.status_delivery(delivery.delivery_id),
            keys.status_event(delivery.event_id),
        ]
        if sid and provider_id:
            key_list.append(keys.status_sid(provider_id))
            args.append(delivery.model_dump_json())
        return ScriptCall(self._transition, tuple(key_list), tuple(args))

    # -- writes on their own ----------------------------------------------------------

    def write(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run status calls in one round trip; a failure is logged, never raised."""
        return [self.checked(reply) for reply in run_together(self._redis, calls)]

    def checked(self, reply: Any) -> Any:
        """A rider's reply, or None when it failed: status is kept beside the delivery,
        and a write it could not make (Redis full) must not fail the delivery."""
        if isinstance(reply, Exception):
            get_logger().warning("status.not_written", error=f"{type(reply).__name__}: {reply}")
            return None
        return reply

    def became_final(self, reply: Any) -> bool:
        """Whether a transition's reply says it made the delivery final first."""
        reply = self.checked(reply)
        return isinstance(reply, list) and bool(reply) and int(reply[0]) == 1

    def finals_of_accept(self, reply: Any) -> list[str]:
        """The delivery ids an accept's reply says became final (skipped ones)."""
        reply = self.checked(reply)
        return [_text(item) for item in reply] if isinstance(reply, list) else []

    def reject(
        self, event_id: str, event_type: str | None, reasons: Sequence[str], dead_letter_id: str
    ) -> bool:
        """A rejected event; True the first time (a callback is due)."""
        call = ScriptCall(
            self._reject,
            (keys.status_event(event_id),),
            (
                self.ttl,
                event_type or "",
                json.dumps([clean_detail(reason) for reason in reasons]),
                dead_letter_id,
            ),
        )
        return bool(self.write([call])[0] == 1)

    def link(self, delivery: Delivery, detail: str = "") -> bool:
        """Add a delivery (a fallback email, a resend ``<id>:r<n>``) to its event, ``queued``."""
        return self.became_final(
            self.write([self.transition_call(delivery, "queued", detail=detail)])[0]
        )

    def dead_lettered(self, delivery_id: str, dead_letter_id: str) -> bool:
        """Put the dead letter's id on a recorded delivery (receipts' undelivered SMS)."""
        call = ScriptCall(
            self._dead_lettered, (keys.status_delivery(delivery_id),), (dead_letter_id, self.ttl)
        )
        return bool(self.write([call])[0] == 1)

    def receipt(
        self,
        provider_id: str,
        state: Literal["sent", "delivered", "undelivered"],
        detail: str,
    ) -> ReceiptResult:
        """A Twilio receipt for the SMS whose MessageSid is ``provider_id``, in one Lua call."""
        from notifier.planner import Delivery

        reply = self._receipt(
            keys=[keys.status_sid(provider_id)],
            args=[
                state,
                self.now(),
                clean_detail(detail),
                self.ttl,
                MAX_TIMELINE,
                keys.STATUS_PREFIX,
            ],
        )
        if not reply:
            return ReceiptResult(None, None, False)
        raw, became, stored = reply
        return ReceiptResult(Delivery.model_validate_json(raw), _text(stored), int(became) == 1)

    def next_resend_id(self, delivery_id: str) -> str:
        """``<delivery_id>:r<n>``, n the next unused (a resend of an undelivered SMS)."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(keys.status_replays(delivery_id))
            pipe.expire(keys.status_replays(delivery_id), self.ttl)
            n = int(pipe.execute()[0])
        return f"{delivery_id}:r{n}"

    # -- reads ------------------------------------------------------------------------

    def event(self, event_id: str) -> EventStatus | None:
        """The event and all its deliveries (two round trips), or None if unknown."""
        stored = self._redis.hgetall(keys.status_event(event_id))
        if not stored:
            return None
        fields = {_text(k): _text(v) for k, v in stored.items()}
        ids = _json_list(fields.get("deliveries", "[]"))
        deliveries = self._deliveries(ids)
        return _event(event_id, fields, deliveries)

    def for_delivery(self, delivery_id: str) -> EventStatus | None:
        """The event shape holding only this delivery (two round trips), or None."""
        found = self._deliveries([delivery_id])
        if not found:
            return None
        event_id = found[0][1]
        stored = self._redis.hgetall(keys.status_event(event_id))
        fields = {_text(k): _text(v) for k, v in stored.items()}
        return _event(event_id, fields, found)

    def _deliveries(self, ids: Sequence[str]) -> list[tuple[DeliveryStatus, str]]:
        # Each record and its ledger entry, in one round trip: an email's `sent` is the
        # ledger's marker, not a write of its own (docs/status.md, "Round trips").
        with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(keys.status_delivery(delivery_id))
                pipe.get(keys.ledger(delivery_id))
            replies = pipe.execute() if ids else []
        found = []
        for index, delivery_id in enumerate(ids):
            stored, marker = replies[2 * index], replies[2 * index + 1]
            if stored:
                fields = {_text(k): _text(v) for k, v in stored.items()}
                delivery = _with_marker(
                    _delivery(delivery_id, fields), parse_sent(_text(marker) or None)
                )
                found.append((delivery, fields.get("event_id", "")))
        return found


def _with_marker(delivery: DeliveryStatus, marker: SentMarker | None) -> DeliveryStatus:
    """The record with the ledger's ``sent`` marker applied, as a ``sent`` write would have.

    Only where the record is below ``sent`` (§10 ranks): a receipt's state stays.
    """
    if marker is None or _RANKS.get(delivery.state, 0) >= 2:
        return delivery
    entry = TimelineEntry(state="sent", at=marker.at, detail=f"accepted by {marker.provider}")
    timeline = [*delivery.timeline, entry]
    if len(timeline) > MAX_TIMELINE:
        timeline = [timeline[0], *timeline[len(timeline) - MAX_TIMELINE + 1 :]]
    return delivery.model_copy(
        update={
            "state": "sent",
            "attempts": max(delivery.attempts, marker.attempt),
            "provider": marker.provider,
            "provider_id": marker.provider_id,
            "updated_at": marker.at or delivery.updated_at,
            "timeline": timeline,
        }
    )


_RANKS = {"sent": 2, "delivered": 3, "undelivered": 3}


def _json_list(text: str) -> list[str]:
    # Lua's cjson writes an empty table as {}: an empty list all the same.
    value = json.loads(text) if text else []
    return [str(item) for item in value] if isinstance(value, list) else []


def _delivery(delivery_id: str, fields: dict[str, str]) -> DeliveryStatus:
    timeline_raw = json.loads(fields.get("timeline") or "[]")
    timeline = [
        TimelineEntry(state=entry[0], at=entry[1], detail=entry[2] if len(entry) > 2 else "")
        for entry in (timeline_raw if isinstance(timeline_raw, list) else [])
    ]
    return DeliveryStatus.model_validate(
        {
            "delivery_id": delivery_id,
            "channel": fields.get("channel", ""),
            "template": fields.get("template", ""),
            "recipient": fields.get("recipient", ""),
            "state": fields.get("state", "queued"),
            "attempts": int(fields.get("attempts") or 0),
            "provider": fields.get("provider") or None,
            "provider_id": fields.get("provider_id") or None,
            "dead_letter_id": fields.get("dead_letter_id") or None,
            "updated_at": fields.get("updated_at", ""),
            "timeline": timeline,
        }
    )


def _event(
    event_id: str, fields: dict[str, str], deliveries: list[tuple[DeliveryStatus, str]]
) -> EventStatus:
    return EventStatus(
        event_id=event_id,
        type=fields.get("type") or None,
        state="rejected" if fields.get("state") == "rejected" else "accepted",
        reasons=_json_list(fields.get("reasons", "[]")),
        dead_letter_id=fields.get("dead_letter_id") or None,
        deliveries=[delivery for delivery, _ in deliveries],
    )
