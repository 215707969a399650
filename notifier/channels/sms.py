"""SMS through Twilio's Messages API, with the official ``twilio`` client.

One client per worker process (its HTTP session keeps connections alive).
``TWILIO_API_BASE_URL`` points it at a stand-in for tests and the demo. The
client rewrites the host from ``TWILIO_REGION``/``TWILIO_EDGE`` in the process
environment, and reads ``os.environ`` whenever the mapping it is given is
empty, so we hand it one with both names blank: settings alone decide.

A send before a deadline (``notifier.deadlines``) cuts the request's timeout
(``TWILIO_TIMEOUT``) to the time left and checks the deadline right before
the request goes out. ``messages.create`` takes no timeout, so the deadline
reaches the HTTP client through a context variable, one per call.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

import requests
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from notifier.channels import Receipt
from notifier.compose import SmsMessage
from notifier.deadlines import Deadline
from notifier.errors import ConfigurationError, DeadlineExpiredError
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


_SEND_DEADLINE: ContextVar[Deadline | None] = ContextVar("sms_send_deadline", default=None)


class DeadlineHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no types
    """Twilio's HTTP client, with each request's timeout cut to the current send's deadline."""

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """``TwilioHttpClient.request``, refused once the deadline passed, and limited by it."""
        deadline = _SEND_DEADLINE.get()
        limit = timeout if timeout is not None else self.timeout
        if deadline is not None:
            deadline.check("sending the request to Twilio")
            limit = deadline.cap(limit) if limit is not None else deadline.remaining()
        return super().request(
            method, url, params, data, headers, auth, limit, allow_redirects=allow_redirects
        )


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
        # With NOTIFIER_PUBLIC_URL set, every SMS asks Twilio for delivery receipts
        # at /twilio/status (docs/DESIGN.md §9); unset, none is asked for and `sent` is final.
        self.status_callback = settings.twilio_status_callback_url
        self.client = Client(
            sid,
            token.get_secret_value(),
            http_client=DeadlineHttpClient(timeout=settings.twilio_timeout),
            environment={"TWILIO_REGION": "", "TWILIO_EDGE": ""},
        )
        self.client.api.base_url = settings.twilio_api_base_url

    def send(self, message: SmsMessage, deadline: Deadline | None = None) -> Receipt:
        """Hand one SMS to Twilio before ``deadline``; raise Transient/PermanentError on failure."""
        token = _SEND_DEADLINE.set(deadline)
        try:
            receipts = {"status_callback": self.status_callback} if self.status_callback else {}
            created = self.client.messages.create(
                to=message.to, from_=self.sender, body=message.body, **receipts
            )
        except ProviderError as exc:
            if isinstance(exc, requests.ConnectTimeout) and deadline and deadline.expired():
                # Our deadline cut the connect short: nothing reached Twilio. A
                # timeout waiting for the reply came after the request went out,
                # so it stays what classify makes of it (transient: the next
                # attempt meets the deadline, and the delivery ends ``expired``).
                raise DeadlineExpiredError(
                    f"{deadline.name} {deadline.at.isoformat()} passed while connecting to "
                    f"Twilio ({type(exc).__name__}: {exc})",
                    deadline=deadline,
                ) from exc
            raise classify(exc) from exc
        finally:
            _SEND_DEADLINE.reset(token)
        return Receipt(channel="sms", provider="twilio", provider_id=str(created.sid))

    def close(self) -> None:
        """Release the HTTP session."""
        session = getattr(self.client.http_client, "session", None)
        if session is not None:
            session.close()
