"""Receipts end to end: a real worker sends SMS through the Twilio stand-in, which calls the
real web process back (signed); the status, the dead letter and the fallback email follow.

Real Redis (skipped locally without it, failing on CI), a Celery worker on it,
the SMTP sink, the stand-in, and ``notifier web`` with its production parts on
a free port, which is ``NOTIFIER_PUBLIC_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from notifier.app import NotifierCelery
from notifier.app import create_app as celery_app
from notifier.client import publish
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.events import parse_event
from notifier.planner import Delivery, plan, sms_fallback
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn, WorkerProcess, free_port
from notifier.web.app import create_app
from notifier.web.server import ServerThread, production_parts
from tests import samples
from tests.polling import eventually

pytestmark = pytest.mark.integration

API_KEY = "e2e-api-key-0123456789"
ADMIN = {"name": "Grace Hopper", "email": "grace@example.com", "phone": "+14155550123"}


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    port = free_port()
    return settings_for(
        notifier_public_url=f"http://127.0.0.1:{port}",
        notifier_web_port=port,
        notifier_api_key=SecretStr(API_KEY),
    )


@pytest.fixture
def web(settings: Settings) -> Iterator[str]:
    parts, close = production_parts(settings)
    server = ServerThread(create_app(parts), port=settings.notifier_web_port)
    with server:
        yield server.url
    close()


def sms_of(event: dict[str, Any], role: str) -> Delivery:
    return next(d for d in plan(parse_event(event)) if d.channel == "sms" and d.role == role)


def trace(web: str, event_id: str) -> dict[str, Any]:
    answer = requests.get(
        f"{web}/v1/events/{event_id}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def state_of(web: str, event_id: str, delivery_id: str) -> dict[str, Any] | None:
    found = [d for d in trace(web, event_id)["deliveries"] if d["delivery_id"] == delivery_id]
    return found[0] if found else None


def reaching(web: str, event_id: str, delivery_id: str, state: str) -> dict[str, Any]:
    """The delivery's status once it is in ``state`` (polled through the API)."""

    def probe() -> dict[str, Any] | None:
        found = state_of(web, event_id, delivery_id)
        return found if found is not None and found["state"] == state else None

    return eventually(probe, timeout=30, what=f"{delivery_id} {state}")


def test_an_undelivered_sms_is_dead_lettered_and_falls_back_to_email_once(
    app: NotifierCelery,
    web: str,
    twilio: TwilioStandIn,
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    event = samples.booking_created(admin=ADMIN)
    fan_sms, admin_sms = sms_of(event, "fan"), sms_of(event, "admin")
    fallback = sms_fallback(fan_sms)
    assert fallback is not None
    # Twilio reports the fan's SMS failed, then undelivered, and retries that.
    twilio.undeliverable(samples.FAN["phone"], 30003, duplicate=True)
    publish(event, app=app)

    callbacks = twilio.wait_for_callbacks(6, timeout=30)
    assert all(callback.answer == 200 for callback in callbacks), callbacks
    fan = reaching(web, event["event_id"], fallback.delivery_id, "sent")
    assert fan["channel"] == "email"

    status = {d["delivery_id"]: d for d in trace(web, event["event_id"])["deliveries"]}
    assert status[fan_sms.delivery_id]["state"] == "undelivered"
    assert status[admin_sms.delivery_id]["state"] == "delivered"
    letter = dead_letters.get(fan_sms.delivery_id)
    assert isinstance(letter, DeadLetter)
    assert letter.status == "undelivered"
    assert letter.error == "Twilio ErrorCode 30003: unreachable destination handset"
    assert status[fan_sms.delivery_id]["dead_letter_id"] == letter.id
    fallbacks = [
        mail
        for mail in smtp_sink.messages
        if fallback.delivery_id in str(mail.message()["Message-ID"])
    ]
    assert len(fallbacks) == 1
    assert fallbacks[0].rcpt_tos == (samples.FAN["email"],)


def test_a_good_number_ends_delivered(
    app: NotifierCelery, web: str, twilio: TwilioStandIn, dead_letters: DeadLetterStore
) -> None:
    event = samples.booking_created()
    fan_sms = sms_of(event, "fan")
    publish(event, app=app)

    twilio.wait_for_callbacks(2, timeout=30)
    final = reaching(web, event["event_id"], fan_sms.delivery_id, "delivered")
    assert [entry["state"] for entry in final["timeline"]][-1] == "delivered"
    assert dead_letters.count() == 0


def test_healthz_is_ok_with_redis_up(web: str) -> None:
    answer = requests.get(f"{web}/healthz", timeout=5)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_a_signed_receipt_for_an_unknown_sid_is_200_and_changes_nothing(
    web: str, settings: Settings, twilio: TwilioStandIn, dead_letters: DeadLetterStore
) -> None:
    fields = {"MessageSid": "SM" + "e" * 32, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    url = f"{settings.notifier_public_url}/twilio/status"
    signature = RequestValidator(twilio.auth_token).compute_signature(url, fields)
    answer = requests.post(
        f"{web}/twilio/status", data=fields, headers={"X-Twilio-Signature": signature}, timeout=5
    )
    assert answer.status_code == 200
    assert dead_letters.count() == 0


def test_a_worker_process_and_the_web_process_end_an_undelivered_sms_once(
    settings: Settings,
    web: str,
    twilio: TwilioStandIn,
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
    tmp_path: Path,
) -> None:
    # The documented worker command in a process of its own (notifier.testing's
    # harness), configured through its environment only, as operators run it.
    ours = {name.upper() for name in Settings.model_fields}
    environment = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    environment.update(
        REDIS_URL=settings.redis_url,
        MAIL_SERVER=smtp_sink.host,
        MAIL_PORT=str(smtp_sink.port),
        MAIL_USE_TLS="false",
        MAIL_DEFAULT_SENDER="Bookings <bookings@example.com>",
        MAIL_TIMEOUT="4",
        TWILIO_ACCOUNT_SID=twilio.account_sid,
        TWILIO_AUTH_TOKEN=twilio.auth_token,
        TWILIO_PHONE_NUMBER="+14155550100",
        TWILIO_API_BASE_URL=twilio.base_url,
        NOTIFIER_PUBLIC_URL=str(settings.notifier_public_url),
        NOTIFIER_SMS_MPS="0",
        NOTIFIER_RATE_LIMITS="none",
        NOTIFIER_METRICS_PORT="0",
        NOTIFIER_LOG_FORMAT="json",
    )
    worker = WorkerProcess(environment, tmp_path / "worker.log", concurrency=1).start()
    client = celery_app(settings)
    try:
        worker.wait_ready()
        event = samples.booking_created()
        fan_sms = sms_of(event, "fan")
        fallback = sms_fallback(fan_sms)
        assert fallback is not None
        twilio.undeliverable(samples.FAN["phone"], 30005, duplicate=True)
        publish(event, app=client)

        twilio.wait_for_callbacks(4, timeout=60)
        reaching(web, event["event_id"], fallback.delivery_id, "sent")
        sms = reaching(web, event["event_id"], fan_sms.delivery_id, "undelivered")
        letter = dead_letters.get(fan_sms.delivery_id)
        assert isinstance(letter, DeadLetter)
        assert letter.error == "Twilio ErrorCode 30005: unknown destination handset"
        assert sms["dead_letter_id"] == letter.id
        to_fan = [m for m in smtp_sink.messages if m.rcpt_tos == (samples.FAN["email"],)]
        # The booking confirmation and one fallback, despite failed + undelivered twice.
        assert len(to_fan) == 2, worker.log_tail()
    finally:
        worker.stop()
        client.close()
