"""The delivery pipeline as plain functions: validate, plan, claim, render, send, decide.

Celery is not imported here. The task bodies in ``notifier.app`` call
``handle_event`` and ``deliver`` with a ``Runtime`` (the process's long-lived
clients), so every branch below is testable without a broker.

Budget (docs/DESIGN.md §1): on the happy path an email costs one Celery task.
``handle_event`` sends the event's emails itself on their first attempt and
enqueues only SMS deliveries and retries, and any email its task's time
would not be sure to cover (``notifier.budget``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import redis
from pydantic import ValidationError

from notifier import budget, callbacks, keys
from notifier.channels import Receipt
from notifier.channels.sms import segments
from notifier.compose import compose_email, compose_sms
from notifier.deadletter import AttemptRecord, DeadLetter, Status
from notifier.deadlines import Deadline, earliest
from notifier.errors import (
    AmbiguousDeliveryError,
    CircuitOpenError,
    DeadlineExpiredError,
    InvalidEventError,
    NotifierError,
    PermanentError,
    ProviderUnavailableError,
    PublishError,
    TransientError,
)
from notifier.events import Event, json_type, parse_event
from notifier.hold import OutageHold
from notifier.jobs import CallbackJob, Job
from notifier.ledger import ClaimState
from notifier.logs import get_logger
from notifier.planner import Delivery, plan, sms_fallback
from notifier.runtime import Runtime
from notifier.script_calls import ScriptCall
from notifier.status_store import DeliveryState, FinalState, clean_detail, ignore_final
from notifier.timestamps import iso_utc

__all__ = [
    "Job",
    "Outcome",
    "count_redelivery",
    "dead_letter_held",
    "deliver",
    "handle_event",
    "parse_job",
    "reject",
    "replay",
    "replay_many",
    "run_job",
    "task_failed",
]


OutcomeName = Literal[
    "sent",
    "duplicate",
    "queued",
    "skipped",
    "retried",
    "deferred",
    "dead",
    "fallback",
    "rate_limited",
    "ambiguous",
    "held",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivery in this call."""

    delivery_id: str
    outcome: OutcomeName
    receipt: Receipt | None = None
    error: str | None = None


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_SMS_OFF = "Twilio is not configured"

# The delivery state a dead letter's status leaves (docs/DESIGN.md §9).
_DEAD_STATES: dict[Status, DeliveryState] = {
    "failed": "failed",
    "expired": "expired",
    "rate_limited": "rate_limited",
    "undelivered": "undelivered",
    "rejected": "failed",
}


class _Accept:
    """An accepted event's status write (``queued``/``skipped`` for every planned
    delivery), waiting to ride the first claim of the event's emails (docs/status.md)."""

    def __init__(self, rt: Runtime, event: Event, planned: Sequence[Delivery]) -> None:
        self._rt = rt
        self._by_id = {delivery.delivery_id: delivery for delivery in planned}
        entries: list[tuple[Delivery, DeliveryState, str]] = [
            (d, "skipped", _SMS_OFF)
            if d.channel == "sms" and not rt.settings.sms_enabled
            else (d, "queued", "")
            for d in planned
        ]
        self.call: ScriptCall | None = rt.status.accept_call(
            str(event.event_id), event.type, entries
        )

    def take(self) -> tuple[ScriptCall, ...]:
        """The write to ride a round trip, once; () after that."""
        call, self.call = self.call, None
        return () if call is None else (call,)

    def settle(self, reply: object) -> None:
        """Tell ``on_final`` about the deliveries the write made final (skipped SMS)."""
        for delivery_id in self._rt.status.finals_of_accept(reply):
            delivery = self._by_id.get(delivery_id)
            if delivery is not None:
                _final(self._rt, delivery, "skipped", error=_SMS_OFF)

    def flush(self) -> None:
        """Write it on its own if nothing carried it (no email sent inline)."""
        calls = self.take()
        if calls:
            self.settle(self._rt.status.write(calls)[0])


def _final(
    rt: Runtime,
    delivery: Delivery,
    state: str,
    *,
    provider_id: str | None = None,
    error: str | None = None,
) -> None:
    """Tell ``rt.on_final`` (once per delivery: the store said this write made it final)."""
    if rt.on_final is ignore_final:
        return
    rt.on_final(
        FinalState.of(
            delivery,
            state,
            rt.status.now(),
            provider_id=provider_id,
            error=None if error is None else clean_detail(error),
        )
    )


