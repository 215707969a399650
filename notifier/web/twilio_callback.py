"""``POST /twilio/status``: is it from Twilio (``X-Twilio-Signature``), and what to answer.

The URL signed is the one Twilio was given (``NOTIFIER_PUBLIC_URL`` +
``/twilio/status``), rebuilt from settings and never from the request's Host
header or scheme, which a client (or a proxy) chooses (docs/security.md).
``RequestValidator`` compares in constant time.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator

from notifier.logs import get_logger
from notifier.receipts import InvalidReceiptError, TwilioReceipt, parse_receipt
from notifier.settings import Settings

__all__ = ["answer_callback", "form_fields", "signature_valid"]


def form_fields(body: bytes) -> ImmutableMultiDict[str, str]:
    """The fields of a form-encoded body, repeated names kept (Twilio signs every value)."""
    text = body.decode("utf-8", errors="replace")
    return ImmutableMultiDict(parse_qsl(text, keep_blank_values=True))


def signature_valid(
    token: str, url: str, fields: ImmutableMultiDict[str, str], signature: str | None
) -> bool:
    """Whether ``signature`` is Twilio's HMAC of ``url`` and ``fields`` under ``token``."""
    if not signature:
        return False
    return bool(RequestValidator(token).validate(url, fields, signature))


def answer_callback(
    settings: Settings, body: bytes, signature: str | None, apply: Callable[[TwilioReceipt], object]
) -> tuple[int, str]:
    """The HTTP status and detail for one ``POST /twilio/status`` whose body was read whole.

    The body cap (413) comes first, in ``notifier.web.limits``; then here: no
    ``NOTIFIER_PUBLIC_URL`` (or no auth token to check with): 404; a bad
    signature: 403; a form that is not a status callback: 400; else the
    receipt is applied (an unknown MessageSid included) and the answer is 200
    (docs/DESIGN.md §10, "/twilio/status order of checks").
    """
    url = settings.twilio_status_callback_url
    token = settings.twilio_auth_token
    if url is None or token is None:
        return 404, "Not Found"
    fields = form_fields(body)
    if not signature_valid(token.get_secret_value(), url, fields, signature):
        get_logger().warning("twilio.callback_refused", reason="invalid signature")
        return 403, "invalid X-Twilio-Signature"
    try:
        receipt = parse_receipt(fields)
    except InvalidReceiptError as exc:
        get_logger().warning("twilio.callback_refused", reason=str(exc))
        return 400, str(exc)
    apply(receipt)
    return 200, "ok"
