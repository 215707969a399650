"""The pipeline without Celery: fakeredis stores, a fake SMTP and SMS channel, a recording queue."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from notifier.channels import Receipt
from notifier.compose import ComposedEmail, SmsMessage
from notifier.deadletter import DeadLetter
from notifier.deadlines import Deadline
from notifier.errors import (
    AmbiguousDeliveryError,
    DeadlineExpiredError,
    InvalidEventError,
    PermanentError,
    TransientError,
)
from notifier.events import parse_event
from notifier.ledger import DEFAULT_LEASE_SECONDS, Ledger
from notifier.pipeline import (
    Job,
    count_redelivery,
    deliver,
    handle_event,
    parse_job,
    replay,
    run_job,
    task_failed,
)
from notifier.planner import Delivery, plan, sms_fallback
from notifier.ratelimit import Throttle
from notifier.runtime import Runtime
from tests import samples
from tests.conftest import make_settings

TWILIO = {
    "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "test-token",
    "twilio_phone_number": "+14155550123",
}
BACKOFF_BASE = 5.0
MAX_ATTEMPTS = 3


@dataclass
class RecordingScheduler:
    """Stands in for the Celery queues: remembers what would be enqueued."""

    scheduled: list[tuple[Job, float]] = field(default_factory=list)
    published: list[dict[str, Any]] = field(default_factory=list)

    def schedule(self, job: Job, countdown: float) -> None:
        self.scheduled.append((job, countdown))

    def publish_event(self, event: dict[str, Any]) -> None:
        self.published.append(event)

    def schedule_many(self, jobs: Sequence[Any], events: Sequence[Any] = ()) -> None:
        for job in jobs:
            self.schedule(job, 0)
        for event in events:
            self.publish_event(event)


@dataclass
class SentEmail:
    composed: ComposedEmail
    sender: str
    recipient: str

    @property
    def message(self) -> EmailMessage:
        """The bytes as a receiving server parses them."""
        parsed = email.message_from_bytes(self.composed.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class FakeSmtp:
    """Accepts every message unless told to raise; ``failures`` are used up in order.

    Like a real channel it holds the deadline it is given: ``stall`` (a
    slow server: a test moves its clock there) runs first, then nothing is
    handed over once the deadline has passed.
    """

    failures: list[Exception] = field(default_factory=list)
    sent: list[SentEmail] = field(default_factory=list)
    deadlines: list[Deadline | None] = field(default_factory=list)
    stall: Callable[[], None] = lambda: None

    def send(
        self,
        message: ComposedEmail,
        sender: str,
        recipient: str,
        deadline: Deadline | None = None,
    ) -> Receipt:
        self.deadlines.append(deadline)
        if self.failures:
            raise self.failures.pop(0)
        self.stall()
        if deadline is not None:
            deadline.check("handing the message over")
        self.sent.append(SentEmail(message, sender, recipient))
        return Receipt(channel="email", provider="fake-smtp", provider_id=str(len(self.sent)))

    def close(self) -> None:
        pass


@dataclass
class FakeSms:
    failures: list[Exception] = field(default_factory=list)
    sent: list[SmsMessage] = field(default_factory=list)

    def send(self, message: SmsMessage, deadline: Deadline | None = None) -> Receipt:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)
        return Receipt(channel="sms", provider="fake-twilio", provider_id=f"SM{len(self.sent)}")

    def close(self) -> None:
        pass


@dataclass
class World:
    """A Runtime wired to fakes, and the fakes for the assertions."""

    rt: Runtime
    scheduler: RecordingScheduler
    smtp: FakeSmtp
    sms: FakeSms

    @property
    def dead_letters(self) -> list[DeadLetter]:
        entries = list(self.rt.dead_letters)
        letters = [entry for entry in entries if isinstance(entry, DeadLetter)]
        assert letters == entries, "the dead-letter store holds a corrupt entry"
        return letters


MakeWorld = Callable[..., World]


@pytest.fixture
def make_world() -> Iterator[MakeWorld]:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail(
            "the ledger runs Lua scripts; fakeredis needs lupa for them: "
            "install the dev extra (fakeredis[lua], which pulls lupa)"
        )
    made: list[Runtime] = []

    def build(*, clock: Callable[[], datetime] | None = None, **settings: Any) -> World:
        values: dict[str, Any] = {
            "notifier_retry_max_attempts": MAX_ATTEMPTS,
            "notifier_retry_backoff_base": BACKOFF_BASE,
            "notifier_sms_mps": 0,  # no provider throttle unless a test sets one
            **settings,
        }
        scheduler = RecordingScheduler()
        redis = fakeredis.FakeRedis()
        settings_ = make_settings(**values)
        smtp, sms = FakeSmtp(), FakeSms()
        timing: dict[str, Any] = {} if clock is None else {"clock": clock}
        production = Runtime.from_settings(settings_, scheduler, client=redis, **timing)
        rt = dataclasses.replace(
            production, smtp=smtp, sms_sender=sms if settings_.sms_enabled else None
        )
        world = World(rt=rt, scheduler=scheduler, smtp=smtp, sms=sms)
        made.append(rt)
        return world

    yield build
    for rt in made:
        rt.redis.close()


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    """Email only: Twilio is not configured."""
    return make_world()


@pytest.fixture
def sms_world(make_world: MakeWorld) -> World:
    return make_world(**TWILIO)


def email_job(
    event: dict[str, Any], attempt: int = 1, *, allow_special_domains: bool = False
) -> Job:
    parsed = parse_event(event, allow_special_domains=allow_special_domains)
    delivery = next(d for d in plan(parsed) if d.channel == "email")
    return Job(delivery=delivery, attempt=attempt)


def occurred_at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def outcomes(results: list[Any]) -> list[str]:
    return [result.outcome for result in results]


# --- the happy path ---------------------------------------------------------------


class CountingMetrics:
    """A metrics recorder given to the Runtime's constructor: what the pipeline counted."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str | None, str | None, str]] = []
        self.events: list[str] = []
        self.sends = 0

    def record_delivery(self, channel: str | None, event_type: str | None, outcome: str) -> None:
        self.outcomes.append((channel, event_type, outcome))

    def record_event(self, event_type: str) -> None:
        self.events.append(event_type)

    def timed_send(self, send: Callable[[], Receipt]) -> Receipt:
        self.sends += 1
        return send()

    def record_callback(self, outcome: str) -> None:
        pass