def _status(
    rt: Runtime,
    delivery: Delivery,
    state: DeliveryState,
    *,
    detail: str = "",
    attempts: int | None = None,
    dead_letter_id: str | None = None,
    also: Sequence[ScriptCall] = (),
) -> None:
    """A transition written on its own round trip (paths off the happy one)."""
    call = rt.status.transition_call(
        delivery, state, detail=detail, attempts=attempts, dead_letter_id=dead_letter_id
    )
    replies = rt.status.write([call, *also])
    if rt.status.became_final(replies[0]):
        _final(rt, delivery, state, error=detail or None)


def handle_event(raw: object, rt: Runtime, *, started: float | None = None) -> list[Outcome]:
    """Validate and plan one event; send its emails now, queue its SMS.

    An invalid event is rejected: logged, and kept in the dead-letter store
    with the reasons. It is never raised back to Celery (a retry cannot fix it).

    ``started`` is when the task began, on ``rt.monotonic`` (default: now).
    Every send carries the task's deadline (``notifier.budget``), so the soft
    time limit never cuts a send the server may already hold (issue 14). An
    email is sent inline only while one transaction on an open connection
    still fits before that deadline; otherwise it and the emails after it go
    to ``notifier.email`` as first attempts, each with a task of its own.
    """
    started = rt.monotonic() if started is None else started
    if not isinstance(raw, dict):
        # JSON text is for the CLI and client; on the queue the contract is an object.
        reject(raw, [f"event must be a JSON object, got {json_type(raw)}"], rt)
        return []
    try:
        event = parse_event(raw, allow_special_domains=rt.settings.notifier_allow_special_domains)
    except InvalidEventError as exc:
        reject(raw, exc.errors, rt)
        return []
    get_logger().debug("event.accepted", event_id=str(event.event_id), type=event.type)
    rt.metrics.record_event(event.type)
    outcomes = []
    last_start = budget.hand_over_by(rt.settings, "email", started) - budget.inline_floor(
        rt.settings
    )
    handing_off = False
    planned = plan(event)
    # Every planned delivery is recorded `queued` (or `skipped`) by a write that
    # rides the first inline email's claim: no round trip of its own (docs/status.md).
    accept = _Accept(rt, event, planned)
    for delivery in planned:
        job = Job(delivery=delivery)
        if delivery.channel == "sms":
            if not rt.settings.sms_enabled:
                _log_outcome(rt, job, "skipped", reason=_SMS_OFF)
                outcomes.append(Outcome(delivery.delivery_id, "skipped"))
                continue
            # SMS are throttled per sender by Twilio: they get a queue of their own.
            rt.scheduler.schedule(job, countdown=0)
            _log_outcome(rt, job, "queued")
            outcomes.append(Outcome(delivery.delivery_id, "queued"))
            continue
        handing_off = handing_off or rt.monotonic() > last_start
        if handing_off:
            # A deliver task on notifier.email has the whole of its own time for it.
            rt.scheduler.schedule(job, countdown=0)
            _log_outcome(rt, job, "queued", reason="task time budget")
            outcomes.append(Outcome(delivery.delivery_id, "queued"))
            continue
        outcomes.append(run_job(job, rt, started=started, accept=accept))
    accept.flush()
    return outcomes


def reject(raw: object, errors: list[str], rt: Runtime) -> None:
    """Keep an input we cannot process in the dead-letter store (``rejected``) and log why."""
    entry = rt.dead_letters.reject(raw, errors)
    rt.metrics.record_delivery(None, entry.event_type, "rejected")
    get_logger().warning(
        "event.rejected",
        event_id=entry.event_id,
        type=entry.event_type,
        errors=errors,
        dead_letter_id=entry.id,
    )
    became = entry.event_id is not None and rt.status.reject(
        entry.event_id, entry.event_type, errors, entry.id
    )
    if became and entry.event_id is not None and rt.on_final is not ignore_final:
        rt.on_final(
            FinalState(
                event_id=entry.event_id,
                delivery_id=None,
                type=entry.event_type,
                channel=None,
                template=None,
                state="rejected",
                provider_id=None,
                error=clean_detail("; ".join(errors)),
                at=rt.status.now(),
            )
        )
    _alert_if_crowded(rt)


