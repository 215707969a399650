"""The Twilio stand-in's status callbacks, signed as Twilio signs them, taken by the real endpoint.

And the SMS channel asks for them only with ``NOTIFIER_PUBLIC_URL`` set.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from notifier.channels.sms import SmsChannel
from notifier.compose import SmsMessage
from notifier.receipts import TwilioReceipt
from notifier.testing import TwilioStandIn, free_port
from notifier.web.app import WebParts, create_app
from notifier.web.server import ServerThread
from tests.conftest import make_settings
from tests.web.conftest import FakeParts

GOOD = "+447911123456"
BAD = "+447911000000"


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn(callback_delay=0) as stand_in:
        yield stand_in


@pytest.fixture
def public_url(twilio: TwilioStandIn, fakes: FakeParts) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        twilio_auth_token=SecretStr(twilio.auth_token), notifier_public_url=url
    )
    parts = WebParts(
        settings=settings,
        status=fakes.status,
        health=fakes.health,
        apply_receipt=fakes.apply,
    )
    with ServerThread(create_app(parts), port=port):
        yield url


def channel(twilio: TwilioStandIn, public_url: str | None) -> SmsChannel:
    return SmsChannel(
        make_settings(
            twilio_account_sid=twilio.account_sid,
            twilio_auth_token=SecretStr(twilio.auth_token),
            twilio_phone_number="+14155550100",
            twilio_api_base_url=twilio.base_url,
            notifier_public_url=public_url,
        )
    )


def test_a_good_number_reports_sent_then_delivered_and_the_endpoint_takes_both(
    twilio: TwilioStandIn, public_url: str, fakes: FakeParts
) -> None:
    receipt = channel(twilio, public_url).send(SmsMessage(to=GOOD, body="hi"))
    callbacks = twilio.wait_for_callbacks(2)
    assert [(c.status, c.answer) for c in callbacks] == [("sent", 200), ("delivered", 200)]
    sid = receipt.provider_id
    assert fakes.receipts == [TwilioReceipt(sid, "sent"), TwilioReceipt(sid, "delivered")]


def test_a_failing_number_reports_undelivered_with_its_error_code(
    twilio: TwilioStandIn, public_url: str, fakes: FakeParts
) -> None:
    twilio.undeliverable(BAD, 30005)
    receipt = channel(twilio, public_url).send(SmsMessage(to=BAD, body="hi"))
    twilio.wait_for_callbacks(2)
    sid = receipt.provider_id
    assert fakes.receipts == [
        TwilioReceipt(sid, "sent"),
        TwilioReceipt(sid, "undelivered", 30005),
    ]


def test_a_duplicate_failure_reports_failed_and_undelivered_twice(
    twilio: TwilioStandIn, public_url: str, fakes: FakeParts
) -> None:
    twilio.undeliverable(BAD, 30003, duplicate=True)
    channel(twilio, public_url).send(SmsMessage(to=BAD, body="hi"))
    callbacks = twilio.wait_for_callbacks(4)
    assert [c.status for c in callbacks] == ["sent", "failed", "undelivered", "undelivered"]
    assert all(c.answer == 200 for c in callbacks)


def test_the_channel_asks_for_receipts_at_the_public_url(
    twilio: TwilioStandIn, public_url: str
) -> None:
    channel(twilio, public_url).send(SmsMessage(to=GOOD, body="hi"))
    assert twilio.wait_for(1)[0].status_callback == public_url + "/twilio/status"


def test_without_a_public_url_no_receipt_is_asked_for(twilio: TwilioStandIn) -> None:
    channel(twilio, None).send(SmsMessage(to=GOOD, body="hi"))
    assert twilio.wait_for(1)[0].status_callback is None
    assert twilio.callbacks == []