def test_the_pipeline_counts_through_the_runtimes_metrics_recorder(world: World) -> None:
    counting = CountingMetrics()
    rt = dataclasses.replace(world.rt, metrics=counting)

    handle_event(samples.booking_created(), rt)

    assert counting.events == ["booking.created"]
    assert counting.outcomes == [
        ("email", "booking.created", "sent"),
        ("email", "booking.created", "sent"),
        ("sms", "booking.created", "skipped"),
    ]
    assert counting.sends == 2


def test_booking_created_sends_both_emails_inline_and_queues_the_fan_sms(
    sms_world: World,
) -> None:
    results = handle_event(samples.booking_created(), sms_world.rt)

    assert outcomes(results) == ["sent", "sent", "queued"]
    assert [email.recipient for email in sms_world.smtp.sent] == [
        "ada@example.com",
        "grace@example.com",
    ]
    ((job, countdown),) = sms_world.scheduler.scheduled
    assert (job.delivery.channel, job.delivery.template) == ("sms", "booking_confirmation_fan")
    assert job.delivery.address == "+447911123456"
    assert job.attempt == 1
    assert countdown == 0


def test_booking_created_without_twilio_skips_sms_and_queues_nothing(world: World) -> None:
    results = handle_event(samples.booking_created(), world.rt)

    assert outcomes(results) == ["sent", "sent", "skipped"]
    assert world.scheduler.scheduled == []
    assert world.dead_letters == []


def test_emails_go_to_the_right_address_with_the_seed_subject(world: World) -> None:
    handle_event(samples.booking_created(), world.rt)

    sent = [
        (email.sender, email.recipient, email.message["To"], email.message["Subject"])
        for email in world.smtp.sent
    ]
    assert sent == [
        (
            "bookings@example.com",
            "ada@example.com",
            "Ada Lovelace <ada@example.com>",
            "Booking Confirmation",
        ),
        (
            "bookings@example.com",
            "grace@example.com",
            "Grace Hopper <grace@example.com>",
            "New Booking for Your Event",
        ),
    ]


def test_sent_delivery_is_marked_in_the_ledger(world: World) -> None:
    (result,) = handle_event(samples.user_registered(), world.rt)

    assert result.receipt is not None
    assert world.rt.ledger.is_sent(result.delivery_id)


class FullLedger(Ledger):
    """A ledger on a full Redis: claims work, the ``sent`` marker is refused (OOM)."""

    def mark_sent(
        self, delivery_id: str, receipt: Receipt, riders: Sequence[Any] = ()
    ) -> tuple[Any, ...]:
        raise redis.exceptions.OutOfMemoryError(
            "command not allowed when used memory > 'maxmemory'."
        )

    def record_sent(self, delivery_id: str, receipt: Receipt, *, at: str, attempt: int) -> bool:
        raise redis.exceptions.OutOfMemoryError(
            "command not allowed when used memory > 'maxmemory'."
        )