def deliver(raw_job: object, rt: Runtime, *, started: float | None = None) -> Outcome | None:
    """Run the job given to ``notifier.deliver`` (a retry, a replay or an SMS).

    A job that is not what its event calls for is rejected before anything
    else happens: no claim is taken, nothing is rendered. ``started``: the
    task's start on ``rt.monotonic`` (default: now), as for ``handle_event``.
    """
    try:
        job = parse_job(raw_job, allow_special_domains=rt.settings.notifier_allow_special_domains)
    except InvalidEventError as exc:
        reject(raw_job, ["notifier.deliver job: " + message for message in exc.errors], rt)
        return None
    return run_job(job, rt, started=started)


# Every field of a delivery but the event it carries: where, what and until when.
_ROUTING = tuple(name for name in Delivery.model_fields if name != "event")


def parse_job(raw_job: object, *, allow_special_domains: bool = False) -> Job:
    """A ``notifier.deliver`` argument, held to what its event calls for.

    Anyone who can write to the queue can write a job, so a job is believed
    only as far as its event goes: the event must pass the contract again,
    and the delivery must be one that planning that event gives (or the
    email standing in for one of its SMS), field for field: the role, the
    address, the deadline of a reset link. The job returned carries the
    event as validated. Raises ``InvalidEventError`` listing the problems.
    ``allow_special_domains`` is ``NOTIFIER_ALLOW_SPECIAL_DOMAINS``.
    """
    try:
        job = Job.model_validate(raw_job)
    except ValidationError as exc:
        raise InvalidEventError(
            [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        ) from None
    delivery = job.delivery
    try:
        event = parse_event(delivery.event, allow_special_domains=allow_special_domains)
    except InvalidEventError as exc:
        raise InvalidEventError([f"delivery.event.{message}" for message in exc.errors]) from None
    if not isinstance(delivery.event.get(delivery.role), dict):
        raise InvalidEventError([f"delivery.role: {delivery.role!r} is not a person in its event"])
    planned = _planned(event, delivery.delivery_id)
    if planned is None:
        raise InvalidEventError(["delivery.delivery_id: not a delivery its event calls for"])
    mismatched = [name for name in _ROUTING if getattr(delivery, name) != getattr(planned, name)]
    if mismatched:
        raise InvalidEventError(
            [f"delivery.{name}: not what its event calls for" for name in mismatched]
        )
    return job.model_copy(update={"delivery": planned})


# A resend of an undelivered SMS (docs/DESIGN.md §10): its planned id, ":r", a number.
_RESEND = re.compile(r"^(?P<planned>.+):r(?P<n>[1-9][0-9]{0,8})$")


def _planned(event: Event, delivery_id: str) -> Delivery | None:
    resend = _RESEND.match(delivery_id)
    for planned in plan(event):
        if planned.delivery_id == delivery_id:
            return planned
        if resend and planned.channel == "sms" and planned.delivery_id == resend["planned"]:
            return planned.model_copy(update={"delivery_id": delivery_id})
        fallback = sms_fallback(planned)
        if fallback is not None and fallback.delivery_id == delivery_id:
            return fallback
    return None


def run_job(
    job: Job, rt: Runtime, *, started: float | None = None, accept: _Accept | None = None
) -> Outcome:
    """One attempt of one delivery, guarded by the idempotency ledger.

    ``started``: the task's start on ``rt.monotonic`` (default: now); the
    send must hand its message over by the task's deadline (``notifier.budget``).
    ``accept``: the event's status write, to ride this claim (``handle_event``).
    """
    delivery = job.delivery
    started = rt.monotonic() if started is None else started
    now = rt.clock()
    deadline = _deadline(delivery, rt)
    if deadline is not None and deadline.expired():
        error = f"DeadlineExpired: not sent: its deadline {delivery.not_after} has passed"
        if accept is not None:
            accept.flush()  # `queued` before `expired`, in the order they happened
        return _dead(job, rt, error, status="expired", record=False)

    riders = accept.take() if accept is not None else ()
    claim = rt.ledger.claim(delivery.delivery_id, riders)
    if accept is not None and riders:
        accept.settle(claim.riders[0])
    if claim.state is ClaimState.SENT:
        _log_outcome(rt, job, "duplicate")
        return Outcome(delivery.delivery_id, "duplicate")
    if claim.state is ClaimState.BUSY:
        # Another worker is sending it right now. Look again once its lease
        # would have run out; this does not use up one of our attempts.
        rt.scheduler.schedule(job, countdown=claim.retry_after + 1.0)
        _log_outcome(rt, job, "deferred", retry_in=round(claim.retry_after + 1.0, 1))
        return Outcome(delivery.delivery_id, "deferred")

    exempt = job.replay_grant is not None and rt.recipient_limits.redeem(
        job.replay_grant, delivery.delivery_id
    )
    if job.replay_grant is not None and not exempt:
        get_logger().warning(
            "delivery.replay_grant_refused",
            delivery_id=delivery.delivery_id,
            reason="unknown, spent, expired or for another delivery",
        )
    rule = None
    if not exempt:
        rule = rt.recipient_limits.exceeded(
            delivery_id=delivery.delivery_id,
            template=delivery.template,
            channel=delivery.channel,
            address=delivery.address,
            now=now.timestamp(),
        )
    if rule is not None:
        rt.ledger.release(delivery.delivery_id, claim)
        error = (
            f"RateLimited: more than {rule.limit} {rule.name} per {rule.period}s "
            "to this recipient (NOTIFIER_RATE_LIMITS)"
        )
        return _dead(job, rt, error, status="rate_limited", record=False)
    wait = rt.throttles[delivery.channel].delay(now.timestamp())
    if wait > 0:
        # Over the provider's send rate: later, not never, and not an attempt.
        rt.ledger.release(delivery.delivery_id, claim)
        rt.scheduler.schedule(_with_leave(job, exempt, rt), countdown=wait)
        _log_outcome(rt, job, "deferred", retry_in=round(wait, 3), reason="provider rate")
        return Outcome(delivery.delivery_id, "deferred")

    # The channels hold the deadline during the send too: every wait is cut to
    # the time left, and the message is not handed over once it has passed.
    # Whichever comes first: the delivery's own (a reset link's expiry) or the
    # task's, which keeps the soft time limit off a send the server holds.
    send_by = earliest(deadline, _task_deadline(delivery.channel, rt, started))
    try:
        receipt = _send(delivery, rt, now, send_by)
    except NotifierError as exc:
        rt.ledger.release(delivery.delivery_id, claim)
        return _failed(job, rt, exc, exempt=exempt)
    try:
        if delivery.channel == "email":
            # Email has no receipt: `sent` is final, and its record is the ledger's
            # marker itself, carrying when and on which attempt (docs/status.md).
            first = rt.ledger.record_sent(
                delivery.delivery_id, receipt, at=rt.status.now(), attempt=job.attempt
            )
        else:
            first = _record_sms_sent(job, receipt, rt)
    except redis.RedisError as exc:
        # The provider took it, but the ledger could not record it (Redis full
        # or gone): this send will be repeated once the message comes back.
        # Logged now, so that the duplicate is visible (docs/guarantees.md).
        _log_outcome(
            rt,
            job,
            "sent",
            provider=receipt.provider,
            provider_id=receipt.provider_id,
            recorded=False,
            error=_error_text(exc),
        )
        raise
    _log_outcome(rt, job, "sent", provider=receipt.provider, provider_id=receipt.provider_id)
    if first:
        _final(rt, delivery, "sent", provider_id=receipt.provider_id)
    return Outcome(delivery.delivery_id, "sent", receipt=receipt)


def _record_sms_sent(job: Job, receipt: Receipt, rt: Runtime) -> bool:
    """The ``sent`` marker and the SMS's status record; True if that made it final.

    An SMS's ``sent`` is final only when no receipt was asked for (no
    NOTIFIER_PUBLIC_URL); otherwise Twilio's receipt ends it, found by its
    MessageSid (docs/DESIGN.md §10), which this write indexes.
    """
    delivery = job.delivery
    receipts = rt.settings.notifier_public_url is not None
    sent = rt.status.transition_call(
        delivery,
        "sent",
        # The id is in provider_id; a detail that looked like an address would be
        # redacted (docs/status.md).
        detail=f"accepted by {receipt.provider}",
        attempts=job.attempt,
        provider=receipt.provider,
        provider_id=receipt.provider_id,
        sent_final=not receipts,
        sid=receipts,
    )
    replies = rt.ledger.mark_sent(delivery.delivery_id, receipt, (sent,))
    return rt.status.became_final(replies[0])


def _with_leave(job: Job, exempt: bool, rt: Runtime) -> Job:
    """The job as it goes round again: its grant was spent, so an exempt one gets a new one."""
    grant = rt.recipient_limits.grant(job.delivery.delivery_id) if exempt else None
    return job.model_copy(update={"replay_grant": grant})


def _task_deadline(channel: str, rt: Runtime, started: float) -> Deadline:
    """The latest instant this task may hand a message over (``notifier.budget``)."""
    left = budget.hand_over_by(rt.settings, channel, started) - rt.monotonic()
    return Deadline.after(left, rt.clock, name="the task's time for sends")


def _deadline(delivery: Delivery, rt: Runtime) -> Deadline | None:
    """The instant after which this delivery must not be sent (a reset link's expiry)."""
    if not delivery.not_after:
        return None
    return Deadline(datetime.fromisoformat(delivery.not_after), rt.clock, name="its deadline")


def _send(delivery: Delivery, rt: Runtime, now: datetime, deadline: Deadline | None) -> Receipt:
    context = rt.renderer.context(delivery, now)
    if delivery.channel == "email":
        if delivery.fallback_for:
            rendered = rt.renderer.sms_as_email(delivery.template, context)
        else:
            rendered = rt.renderer.email(delivery.template, context)
        sender = rt.sender()
        message = compose_email(
            delivery,
            rendered,
            sender,
            now,
            allow_special_domains=rt.settings.notifier_allow_special_domains,
        )
        return rt.metrics.timed_send(
            lambda: rt.smtp.send(
                message, sender=sender.addr_spec, recipient=delivery.address, deadline=deadline
            )
        )
    body = rt.renderer.sms(delivery.template, context)
    count, encoding = segments(body)
    get_logger().debug(
        "sms.segments", delivery_id=delivery.delivery_id, segments=count, encoding=encoding
    )
    sms = rt.sms()
    return rt.metrics.timed_send(lambda: sms.send(compose_sms(delivery, body), deadline=deadline))


def _failed(job: Job, rt: Runtime, exc: NotifierError, *, exempt: bool = False) -> Outcome:
    error = _error_text(exc)
    deadline = _deadline(job.delivery, rt)
    if isinstance(exc, DeadlineExpiredError) and deadline is not None and deadline.expired():
        # Its deadline passed during the send, before the message was handed
        # over: as when it had passed before (run_job), never sent late.
        error = f"DeadlineExpired: not sent: {exc}"
        record = AttemptRecord(attempt=job.attempt, at=iso_utc(rt.clock()), error=error)
        return _dead(
            job.model_copy(update={"history": [*job.history, record]}),
            rt,
            error,
            status="expired",
        )
    hold = _hold_for(job, rt, exc)
    if hold is not None:
        return _hold(hold, _with_leave(job, exempt, rt), rt, error)
    if isinstance(exc, AmbiguousDeliveryError):
        # The provider may have it: retried as a normal attempt (at least
        # once), but said aloud, and so in the dead letter's history too
        # (docs/DESIGN.md §10).
        error = f"ambiguous: {error}"
        _log_outcome(rt, job, "ambiguous", error=error)
    record = AttemptRecord(attempt=job.attempt, at=iso_utc(rt.clock()), error=error)
    history = [*job.history, record]
    if isinstance(exc, TransientError):
        delay = rt.retry.delay_after(job.attempt)
        if delay is not None:
            retry = _with_leave(
                Job(delivery=job.delivery, attempt=job.attempt + 1, history=history), exempt, rt
            )
            rt.scheduler.schedule(retry, countdown=delay)
            _log_outcome(rt, job, "retried", error=error, retry_in=round(delay, 3))
            _status(rt, job.delivery, "retrying", detail=error, attempts=job.attempt)
            return Outcome(job.delivery.delivery_id, "retried", error=error)
        error = f"{error} (gave up after {job.attempt} attempts)"
    return _dead(job.model_copy(update={"history": history}), rt, error, status="failed")


def _hold_for(job: Job, rt: Runtime, exc: NotifierError) -> OutageHold | None:
    """The hold, when this email failed because every SMTP provider is down."""
    hold = rt.hold
    if hold is None or job.delivery.channel != "email":
        return None
    if isinstance(exc, CircuitOpenError):
        return hold
    # This attempt found the provider down (and tripped its circuit): held if
    # that left no provider to try, rather than retried into a dead letter.
    if isinstance(exc, ProviderUnavailableError) and hold.active():
        return hold
    return None


def _hold(hold: OutageHold, job: Job, rt: Runtime, error: str) -> Outcome:
    # No attempt is used up: the job comes back with the attempt it had
    # (docs/DESIGN.md §10: state `held`, not final).
    held = hold.put(job, rt.clock())
    since = held.held_since
    _log_outcome(rt, job, "held", error=error, held_since=iso_utc(since) if since else None)
    _status(rt, job.delivery, "held", detail=error)
    return Outcome(job.delivery.delivery_id, "held", error=error)


def dead_letter_held(job: Job, error: str, status: Status, rt: Runtime) -> Outcome:
    """Dead-letter a held email that ran out of time (``notifier.outage``)."""
    return _dead(job, rt, error, status=status, record=False)


def _dead(job: Job, rt: Runtime, error: str, *, status: Status, record: bool = True) -> Outcome:
    history = job.history
    if not record:
        history = [*history, AttemptRecord(attempt=0, at=iso_utc(rt.clock()), error=error)]
    # The seed's "fallback to email": a failed SMS's text goes to the same
    # person by email. The SMS stays dead-lettered, so operators see Twilio fail.
    fallback = sms_fallback(job.delivery) if status == "failed" else None
    entry = rt.dead_letters.add_delivery(
        job.delivery,
        status=status,
        error=error,
        history=history,
        fallback=fallback.delivery_id if fallback else None,
    )
    outcome: OutcomeName = "rate_limited" if status == "rate_limited" else "dead"
    _log_outcome(rt, job, outcome, error=error, status=status, dead_letter_id=entry.id)
    # The fallback email gets a record of its own, linked to the event, in the
    # same round trip as the SMS's final state.
    state = _DEAD_STATES[status]
    _status(
        rt,
        job.delivery,
        state,
        detail=error,
        attempts=job.attempt if record else None,
        dead_letter_id=entry.id,
        also=[
            rt.status.transition_call(
                fallback, "queued", detail=f"fallback for {job.delivery.delivery_id}"
            )
        ]
        if fallback
        else (),
    )
    _alert_if_crowded(rt)
    if fallback is not None:
        rt.scheduler.schedule(Job(delivery=fallback), countdown=0)
        _log_outcome(rt, job, "fallback", fallback_delivery_id=fallback.delivery_id)
    return Outcome(job.delivery.delivery_id, outcome, error=error)


def _alert_if_crowded(rt: Runtime) -> None:
    rt.dead_letters.warn_if_crowded(rt.settings.notifier_dlq_alert_threshold, rt.clock())


def task_failed(
    task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException, rt: Runtime
) -> None:
    """Record a task that raised something we did not expect (a bug, a time limit).

    Celery acks such a message (``task_acks_on_failure_or_timeout``), so it
    would vanish: a delivery is dead-lettered with its history, anything
    else (an event) is kept whole, status ``failed``, for replay.
    """
    error = _error_text(exc)
    if task_name == keys.CALLBACK_TASK and len(args) == 1 and not kwargs:
        try:
            callback = CallbackJob.model_validate(args[0])
        except ValidationError:
            pass
        else:
            failed = callbacks.with_attempt(callback, exc, rt.clock())
            entry = rt.dead_letters.add_callback(
                callback.payload, error=error, history=failed.history
            )
            rt.metrics.record_callback("dead")
            get_logger().error("task.failed", task=task_name, error=error, dead_letter_id=entry.id)
            _alert_if_crowded(rt)
            return
    if task_name == keys.HANDLE_EVENTS_TASK and len(args) == 1 and isinstance(args[0], list):
        # A batch is kept as one dead letter per event, each replayable on its
        # own; the ledger stops whichever of them was sent before the failure.
        for item in args[0]:
            task_failed(keys.HANDLE_EVENT_TASK, (item,), {}, exc, rt)
        return
    if task_name == keys.DELIVER_TASK and len(args) == 1 and not kwargs:
        try:
            job = Job.model_validate(args[0])
        except ValidationError:
            pass
        else:
            record = AttemptRecord(attempt=job.attempt, at=iso_utc(rt.clock()), error=error)
            _dead(
                job.model_copy(update={"history": [*job.history, record]}),
                rt,
                error,
                status="failed",
            )
            return
    raw: object = args[0] if len(args) == 1 and not kwargs else {"args": list(args), **kwargs}
    entry = rt.dead_letters.reject(raw, [f"{task_name} failed: {error}"], status="failed")
    rt.metrics.record_delivery(None, entry.event_type, "dead")
    get_logger().error("task.failed", task=task_name, error=error, dead_letter_id=entry.id)
    _alert_if_crowded(rt)


def count_redelivery(task_name: str, message_id: str, args: tuple[Any, ...], rt: Runtime) -> bool:
    """Count one more redelivery of a message; past the limit, dead-letter it and say True.

    A delivery job is counted by its ``delivery_id``, not by the message: a
    redelivered job that finds its crashed predecessor's claim is deferred as
    a new message, and a count per message would start from zero every time.
    """
    key = keys.redeliveries(_redelivery_subject(task_name, message_id, args))
    with rt.redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        # Long enough to see every redelivery (each waits a visibility timeout).
        pipe.expire(
            key,
            rt.settings.notifier_visibility_timeout * (rt.settings.notifier_max_redeliveries + 2),
        )
        count = int(pipe.execute()[0])
    if count <= rt.settings.notifier_max_redeliveries:
        return False
    poison = RuntimeError(
        f"PoisonMessage: redelivered {count} times without finishing "
        f"(limit NOTIFIER_MAX_REDELIVERIES={rt.settings.notifier_max_redeliveries})"
    )
    task_failed(task_name, args, {}, poison, rt)
    return True


def _redelivery_subject(task_name: str, message_id: str, args: tuple[Any, ...]) -> str:
    if task_name == keys.DELIVER_TASK and len(args) == 1:
        try:
            return Job.model_validate(args[0]).delivery.delivery_id
        except ValidationError:
            pass
    return message_id


def replay(entry: DeadLetter, rt: Runtime) -> str:
    """Send a dead letter back through the pipeline; say what was done.

    A delivery is re-enqueued on its channel's queue with its history (a
    fresh set of attempts); the ledger stops it if it was delivered meanwhile.
    A rejected event is published again to ``notifier.handle_event``, for
    when the cause was fixed on our side (e.g. a newer worker).
    """
    if entry.callback is not None:
        return _replay_callback(entry, rt)
    if entry.delivery is not None:
        delivery = _replayed_delivery(entry, rt)
        # The operator's call: this delivery may go past the per-recipient limits, once.
        grant = rt.recipient_limits.grant(delivery.delivery_id)
        job = Job(delivery=delivery, history=entry.history, replay_grant=grant)
        rt.scheduler.schedule(job, countdown=0)
        if delivery is not entry.delivery:
            return f"re-enqueued on {entry.channel} as {delivery.delivery_id}"
        return f"re-enqueued on {entry.channel}"
    rt.scheduler.publish_event(_replayable_event(entry))
    return "re-published to notifier.handle_event"


def replay_many(entries: Sequence[DeadLetter], rt: Runtime) -> list[str | NotifierError]:
    """``replay`` for a batch: per entry, what was done or why it could not be.

    The deliveries' grants are written in one pipeline, and their jobs and
    the rejected events published in one (``Scheduler.schedule_many``): a
    bulk replay re-enqueues thousands a second instead of a few hundred. When
    that publish fails, every entry of it gets the error (and is put back by
    the store): the ledger stops whichever job was sent after all.
    """
    outcomes: list[str | NotifierError] = ["" for _ in entries]
    with_delivery = [i for i, e in enumerate(entries) if e.delivery is not None]
    deliveries: list[tuple[int, Delivery]] = []
    events: list[tuple[int, dict[str, Any]]] = []
    for i, entry in enumerate(entries):
        if entry.callback is not None:
            # Few, and on their own queue: one publish each.
            try:
                outcomes[i] = _replay_callback(entry, rt)
            except NotifierError as exc:
                outcomes[i] = exc
        elif entry.delivery is None:
            try:
                events.append((i, _replayable_event(entry)))
            except PermanentError as exc:
                outcomes[i] = exc
    try:
        # An undelivered SMS goes again under a new id (two writes each: rare).
        deliveries = [(i, _replayed_delivery(entries[i], rt)) for i in with_delivery]
        grants = rt.recipient_limits.grant_many([d.delivery_id for _, d in deliveries])
        jobs = [
            Job(delivery=delivery, history=entries[i].history, replay_grant=grant)
            for (i, delivery), grant in zip(deliveries, grants, strict=True)
        ]
        rt.scheduler.schedule_many(jobs, [event for _, event in events])
    except (redis.RedisError, NotifierError) as exc:
        error = (
            exc
            if isinstance(exc, NotifierError)
            else PublishError(f"grants not written: {type(exc).__name__}: {exc}")
        )
        for i in with_delivery + [i for i, _ in events]:
            outcomes[i] = error
        return outcomes
    for i, delivery in deliveries:
        original = entries[i].delivery
        resent = original is not None and delivery.delivery_id != original.delivery_id
        outcomes[i] = f"re-enqueued on {delivery.channel}" + (
            f" as {delivery.delivery_id}" if resent else ""
        )
    for i, _ in events:
        outcomes[i] = "re-published to notifier.handle_event"
    return outcomes


def _replay_callback(entry: DeadLetter, rt: Runtime) -> str:
    """Put a dead-lettered callback back on ``notifier.callbacks``, attempts afresh.

    Its history goes with it, as a replayed delivery's does (docs/DESIGN.md §10).
    """
    queue = rt.callback_queue
    if entry.callback is None or queue is None:
        raise PermanentError("nothing to replay: no callback, or no queue to put it on")
    # The store keeps at most 20 records (the first and the last 19): a job may hold 50.
    queue.schedule_callback(CallbackJob(payload=entry.callback, history=entry.history), 0)
    return f"re-enqueued on {keys.CALLBACKS_QUEUE}"


def _replayed_delivery(entry: DeadLetter, rt: Runtime) -> Delivery:
    """The delivery a replay sends: an undelivered SMS goes again as ``<id>:r<n>``.

    The ledger holds its first send as `sent`, so under its own id the replay would
    stop there (docs/DESIGN.md §10); the new id is linked to the event's status.
    """
    delivery = entry.delivery
    assert delivery is not None  # callers pass only entries holding a delivery
    if entry.status != "undelivered" or delivery.channel != "sms":
        return delivery
    base = _RESEND.match(delivery.delivery_id)
    planned_id = base["planned"] if base else delivery.delivery_id
    resend = delivery.model_copy(update={"delivery_id": rt.status.next_resend_id(planned_id)})
    rt.status.link(resend, detail=f"resend of {planned_id}")
    return resend


def _replayable_event(entry: DeadLetter) -> dict[str, Any]:
    """The rejected event an entry holds, as ``replay`` would publish it."""
    if entry.raw_event is None:
        raise PermanentError("nothing to replay: the entry holds neither a delivery nor an event")
    try:
        event = json.loads(entry.raw_event)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"the rejected payload is not JSON ({exc}): cannot replay") from None
    if not isinstance(event, dict):
        raise PermanentError("the rejected payload is not a JSON object: cannot replay")
    return event


def _log_outcome(rt: Runtime, job: Job, outcome: OutcomeName, **fields: object) -> None:
    delivery = job.delivery
    rt.metrics.record_delivery(delivery.channel, delivery.event_type, outcome)
    level = (
        "warning" if outcome in ("retried", "held", "dead", "rate_limited", "ambiguous") else "info"
    )
    if fields.get("recorded") is False:
        level = "warning"  # a send the ledger missed: it will be repeated
    getattr(get_logger(), level)(
        f"delivery.{outcome}",
        event_id=delivery.event_id,
        delivery_id=delivery.delivery_id,
        type=delivery.event_type,
        channel=delivery.channel,
        template=delivery.template,
        recipient=delivery.address,
        attempt=job.attempt,
        outcome=outcome,
        **fields,
    )
