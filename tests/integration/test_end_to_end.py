"""Events become emails and SMS through a real worker, Redis, SMTP sink and Twilio stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from notifier.app import NotifierCelery
from notifier.client import publish, publish_many
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.events import parse_event
from notifier.ledger import Ledger
from notifier.planner import plan
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn
from tests import samples
from tests.integration.conftest import TWILIO_NUMBER
from tests.polling import eventually

pytestmark = pytest.mark.integration

SUBJECTS = {
    "registration_confirmation": "Welcome to Appointment Booking System",
    "booking_confirmation_fan": "Booking Confirmation",
    "booking_notification_admin": "New Booking for Your Event",
    "booking_cancellation": "Booking Cancellation",
    "booking_cancellation_admin": "Booking Cancelled for Your Event",
    "password_reset": "Password Reset",
}


def _body(message: Any, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content())


@pytest.mark.parametrize("event_type", list(samples.ALL))
def test_every_event_type_reaches_every_planned_recipient(
    event_type: str, app: NotifierCelery, smtp_sink: SmtpSink, twilio: TwilioStandIn
) -> None:
    event = samples.ALL[event_type]()
    deliveries = plan(parse_event(event))
    emails = [d for d in deliveries if d.channel == "email"]
    texts = [d for d in deliveries if d.channel == "sms"]

    publish(event, app=app)

    received = smtp_sink.wait_for(len(emails), timeout=15)
    assert len(received) == len(emails)
    by_recipient = {mail.rcpt_tos[0]: mail for mail in received}
    for delivery in emails:
        mail = by_recipient[delivery.address]
        message = mail.message()
        assert mail.mail_from == "bookings@example.com"
        assert message["Subject"] == SUBJECTS[delivery.template]
        assert message["To"].addresses[0].addr_spec == delivery.address
        assert message["Message-ID"] == f"<{delivery.delivery_id}@example.com>"
        assert message.get_content_type() == "multipart/alternative"
        assert delivery.recipient["name"] in _body(message, "plain")
        assert delivery.recipient["name"] in _body(message, "html")
    sms = twilio.wait_for(len(texts), timeout=15)
    assert sorted((s.to, s.from_) for s in sms) == sorted((d.address, TWILIO_NUMBER) for d in texts)
    for text in sms:
        assert "Jazz Night" in text.body


def test_booking_created_sms_carries_the_seed_wording(
    app: NotifierCelery, twilio: TwilioStandIn
) -> None:
    publish(samples.booking_created(), app=app)

    [sms] = twilio.wait_for(1, timeout=15)
    assert sms.to == samples.FAN["phone"]
    assert sms.body == (
        "Appointment Booking Confirmation\n"
        "Hello Ada Lovelace,\n"
        "Your booking for Jazz Night on 2026-12-01 at 19:00 is confirmed.\n"
        "View details: https://app.example.com/bookings/b-42"
    )


def test_an_admin_with_a_phone_gets_the_admin_sms(
    app: NotifierCelery, twilio: TwilioStandIn
) -> None:
    admin = {"name": "Grace Hopper", "email": "grace@example.com", "phone": "+14155550123"}
    publish(samples.booking_created(admin=admin), app=app)

    received = twilio.wait_for(2, timeout=15)
    [to_admin] = [s for s in received if s.to == "+14155550123"]
    assert to_admin.body.startswith("New Booking Alert\nHello Grace Hopper,\n")
    assert "Fan: Ada Lovelace" in to_admin.body


def test_republishing_the_same_event_notifies_once(
    app: NotifierCelery, smtp_sink: SmtpSink
) -> None:
    event = samples.user_registered()
    publish(event, app=app)
    smtp_sink.wait_for(1, timeout=15)

    publish(event, app=app)
    # The solo worker takes messages in order: once this one has arrived,
    # the duplicate before it has been handled.
    publish(samples.password_reset_requested(), app=app)
    received = smtp_sink.wait_for(2, timeout=15)

    recipients_by_subject = [m.message()["Subject"] for m in received]
    assert recipients_by_subject.count("Welcome to Appointment Booking System") == 1
    assert len(received) == 2


def test_many_emails_share_one_smtp_connection(app: NotifierCelery, smtp_sink: SmtpSink) -> None:
    publish_many([samples.user_registered() for _ in range(20)], app=app)

    smtp_sink.wait_for(20, timeout=20)
    assert smtp_sink.connections == 1


def test_a_dropped_smtp_connection_is_reopened(app: NotifierCelery, smtp_sink: SmtpSink) -> None:
    publish(samples.user_registered(), app=app)
    smtp_sink.wait_for(1, timeout=15)
    smtp_sink.stop()  # the server goes away and closes our idle connection
    smtp_sink.start()

    publish(samples.user_registered(), app=app)
    smtp_sink.wait_for(1, timeout=15)  # the restarted sink starts counting afresh


def test_a_bare_celery_client_without_notifier_can_publish(
    app: NotifierCelery, smtp_sink: SmtpSink, settings: Settings
) -> None:
    event = samples.user_registered()
    script = (
        "import json, sys\n"
        "from celery import Celery\n"
        "bare = Celery(broker=sys.argv[1])\n"
        "bare.send_task('notifier.handle_event', args=[json.loads(sys.argv[2])],"
        " queue='notifier.events')\n"
        "assert 'notifier' not in sys.modules\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, settings.redis_url, json.dumps(event)],
        check=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": ""},
        cwd="/",
    )

    [mail] = smtp_sink.wait_for(1, timeout=15)
    assert mail.rcpt_tos == ("ada@example.com",)


def test_an_invalid_event_is_recorded_and_the_worker_goes_on(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    bad = samples.user_registered(user={"name": "X", "email": "not-an-address"})
    app.send_task("notifier.handle_event", args=[bad], queue="notifier.events")
    publish(samples.user_registered(), app=app)

    smtp_sink.wait_for(1, timeout=15)
    [entry] = list(dead_letters)
    assert entry.status == "rejected"
    assert entry.event_id == bad["event_id"]
    assert any("user.email" in error for error in entry.errors)


def test_a_call_with_the_wrong_arguments_is_recorded_not_lost(
    app: NotifierCelery, dead_letters: DeadLetterStore
) -> None:
    app.send_task("notifier.handle_event", args=[1, 2], queue="notifier.events")

    [entry] = eventually(lambda: list(dead_letters), what="a rejected entry")
    assert entry.status == "rejected"
    assert "exactly one positional argument" in entry.error


def test_a_refused_recipient_is_dead_lettered_after_one_attempt(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, ledger: Ledger
) -> None:
    smtp_sink.reject_recipient("ada@example.com", 550, "5.1.1 no such mailbox")
    event = samples.user_registered()
    publish(event, app=app)

    [entry] = eventually(lambda: list(dead_letters), what="a dead letter")
    assert entry.status == "failed"
    assert entry.attempts == 1
    assert "550" in entry.error
    assert entry.delivery is not None
    assert entry.delivery.event["event_id"] == event["event_id"]
    assert not ledger.is_sent(entry.id)


def test_a_deferred_recipient_is_retried_until_delivered(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    smtp_sink.fail_next(451, "4.3.0 try again later", times=2, stage="rcpt")
    publish(samples.user_registered(), app=app)

    [mail] = smtp_sink.wait_for(1, timeout=15)
    assert mail.rcpt_tos == ("ada@example.com",)
    assert dead_letters.count() == 0


def test_a_server_that_keeps_deferring_ends_in_the_dead_letter_store(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    smtp_sink.fail_next(451, "4.3.0 try again later", times=10, stage="rcpt")
    publish(samples.user_registered(), app=app)

    [entry] = eventually(lambda: list(dead_letters), timeout=15, what="a dead letter")
    assert isinstance(entry, DeadLetter)
    assert entry.attempts == 3  # NOTIFIER_RETRY_MAX_ATTEMPTS in these tests
    assert [record.attempt for record in entry.history] == [1, 2, 3]
    assert "gave up after 3 attempts" in entry.error
    assert smtp_sink.messages == []


def test_an_invalid_number_at_twilio_is_dead_lettered(
    app: NotifierCelery, twilio: TwilioStandIn, dead_letters: DeadLetterStore
) -> None:
    twilio.fail_next(400, 21211, "The 'To' number is not a valid phone number.")
    publish(samples.booking_created(), app=app)

    [entry] = eventually(lambda: list(dead_letters), what="a dead letter")
    assert entry.channel == "sms"
    assert entry.attempts == 1
    assert "21211" in entry.error


def test_twilio_rate_limiting_is_retried(
    app: NotifierCelery, twilio: TwilioStandIn, dead_letters: DeadLetterStore
) -> None:
    twilio.fail_next(429, 20429, "Too Many Requests")
    publish(samples.booking_created(), app=app)

    [sms] = twilio.wait_for(1, timeout=15)
    assert sms.to == samples.FAN["phone"]
    assert twilio.requests == 2
    assert dead_letters.count() == 0


def test_without_twilio_settings_sms_are_skipped_and_emails_still_sent(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    smtp_sink: SmtpSink,
    twilio: TwilioStandIn,
    dead_letters: DeadLetterStore,
) -> None:
    app = worker_for(settings_for(twilio_account_sid=None))
    publish(samples.booking_created(), app=app)

    smtp_sink.wait_for(2, timeout=15)
    assert twilio.requests == 0
    assert dead_letters.count() == 0


def test_a_staging_worker_allowing_special_domains_delivers_to_an_address_under_test(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    staging = worker_for(
        settings_for(
            notifier_allow_special_domains=True,
            mail_default_sender="Bookings <noreply@staging.test>",
        )
    )
    event = samples.user_registered(user={**samples.FAN, "email": "ada@mail.test"})

    publish(event, app=staging)

    [mail] = smtp_sink.wait_for(1, timeout=10)
    assert (mail.mail_from, mail.rcpt_tos) == ("noreply@staging.test", ("ada@mail.test",))
    assert dead_letters.count() == 0
