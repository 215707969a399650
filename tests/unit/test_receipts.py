"""Twilio receipts as plain functions: the status table, the form, and what a receipt does.

A real pipeline sends the SMS (fakeredis, a fake Twilio returning a SID), so
the status store knows the SID; the receipts are then applied as the web
process applies them.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from notifier import keys
from notifier.channels import Receipt
from notifier.compose import SmsMessage
from notifier.deadletter import DeadLetter
from notifier.deadlines import Deadline
from notifier.errors import PublishError
from notifier.events import parse_event
from notifier.jobs import Job
from notifier.periodic import LeaseLock
from notifier.pipeline import run_job
from notifier.planner import Delivery, plan, sms_fallback
from notifier.receipt_sweep import ReceiptSweep
from notifier.receipts import (
    FOLLOW_UP_LEASE,
    InvalidReceiptError,
    TwilioReceipt,
    apply_receipt,
    delivery_state,
    parse_receipt,
)
from notifier.runtime import Runtime
from notifier.status_store import FinalState
from notifier.twilio_errors import describe, meaning
from tests import samples
from tests.conftest import make_settings

SID_SHAPE = "SM" + "0" * 32


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=10)
        return self.now


@dataclass
class Scheduler:
    """Remembers what would be enqueued; ``failures`` are raised first, in order."""

    scheduled: list[Job] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)

    def schedule(self, job: Job, countdown: float) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.scheduled.append(job)

    def publish_event(self, event: dict[str, Any]) -> None:
        raise AssertionError("receipts publish no event")

    def schedule_many(self, jobs: Sequence[Job], events: Sequence[dict[str, Any]] = ()) -> None:
        raise AssertionError("receipts publish one job at a time")


@dataclass
class Twilio:
    def send(self, message: SmsMessage, deadline: Deadline | None = None) -> Receipt:
        return Receipt(channel="sms", provider="twilio", provider_id="SM" + uuid.uuid4().hex)

    def close(self) -> None:
        pass


@dataclass
class Metrics:
    outcomes: list[tuple[str | None, str | None, str]] = field(default_factory=list)

    def record_delivery(self, channel: str | None, event_type: str | None, outcome: str) -> None:
        self.outcomes.append((channel, event_type, outcome))

    def record_event(self, event_type: str) -> None:
        pass

    def timed_send(self, send: Any) -> Receipt:
        result: Receipt = send()
        return result

    def record_callback(self, outcome: str) -> None:
        pass


@dataclass
class World:
    rt: Runtime
    scheduler: Scheduler
    metrics: Metrics
    finals: list[FinalState]

    def send_sms(self) -> tuple[Delivery, str]:
        """Send the fan's SMS of a booking through the pipeline; it and its MessageSid."""
        event = parse_event(samples.booking_created())
        delivery = next(d for d in plan(event) if d.channel == "sms" and d.role == "fan")
        outcome = run_job(Job(delivery=delivery), self.rt)
        assert outcome.outcome == "sent"
        assert outcome.receipt is not None
        assert outcome.receipt.provider_id is not None
        self.metrics.outcomes.clear()  # the send's own ("sent"): receipts' are asserted
        return delivery, outcome.receipt.provider_id

    def state(self, delivery: Delivery) -> Any:
        found = self.rt.status.for_delivery(delivery.delivery_id)
        assert found is not None
        return found.deliveries[0]

    def dead_letters(self) -> list[DeadLetter]:
        return [entry for entry in self.rt.dead_letters if isinstance(entry, DeadLetter)]


@pytest.fixture
def world() -> World:
    settings = make_settings(
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="token",
        twilio_phone_number="+14155550100",
        notifier_public_url="https://notifier.example.com",
        notifier_sms_mps=0,
    )
    scheduler, metrics = Scheduler(), Metrics()
    finals: list[FinalState] = []
    clock = Clock()
    production = Runtime.from_settings(
        settings, scheduler, client=fakeredis.FakeRedis(), clock=clock
    )
    rt = dataclasses.replace(
        production, sms_sender=Twilio(), metrics=metrics, on_final=finals.append
    )
    return World(rt=rt, scheduler=scheduler, metrics=metrics, finals=finals)


# --- the table and the form ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("queued", None),
        ("accepted", None),
        ("scheduled", None),
        ("sending", None),
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("read", "delivered"),
        ("undelivered", "undelivered"),
        ("failed", "undelivered"),
        ("canceled", "undelivered"),
    ],
)
def test_twilio_statuses_map_as_the_design_table_says(status: str, state: str | None) -> None:
    assert delivery_state(status) == state


