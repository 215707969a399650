"""SMS through Twilio's Messages API, with the official ``twilio`` client.

One client per worker process (its HTTP session keeps connections alive).
``TWILIO_API_BASE_URL`` points it at a stand-in for tests and the demo. The
client rewrites the host from ``TWILIO_REGION``/``TWILIO_EDGE`` in the process
environment, and reads ``os.environ`` whenever the mapping it is given is
empty, so we hand it one with both names blank: settings alone decide.
"""

from __future__ import annotations

import math

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from notifier.channels import Receipt
from notifier.compose import SmsMessage
from notifier.errors import ConfigurationError
from notifier.retry import ProviderError, classify
from notifier.settings import Settings

__all__ = ["SmsChannel", "segments"]

# GSM 03.38: the basic set costs one septet a character, the extension set two.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


def segments(body: str) -> tuple[int, str]:
    """How many SMS segments the body costs, and its encoding ('GSM-7' or 'UCS-2').

    One segment holds 160 GSM-7 septets or 70 UCS-2 units; a concatenated
    message loses room to its header (153 / 67 per segment).
    """
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in body):
        length = sum(2 if char in _GSM7_EXTENDED else 1 for char in body)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        # Characters outside the BMP take two UTF-16 units.
        length = len(body.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    if length <= single:
        return 1, encoding
    return math.ceil(length / multi), encoding


class SmsChannel:
    """Sends ``SmsMessage``s from ``TWILIO_PHONE_NUMBER``."""

    def __init__(self, settings: Settings) -> None:
        sid = settings.twilio_account_sid
        token = settings.twilio_auth_token
        sender = settings.twilio_phone_number
        if not (sid and token and sender):
            raise ConfigurationError(
                "SMS needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER"
            )
        self.sender = sender
        self.client = Client(
            sid,
            token.get_secret_value(),
            http_client=TwilioHttpClient(timeout=settings.twilio_timeout),
            environment={"TWILIO_REGION": "", "TWILIO_EDGE": ""},
        )
        self.client.api.base_url = settings.twilio_api_base_url

    def send(self, message: SmsMessage) -> Receipt:
        """Hand one SMS to Twilio; raise Transient/PermanentError on failure."""
        try:
            created = self.client.messages.create(
                to=message.to, from_=self.sender, body=message.body
            )
        except ProviderError as exc:
            raise classify(exc) from exc
        return Receipt(channel="sms", provider="twilio", provider_id=str(created.sid))

    def close(self) -> None:
        """Release the HTTP session."""
        session = getattr(self.client.http_client, "session", None)
        if session is not None:
            session.close()