def test_a_send_the_ledger_cannot_record_is_logged_as_sent_and_unrecorded(world: World) -> None:
    rt = dataclasses.replace(world.rt, ledger=FullLedger(world.rt.redis, ttl=60))

    with capture_logs() as logs, pytest.raises(redis.exceptions.OutOfMemoryError):
        handle_event(samples.user_registered(), rt)

    assert len(world.smtp.sent) == 1
    (sent,) = [line for line in logs if line["event"] == "delivery.sent"]
    assert sent["recorded"] is False
    assert sent["log_level"] == "warning"
    assert sent["error"].startswith("OutOfMemoryError: ")
    assert sent["provider_id"] == "1"


def test_queued_sms_is_sent_by_deliver(sms_world: World) -> None:
    handle_event(samples.booking_created(), sms_world.rt)
    ((job, _),) = sms_world.scheduler.scheduled

    result = deliver(job.model_dump(mode="json"), sms_world.rt)

    assert result is not None
    assert result.outcome == "sent"
    (sms,) = sms_world.sms.sent
    assert sms.to == "+447911123456"
    assert sms.body.startswith("Appointment Booking Confirmation\nHello Ada Lovelace,")


# --- the task's time budget (issue 14) ----------------------------------------------


@dataclass
class SteppedClock:
    """A monotonic clock that moves only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SlowSmtp(FakeSmtp):
    """Accepts every message, each after ``seconds`` on the clock (nothing sleeps)."""

    clock: SteppedClock = field(default_factory=SteppedClock)
    seconds: float = 0.0

    def send(
        self,
        message: ComposedEmail,
        sender: str,
        recipient: str,
        deadline: Deadline | None = None,
    ) -> Receipt:
        self.clock.now += self.seconds
        return super().send(message, sender, recipient, deadline)


def budgeted(world: World, seconds_per_send: float) -> tuple[Runtime, SlowSmtp]:
    clock = SteppedClock()
    smtp = SlowSmtp(clock=clock, seconds=seconds_per_send)
    return dataclasses.replace(world.rt, smtp=smtp, monotonic=clock), smtp


def test_an_email_that_might_not_end_before_the_soft_limit_goes_to_notifier_email(
    world: World,
) -> None:
    # Defaults: a message must be handed over 115 s into the task (sends end at
    # 125 s, less a reply wait); an email starts only with a transaction's 50 s left.
    rt, smtp = budgeted(world, seconds_per_send=70)

    results = handle_event(samples.booking_created(), rt)

    assert outcomes(results) == ["sent", "queued", "skipped"]
    assert [sent.recipient for sent in smtp.sent] == ["ada@example.com"]
    ((job, countdown),) = world.scheduler.scheduled
    assert (job.delivery.channel, job.delivery.address, job.attempt) == (
        "email",
        "grace@example.com",
        1,
    )
    assert countdown == 0
    assert not rt.ledger.is_sent(job.delivery.delivery_id)  # no claim taken: deliver sends it


def test_emails_that_fit_the_budget_are_all_sent_inline(world: World) -> None:
    rt, smtp = budgeted(world, seconds_per_send=5)

    results = handle_event(samples.booking_created(), rt)

    assert outcomes(results) == ["sent", "sent", "skipped"]
    assert len(smtp.sent) == 2
    assert world.scheduler.scheduled == []


def test_the_budget_counts_from_the_tasks_start(world: World) -> None:
    rt, smtp = budgeted(world, seconds_per_send=0)

    results = handle_event(samples.booking_created(), rt, started=rt.monotonic() - 66)

    assert outcomes(results) == ["queued", "queued", "skipped"]
    assert smtp.sent == []
    assert [job.delivery.address for job, _ in world.scheduler.scheduled] == [
        "ada@example.com",
        "grace@example.com",
    ]


def test_a_handed_off_email_is_sent_once_by_deliver(world: World) -> None:
    rt, smtp = budgeted(world, seconds_per_send=70)
    handle_event(samples.booking_created(), rt)
    ((job, _),) = world.scheduler.scheduled

    result = deliver(job.model_dump(mode="json"), rt)

    assert result is not None
    assert result.outcome == "sent"
    assert [sent.recipient for sent in smtp.sent] == ["ada@example.com", "grace@example.com"]


# --- bad input ----------------------------------------------------------------------


def test_invalid_event_is_rejected_into_the_dead_letter_store(world: World) -> None:
    event = samples.booking_created()
    del event["slot"]

    results = handle_event(event, world.rt)

    assert results == []
    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert entry.event_id == event["event_id"]
    assert any(error.startswith("slot") for error in entry.errors)
    assert world.smtp.sent == []
    assert world.scheduler.scheduled == []


def test_an_event_dated_too_late_for_its_reset_link_is_rejected_not_failed(world: World) -> None:
    # occurred_at + the default hour is past year 9999: it used to raise OverflowError.
    event = samples.password_reset_requested(occurred_at="9999-12-31T23:30:00Z")

    assert handle_event(event, world.rt) == []

    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert any(error.startswith("occurred_at: ") for error in entry.errors)


def test_an_address_under_test_is_rejected_by_a_default_worker(world: World) -> None:
    event = samples.user_registered(user={**samples.FAN, "email": "ada@mail.test"})

    assert handle_event(event, world.rt) == []

    (entry,) = world.dead_letters
    assert entry.status == "rejected"


def test_a_staging_worker_allowing_special_domains_sends_to_an_address_under_test(
    make_world: MakeWorld,
) -> None:
    world = make_world(
        notifier_allow_special_domains=True, mail_default_sender="Bookings <noreply@staging.test>"
    )
    event = samples.booking_created(fan={**samples.FAN, "email": "ada@mail.test"})

    results = handle_event(event, world.rt)

    assert outcomes(results) == ["sent", "sent", "skipped"]
    assert [email.recipient for email in world.smtp.sent] == ["ada@mail.test", "grace@example.com"]


def test_a_retried_job_to_an_address_under_test_is_sent_by_a_staging_worker(
    make_world: MakeWorld,
) -> None:
    world = make_world(notifier_allow_special_domains=True)
    job = email_job(
        samples.user_registered(user={**samples.FAN, "email": "ada@mail.test"}),
        allow_special_domains=True,
        attempt=2,
    )

    result = deliver(job.model_dump(mode="json"), world.rt)

    assert result is not None
    assert result.outcome == "sent"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({}, id="empty"),
        pytest.param({"delivery": {"delivery_id": "d-1"}}, id="incomplete-delivery"),
        pytest.param("not a job", id="string"),
        pytest.param(None, id="none"),
    ],
)
def test_deliver_rejects_a_malformed_job_without_raising(world: World, raw: object) -> None:
    assert deliver(raw, world.rt) is None

    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert all(error.startswith("notifier.deliver job: ") for error in entry.errors)
    assert world.smtp.sent == []


def test_deliver_rejects_attempt_zero(world: World) -> None:
    job = email_job(samples.user_registered()).model_dump(mode="json")

    assert deliver({**job, "attempt": 0}, world.rt) is None

    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert world.smtp.sent == []


# --- forged jobs: a job on the queue is held to what its event calls for ---------------


def forged(job: Job, **delivery: Any) -> dict[str, Any]:
    """The job as JSON, with delivery fields replaced, as anyone with queue access may send it."""
    raw = job.model_dump(mode="json")
    return {**raw, "delivery": {**raw["delivery"], **delivery}}


def assert_rejected_unsent(world: World, raw_job: dict[str, Any], reason: str) -> None:
    assert deliver(raw_job, world.rt) is None

    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert reason in entry.error
    assert world.smtp.sent == []
    assert world.scheduler.scheduled == []
    # No claim was taken, so none is left behind to block a real delivery.
    assert world.rt.ledger.state(raw_job["delivery"]["delivery_id"]) is None


def test_a_job_whose_role_is_not_in_its_event_is_rejected_without_a_claim(world: World) -> None:
    job = email_job(samples.user_registered())

    assert_rejected_unsent(world, forged(job, role="admin"), "delivery.role")


def test_a_job_whose_recipient_is_not_a_person_is_rejected_without_a_claim(world: World) -> None:
    job = email_job(samples.user_registered())
    event = {**job.delivery.event, "user": "ada@example.com"}

    assert_rejected_unsent(world, forged(job, event=event), "delivery.event.user")


def test_a_job_whose_event_breaks_the_contract_is_rejected(world: World) -> None:
    job = email_job(samples.user_registered())
    user = {**job.delivery.event["user"], "name": "Ada\r\nBcc: evil@attacker.example"}

    raw = forged(job, event={**job.delivery.event, "user": user})

    assert_rejected_unsent(world, raw, "delivery.event.user.name")


def test_a_job_sending_to_an_address_its_event_does_not_name_is_rejected(world: World) -> None:
    job = email_job(samples.user_registered())

    assert_rejected_unsent(world, forged(job, address="evil@attacker.example"), "delivery.address")


def test_a_password_reset_job_without_a_deadline_is_rejected(make_world: MakeWorld) -> None:
    event = samples.password_reset_requested()
    world = make_world(clock=lambda: occurred_at(event) + timedelta(days=3))

    raw = forged(email_job(event), not_after=None)

    assert_rejected_unsent(world, raw, "delivery.not_after")


def test_a_password_reset_job_with_a_later_deadline_than_its_event_is_rejected(
    make_world: MakeWorld,
) -> None:
    event = samples.password_reset_requested()
    world = make_world(clock=lambda: occurred_at(event) + timedelta(days=3))

    raw = forged(email_job(event), not_after="9000-01-01T00:00:00Z")

    assert_rejected_unsent(world, raw, "delivery.not_after")


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(samples.ALL)),
    moment=st.datetimes(
        min_value=datetime(1969, 12, 30),
        max_value=datetime(9999, 1, 2),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))]
        ),
    ),
)
@example(kind="password.reset_requested", moment=datetime(9998, 12, 31, 23, 30, tzinfo=UTC))
@example(kind="user.registered", moment=datetime(1970, 1, 1, tzinfo=UTC))
def test_every_delivery_of_an_accepted_event_passes_as_a_job(kind: str, moment: datetime) -> None:
    # What the worker plans and queues (a retry, an SMS, a fallback email) it
    # must accept back from the queue.
    try:
        event = parse_event(samples.ALL[kind](occurred_at=moment.isoformat()))
    except InvalidEventError:
        return
    planned = plan(event)
    deliveries = planned + [f for d in planned if (f := sms_fallback(d)) is not None]

    for delivery in deliveries:
        job = parse_job(Job(delivery=delivery, attempt=2).model_dump(mode="json"))
        assert job.delivery == delivery


def test_a_queued_sms_fallback_email_is_sent(sms_world: World) -> None:
    sms = next(d for d in plan(parse_event(samples.booking_created())) if d.channel == "sms")
    fallback = sms_fallback(sms)
    assert fallback is not None

    result = deliver(Job(delivery=fallback).model_dump(mode="json"), sms_world.rt)

    assert result is not None
    assert result.outcome == "sent"
    assert [email.recipient for email in sms_world.smtp.sent] == ["ada@example.com"]


# --- rate limits and the operator's replay ------------------------------------------


def limited_reset(world: World) -> DeadLetter:
    """Six resets for one address: five sent, the sixth dead-lettered as rate_limited."""
    for _ in range(6):
        handle_event(samples.password_reset_requested(), world.rt)
    [entry] = world.dead_letters
    assert entry.status == "rate_limited"
    assert len(world.smtp.sent) == 5
    return entry


def operator_replays(world: World, entry: DeadLetter) -> dict[str, Any]:
    """What ``notifier dlq replay`` puts on the queue for the entry."""
    [result] = world.rt.dead_letters.replay([entry], lambda taken: replay(taken, world.rt))
    assert result.done is not None
    (job, _) = world.scheduler.scheduled[-1]
    return job.model_dump(mode="json")


def test_a_job_claiming_to_be_replayed_is_still_rate_limited(world: World) -> None:
    entry = limited_reset(world)
    assert entry.delivery is not None
    forged_job = {**Job(delivery=entry.delivery).model_dump(mode="json"), "replayed": True}

    result = deliver(forged_job, world.rt)

    assert result is not None
    assert result.outcome == "rate_limited"
    assert len(world.smtp.sent) == 5


def test_an_operators_replay_is_sent_past_the_rate_limit(world: World) -> None:
    entry = limited_reset(world)

    result = deliver(operator_replays(world, entry), world.rt)

    assert result is not None
    assert result.outcome == "sent"
    assert len(world.smtp.sent) == 6


def test_a_replay_grant_carried_by_another_delivery_lifts_no_limit(world: World) -> None:
    entry = limited_reset(world)
    granted = operator_replays(world, entry)
    other = email_job(samples.password_reset_requested()).model_dump(mode="json")

    result = deliver({**other, "replay_grant": granted["replay_grant"]}, world.rt)

    assert result is not None
    assert result.outcome == "rate_limited"
    assert len(world.smtp.sent) == 5


def test_a_replayed_delivery_put_off_by_the_provider_rate_keeps_its_leave(
    make_world: MakeWorld,
) -> None:
    now = datetime.now(UTC)
    world = make_world(clock=lambda: now)
    entry = limited_reset(world)
    replayed = operator_replays(world, entry)
    throttles = world.rt.throttles
    assert isinstance(throttles, dict)  # the Runtime's own, changed in place
    throttle = throttles["email"] = Throttle(world.rt.redis, "smtp", per_second=1)
    throttle.delay(now.timestamp())  # another send took this second's one slot

    deferred = deliver(replayed, world.rt)
    (later, _) = world.scheduler.scheduled[-1]
    now += timedelta(seconds=5)
    sent = deliver(later.model_dump(mode="json"), world.rt)

    assert deferred is not None
    assert deferred.outcome == "deferred"
    assert sent is not None
    assert sent.outcome == "sent"


def test_a_replayed_delivery_retried_after_a_transient_error_keeps_its_leave(
    world: World,
) -> None:
    entry = limited_reset(world)
    world.smtp.failures.append(TransientError("421 try later"))

    retried = deliver(operator_replays(world, entry), world.rt)
    (retry, _) = world.scheduler.scheduled[-1]
    sent = run_job(retry, world.rt)

    assert retried is not None
    assert retried.outcome == "retried"
    assert sent.outcome == "sent"


# --- idempotency -------------------------------------------------------------------


def test_republishing_the_same_event_sends_nothing_twice(world: World) -> None:
    event = samples.booking_created()
    handle_event(event, world.rt)

    again = handle_event(event, world.rt)

    assert outcomes(again) == ["duplicate", "duplicate", "skipped"]
    assert len(world.smtp.sent) == 2


def test_deliver_of_an_already_sent_delivery_is_a_duplicate(world: World) -> None:
    event = samples.user_registered()
    handle_event(event, world.rt)

    result = deliver(email_job(event).model_dump(mode="json"), world.rt)

    assert result is not None
    assert result.outcome == "duplicate"
    assert len(world.smtp.sent) == 1


def test_busy_claim_defers_with_the_same_attempt(world: World) -> None:
    job = email_job(samples.user_registered(), attempt=2)
    world.rt.ledger.claim(job.delivery.delivery_id)  # another worker is sending it

    result = run_job(job, world.rt)

    assert result.outcome == "deferred"
    ((again, countdown),) = world.scheduler.scheduled
    assert again == job
    assert countdown == pytest.approx(DEFAULT_LEASE_SECONDS + 1, abs=1)
    assert world.smtp.sent == []
    assert world.dead_letters == []


# --- failures ----------------------------------------------------------------------


def test_transient_error_schedules_the_next_attempt(world: World) -> None:
    world.smtp.failures.append(TransientError("421 4.7.0 try again later"))

    (result,) = handle_event(samples.user_registered(), world.rt)

    assert result.outcome == "retried"
    assert result.error == "TransientError: 421 4.7.0 try again later"
    ((retry, countdown),) = world.scheduler.scheduled
    assert retry.attempt == 2
    assert retry.delivery.delivery_id == result.delivery_id
    assert 0 <= countdown <= BACKOFF_BASE
    (record,) = retry.history
    assert (record.attempt, record.error) == (1, "TransientError: 421 4.7.0 try again later")
    assert world.dead_letters == []


def test_transient_error_releases_the_claim(world: World) -> None:
    world.smtp.failures.append(TransientError("421 4.7.0 try again later"))

    (result,) = handle_event(samples.user_registered(), world.rt)

    assert world.rt.ledger.state(result.delivery_id) is None


def test_retry_succeeds_on_the_next_attempt(world: World) -> None:
    world.smtp.failures.append(TransientError("421 4.7.0 try again later"))
    handle_event(samples.user_registered(), world.rt)
    ((retry, _),) = world.scheduler.scheduled

    result = deliver(retry.model_dump(mode="json"), world.rt)

    assert result is not None
    assert result.outcome == "sent"
    assert len(world.smtp.sent) == 1


def test_transient_error_on_the_last_attempt_gives_up(world: World) -> None:
    world.smtp.failures.append(TransientError("421 4.7.0 try again later"))
    job = email_job(samples.user_registered(), attempt=MAX_ATTEMPTS)

    result = run_job(job, world.rt)

    assert result.outcome == "dead"
    assert world.scheduler.scheduled == []
    (entry,) = world.dead_letters
    assert entry.status == "failed"
    assert entry.id == job.delivery.delivery_id
    assert "gave up after 3 attempts" in entry.error
    assert entry.error.startswith("TransientError: 421 4.7.0 try again later")
    assert world.rt.ledger.state(job.delivery.delivery_id) is None


def test_dead_entry_keeps_the_history_of_every_attempt(world: World) -> None:
    event = samples.user_registered()
    world.smtp.failures.extend(TransientError(f"421 busy {n}") for n in range(MAX_ATTEMPTS))
    handle_event(event, world.rt)
    while world.scheduler.scheduled:
        job, _ = world.scheduler.scheduled.pop(0)
        deliver(job.model_dump(mode="json"), world.rt)

    (entry,) = world.dead_letters
    assert [record.attempt for record in entry.history] == [1, 2, 3]
    assert entry.attempts == MAX_ATTEMPTS
    assert entry.delivery == email_job(event).delivery
    assert world.smtp.sent == []


def test_permanent_error_dead_letters_at_once(world: World) -> None:
    world.smtp.failures.append(PermanentError("550 5.1.1 user unknown"))

    (result,) = handle_event(samples.user_registered(), world.rt)

    assert result.outcome == "dead"
    assert world.scheduler.scheduled == []
    (entry,) = world.dead_letters
    assert (entry.status, entry.error) == ("failed", "PermanentError: 550 5.1.1 user unknown")
    assert entry.attempts == 1
    assert world.rt.ledger.state(result.delivery_id) is None


def test_missing_sender_setting_dead_letters_at_once(make_world: MakeWorld) -> None:
    world = make_world(mail_default_sender=None)

    (result,) = handle_event(samples.user_registered(), world.rt)

    assert result.outcome == "dead"
    assert world.scheduler.scheduled == []
    (entry,) = world.dead_letters
    assert entry.error.startswith("ConfigurationError: MAIL_DEFAULT_SENDER is not set")


def test_permanent_sms_error_dead_letters_at_once(sms_world: World) -> None:
    handle_event(samples.booking_created(), sms_world.rt)
    ((job, _),) = sms_world.scheduler.scheduled
    sms_world.scheduler.scheduled.clear()
    sms_world.sms.failures.append(PermanentError("Twilio 400 (code 21211): invalid To"))

    result = deliver(job.model_dump(mode="json"), sms_world.rt)

    assert result is not None
    assert result.outcome == "dead"
    (entry,) = sms_world.dead_letters
    assert (entry.channel, entry.status) == ("sms", "failed")


# --- deadlines ---------------------------------------------------------------------


def test_expired_password_reset_is_dead_lettered_unsent(make_world: MakeWorld) -> None:
    event = samples.password_reset_requested()
    too_late = occurred_at(event) + timedelta(hours=1, seconds=1)
    world = make_world(clock=lambda: too_late)

    (result,) = handle_event(event, world.rt)

    assert result.outcome == "dead"
    assert world.smtp.sent == []
    assert world.scheduler.scheduled == []
    (entry,) = world.dead_letters
    assert entry.status == "expired"
    assert entry.attempts == 0
    assert world.rt.ledger.state(result.delivery_id) is None


def test_password_reset_sent_late_states_the_time_left(make_world: MakeWorld) -> None:
    event = samples.password_reset_requested()
    half_an_hour_later = occurred_at(event) + timedelta(minutes=30)
    world = make_world(clock=lambda: half_an_hour_later)

    (result,) = handle_event(event, world.rt)

    assert result.outcome == "sent"
    (email,) = world.smtp.sent
    text = email.message.get_body(("plain",))
    assert text is not None
    assert "expire in 30 minutes" in text.get_content()


def test_delivery_without_a_deadline_is_sent_whenever(make_world: MakeWorld) -> None:
    event = samples.user_registered()
    world = make_world(clock=lambda: occurred_at(event) + timedelta(days=30))

    (result,) = handle_event(event, world.rt)

    assert result.outcome == "sent"


def test_the_channel_is_given_the_reset_links_expiry_as_its_deadline(
    make_world: MakeWorld,
) -> None:
    event = samples.password_reset_requested()
    world = make_world(clock=lambda: occurred_at(event) + timedelta(minutes=59))

    handle_event(event, world.rt)

    (deadline,) = world.smtp.deadlines
    assert deadline is not None
    assert deadline.at == occurred_at(event) + timedelta(hours=1)
    assert deadline.remaining() == 60


def test_the_channel_is_given_the_tasks_deadline_when_it_comes_first(
    make_world: MakeWorld,
) -> None:
    event = samples.password_reset_requested()
    world = make_world(clock=lambda: occurred_at(event) + timedelta(minutes=30))
    rt = dataclasses.replace(world.rt, smtp=world.smtp, monotonic=SteppedClock())

    handle_event(event, rt, started=rt.monotonic() - 15)

    (deadline,) = world.smtp.deadlines
    assert deadline is not None
    # Handed over 115 s into the task at the latest (docs/guarantees.md), 15 s are gone.
    assert deadline.remaining() == 100


def test_a_delivery_without_an_expiry_is_sent_with_the_tasks_deadline_only(world: World) -> None:
    rt = dataclasses.replace(world.rt, monotonic=SteppedClock())

    handle_event(samples.user_registered(), rt)

    (deadline,) = world.smtp.deadlines
    assert deadline is not None
    assert deadline.name == "the task's time for sends"
    assert deadline.remaining() == pytest.approx(115, abs=1)  # this world's clock is real


def test_a_send_the_tasks_deadline_cut_before_the_hand_over_is_retried(world: World) -> None:
    passed = Deadline.after(-1, world.rt.clock, name="the task's time for sends")
    world.smtp.failures.append(DeadlineExpiredError("it passed before MAIL", deadline=passed))

    (result,) = handle_event(samples.user_registered(), world.rt)

    assert result.outcome == "retried"
    assert world.rt.dead_letters.count() == 0


def test_a_reset_whose_expiry_passes_during_the_send_is_dead_lettered_expired_unsent(
    make_world: MakeWorld,
) -> None:
    event = samples.password_reset_requested()
    now = [occurred_at(event) + timedelta(minutes=59, seconds=58)]  # 2 s left
    world = make_world(clock=lambda: now[0])

    def slow_server() -> None:  # the server greets after 5 s
        now[0] += timedelta(seconds=5)

    world.smtp.stall = slow_server

    (result,) = handle_event(event, world.rt)

    assert result.outcome == "dead"
    assert world.smtp.sent == []
    assert world.scheduler.scheduled == [], "not retried: it would only be later still"
    (entry,) = world.dead_letters
    assert entry.status == "expired"
    assert entry.error.startswith("DeadlineExpired: not sent")
    assert [record.attempt for record in entry.history] == [1]
    assert world.rt.ledger.state(result.delivery_id) is None


def test_a_passed_deadline_that_is_not_the_deliverys_own_is_retried(world: World) -> None:
    # A task's time budget, say: the delivery itself may still go later.
    budget = Deadline.after(0, world.rt.clock, name="the task's time budget")
    world.smtp.failures = [DeadlineExpiredError("budget spent", deadline=budget)]

    (result,) = handle_event(samples.user_registered(), world.rt)

    assert result.outcome == "retried"
    assert world.dead_letters == []


def test_delivery_carries_its_deadline() -> None:
    event = samples.password_reset_requested()

    delivery: Delivery = email_job(event).delivery

    assert delivery.not_after is not None
    assert datetime.fromisoformat(delivery.not_after) == occurred_at(event) + timedelta(hours=1)


# --- crashes and poison messages ------------------------------------------------------


def test_a_crashed_deliver_task_is_dead_lettered_with_its_history(world: World) -> None:
    job = email_job(samples.user_registered(), attempt=2)

    task_failed("notifier.deliver", (job.model_dump(mode="json"),), {}, TimeoutError("x"), world.rt)

    [entry] = world.dead_letters
    assert entry.status == "failed"
    assert entry.delivery == job.delivery
    assert [record.attempt for record in entry.history] == [2]
    assert entry.error == "TimeoutError: x"


def test_a_crashed_handle_event_keeps_the_whole_event_for_replay(world: World) -> None:
    event = samples.booking_created()

    task_failed("notifier.handle_event", (event,), {}, MemoryError(), world.rt)

    [entry] = world.dead_letters
    assert entry.status == "failed"
    assert entry.event_id == event["event_id"]
    assert entry.raw_event is not None
    assert '"booking_id": "b-42"' in entry.raw_event


def test_redeliveries_up_to_the_limit_are_processed(make_world: MakeWorld) -> None:
    world = make_world(notifier_max_redeliveries=2)
    args = (samples.user_registered(),)

    verdicts = [count_redelivery("notifier.handle_event", "m1", args, world.rt) for _ in range(2)]

    assert verdicts == [False, False]
    assert world.dead_letters == []


def test_a_message_redelivered_past_the_limit_is_dead_lettered(make_world: MakeWorld) -> None:
    world = make_world(notifier_max_redeliveries=2)
    args = (samples.user_registered(),)

    verdicts = [count_redelivery("notifier.handle_event", "m1", args, world.rt) for _ in range(3)]

    assert verdicts == [False, False, True]
    [entry] = world.dead_letters
    assert "redelivered 3 times" in entry.error
    assert entry.event_id == args[0]["event_id"]


# --- ambiguous replies ----------------------------------------------------------------


def ambiguous() -> AmbiguousDeliveryError:
    return AmbiguousDeliveryError("the connection was lost after the message was handed over")


def test_an_ambiguous_send_is_logged_and_counted_as_ambiguous_then_retried(world: World) -> None:
    counting = CountingMetrics()
    rt = dataclasses.replace(world.rt, metrics=counting)
    world.smtp.failures = [ambiguous()]

    with capture_logs() as logs:
        (result,) = handle_event(samples.user_registered(), rt)

    assert result.outcome == "retried"
    [(job, countdown)] = world.scheduler.scheduled
    assert job.attempt == 2
    assert 0 <= countdown <= BACKOFF_BASE
    [warning] = [log for log in logs if log["event"] == "delivery.ambiguous"]
    assert warning["log_level"] == "warning"
    assert warning["delivery_id"] == result.delivery_id
    assert warning["attempt"] == 1
    assert warning["error"].startswith("ambiguous: AmbiguousDeliveryError")
    assert ("email", "user.registered", "ambiguous") in counting.outcomes
    assert ("email", "user.registered", "retried") in counting.outcomes


def test_an_ambiguous_attempt_says_ambiguous_in_the_dead_letters_history(
    make_world: MakeWorld,
) -> None:
    world = make_world(notifier_retry_max_attempts=1)
    world.smtp.failures = [ambiguous()]

    (result,) = handle_event(samples.user_registered(), world.rt)

    assert result.outcome == "dead"
    (entry,) = world.dead_letters
    assert [record.error.split(" ", 1)[0] for record in entry.history] == ["ambiguous:"]
    assert entry.error.startswith("ambiguous: ")
