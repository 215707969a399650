"""SmsChannel, the real twilio client, against the Twilio stand-in: deadlines hold during a send."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from notifier.channels.sms import SmsChannel
from notifier.compose import SmsMessage
from notifier.deadlines import Deadline
from notifier.errors import DeadlineExpiredError, TransientError
from notifier.testing import TwilioStandIn
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

MESSAGE = SmsMessage(to="+14155550199", body="Your booking is confirmed.")


def channel_for(stand_in: TwilioStandIn) -> SmsChannel:
    return SmsChannel(
        make_settings(
            twilio_account_sid=stand_in.account_sid,
            twilio_auth_token=stand_in.auth_token,
            twilio_phone_number="+14155550100",
            twilio_api_base_url=stand_in.base_url,
            twilio_timeout=10,
        )
    )


@pytest.fixture
def slow_twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn(delay=4.0) as stand_in:
        yield stand_in


def test_a_request_waits_no_longer_than_the_deadline(slow_twilio: TwilioStandIn) -> None:
    sms = channel_for(slow_twilio)
    started = time.monotonic()

    with pytest.raises(TransientError):
        sms.send(MESSAGE, deadline=Deadline.after(1.0, lambda: datetime.now(UTC)))
    took = time.monotonic() - started
    sms.close()

    assert took < 3.0, f"the request took {took:.1f}s: TWILIO_TIMEOUT (10 s), not the deadline"


def test_no_request_is_made_once_the_deadline_has_passed() -> None:
    now = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    with TwilioStandIn() as stand_in:
        sms = channel_for(stand_in)

        with pytest.raises(DeadlineExpiredError):
            sms.send(MESSAGE, deadline=Deadline(now - timedelta(seconds=1), lambda: now))
        sms.close()

        assert stand_in.requests == 0


def test_a_slow_reply_without_a_deadline_is_not_cut_short() -> None:
    with TwilioStandIn(delay=0.5) as stand_in:
        sms = channel_for(stand_in)

        receipt = sms.send(MESSAGE)
        sms.close()

    assert receipt.provider_id.startswith("SM")