def test_a_form_with_sid_status_and_error_code_parses() -> None:
    form = {"MessageSid": SID_SHAPE, "MessageStatus": "failed", "ErrorCode": "30005"}
    assert parse_receipt(form) == TwilioReceipt(SID_SHAPE, "failed", 30005)


def test_a_form_without_a_sid_is_refused_naming_it() -> None:
    with pytest.raises(InvalidReceiptError, match="MessageSid is required"):
        parse_receipt({"MessageStatus": "sent"})


def test_a_form_with_an_unknown_status_is_refused() -> None:
    with pytest.raises(InvalidReceiptError, match="MessageStatus"):
        parse_receipt({"MessageSid": SID_SHAPE, "MessageStatus": "exploded"})


@pytest.mark.parametrize("code", ["30003x", "-1", "²", "1234567890"])
def test_an_error_code_must_be_a_small_number(code: str) -> None:
    with pytest.raises(InvalidReceiptError, match="ErrorCode"):
        parse_receipt({"MessageSid": SID_SHAPE, "MessageStatus": "failed", "ErrorCode": code})


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (21211, "Twilio ErrorCode 21211: invalid 'To' phone number"),
        (30003, "Twilio ErrorCode 30003: unreachable destination handset"),
        (30005, "Twilio ErrorCode 30005: unknown destination handset"),
        (30034, "Twilio ErrorCode 30034: message from an unregistered number (US A2P 10DLC)"),
        (12345, "Twilio ErrorCode 12345: see Twilio error 12345"),
    ],
)
def test_error_codes_read_from_the_offline_table(code: int, text: str) -> None:
    assert describe(code) == text


def test_every_code_the_design_names_has_a_meaning() -> None:
    named = [21211, 21610, 21614, *range(30003, 30009), 30034]
    assert all(not meaning(code).startswith("see Twilio") for code in named)


# --- what a receipt does ---------------------------------------------------------------


def test_an_unknown_sid_changes_nothing(world: World) -> None:
    result = apply_receipt(TwilioReceipt("SM" + "f" * 32, "delivered"), world.rt)
    assert result.delivery is None
    assert world.finals == []
    assert world.metrics.outcomes == []
    assert world.dead_letters() == []


def test_an_sms_with_receipts_is_sent_not_final(world: World) -> None:
    delivery, _ = world.send_sms()
    assert world.state(delivery).state == "sent"
    assert world.finals == []


def test_delivered_ends_it_delivered_counted_and_final_once(world: World) -> None:
    delivery, sid = world.send_sms()
    apply_receipt(TwilioReceipt(sid, "sent"), world.rt)
    apply_receipt(TwilioReceipt(sid, "delivered"), world.rt)
    apply_receipt(TwilioReceipt(sid, "read"), world.rt)
    assert world.state(delivery).state == "delivered"
    assert world.metrics.outcomes.count(("sms", "booking.created", "delivered")) == 1
    assert [(f.delivery_id, f.state, f.provider_id) for f in world.finals] == [
        (delivery.delivery_id, "delivered", sid)
    ]
    assert world.scheduler.scheduled == []
    assert world.dead_letters() == []


def test_a_detail_only_status_adds_to_the_timeline_and_keeps_the_state(world: World) -> None:
    delivery, sid = world.send_sms()
    apply_receipt(TwilioReceipt(sid, "sending"), world.rt)
    status = world.state(delivery)
    assert status.state == "sent"
    assert status.timeline[-1].detail == "twilio: sending"


def test_undelivered_dead_letters_falls_back_and_marks_the_status(world: World) -> None:
    delivery, sid = world.send_sms()
    apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)

    fallback = sms_fallback(delivery)
    assert fallback is not None
    assert [job.delivery for job in world.scheduler.scheduled] == [fallback]
    (letter,) = world.dead_letters()
    assert letter.status == "undelivered"
    assert letter.error == "Twilio ErrorCode 30003: unreachable destination handset"
    assert letter.fallback == fallback.delivery_id
    status = world.state(delivery)
    assert (status.state, status.dead_letter_id) == ("undelivered", letter.id)
    assert world.metrics.outcomes == [("sms", "booking.created", "undelivered")]
    assert [(f.state, f.error) for f in world.finals] == [("undelivered", letter.error)]


def test_failed_then_undelivered_then_a_retry_follow_up_once(world: World) -> None:
    _delivery, sid = world.send_sms()
    for status in ("sent", "failed", "undelivered", "undelivered"):
        apply_receipt(TwilioReceipt(sid, status, 30005 if status != "sent" else None), world.rt)
    assert len(world.scheduler.scheduled) == 1
    assert len(world.dead_letters()) == 1
    assert len(world.finals) == 1
    assert world.metrics.outcomes == [("sms", "booking.created", "undelivered")]


def test_a_late_delivered_after_undelivered_changes_nothing(world: World) -> None:
    delivery, sid = world.send_sms()
    apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)
    apply_receipt(TwilioReceipt(sid, "delivered"), world.rt)
    assert world.state(delivery).state == "undelivered"
    assert len(world.finals) == 1


def test_a_follow_up_cut_short_is_done_by_the_next_receipt(world: World) -> None:
    # The broker refuses the fallback: the receipt fails (Twilio gets a 5xx)
    # after the status was written final; Twilio's next callback finishes it.
    delivery, sid = world.send_sms()
    world.scheduler.failures.append(PublishError("broker did not accept the job"))
    with pytest.raises(PublishError):
        apply_receipt(TwilioReceipt(sid, "failed", 30003), world.rt)
    assert world.dead_letters() == []
    assert world.scheduler.scheduled == []

    apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)
    assert len(world.scheduler.scheduled) == 1
    (letter,) = world.dead_letters()
    assert world.state(delivery).dead_letter_id == letter.id
    apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)
    assert len(world.scheduler.scheduled) == 1


def test_a_receipt_holding_the_lease_keeps_a_second_one_out(world: World) -> None:
    # As when `failed` and `undelivered` are applied at the same time: the one
    # that finds the lease taken leaves the follow-up to its holder.
    delivery, sid = world.send_sms()
    world.rt.redis.set(keys.receipt_follow_up(delivery.delivery_id), "1")
    apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)
    assert world.scheduler.scheduled == []
    assert world.dead_letters() == []


# --- the sweep: a follow-up cut short and never called for again --------------------


def _sweep(world: World, wait: float = 0.0) -> ReceiptSweep:
    lock = LeaseLock(world.rt.redis, keys.RECEIPT_SWEEP_LOCK, 61)
    return ReceiptSweep(world.rt, lock, wait=wait)


def test_a_follow_up_cut_short_with_no_later_receipt_is_finished_by_the_sweep(
    world: World,
) -> None:
    # The web process fails part way (here: the broker refuses the fallback) and
    # Twilio, answered or not, never calls again: the worker's sweep finishes it.
    delivery, sid = world.send_sms()
    world.scheduler.failures.append(PublishError("broker did not accept the job"))
    with pytest.raises(PublishError):
        apply_receipt(TwilioReceipt(sid, "undelivered", 30005), world.rt)
    assert world.dead_letters() == []

    assert _sweep(world).tick() == 1

    (fallback,) = world.scheduler.scheduled
    assert fallback.delivery.fallback_for == delivery.delivery_id
    (letter,) = world.dead_letters()
    assert letter.error == describe(30005)
    assert world.state(delivery).dead_letter_id == letter.id
    assert world.rt.redis.zcard(keys.RECEIPTS_PENDING) == 0


def test_a_finished_follow_up_leaves_nothing_for_the_sweep(world: World) -> None:
    _, sid = world.send_sms()
    apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)

    assert world.rt.redis.zcard(keys.RECEIPTS_PENDING) == 0
    assert _sweep(world).tick() == 0
    assert len(world.scheduler.scheduled) == 1


def test_the_sweep_leaves_a_receipt_to_its_process_for_the_lease(world: World) -> None:
    _, sid = world.send_sms()
    world.scheduler.failures.append(PublishError("broker did not accept the job"))
    with pytest.raises(PublishError):
        apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)

    assert _sweep(world, wait=FOLLOW_UP_LEASE).tick() == 0
    assert world.dead_letters() == []


def test_an_undelivered_receipt_after_delivered_is_not_left_for_the_sweep(world: World) -> None:
    _, sid = world.send_sms()
    apply_receipt(TwilioReceipt(sid, "delivered"), world.rt)
    apply_receipt(TwilioReceipt(sid, "undelivered", 30003), world.rt)

    assert world.rt.redis.zcard(keys.RECEIPTS_PENDING) == 0
    assert world.dead_letters() == []
