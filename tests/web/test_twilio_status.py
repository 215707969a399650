"""``POST /twilio/status``: order of checks 413 → 403 → 400, 404 when off (docs/DESIGN.md §10)."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from twilio.request_validator import RequestValidator

from notifier.receipts import TwilioReceipt
from notifier.web.limits import MAX_BODY_BYTES
from tests.web.conftest import TWILIO_TOKEN, FakeParts

CALLBACK_URL = "https://notifier.example.com/twilio/status"
SID = "SM" + "b" * 32


def signed(fields: dict[str, str], url: str = CALLBACK_URL) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, fields)}


def post(base_url: str, fields: dict[str, str], headers: dict[str, str]) -> requests.Response:
    return requests.post(base_url + "/twilio/status", data=fields, headers=headers, timeout=5)


def test_a_signed_receipt_is_200_and_applied(base_url: str, fakes: FakeParts) -> None:
    fields = {"MessageSid": SID, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    answer = post(base_url, fields, signed(fields))
    assert answer.status_code == 200
    assert fakes.receipts == [TwilioReceipt(SID, "undelivered", 30003)]


def test_a_forged_signature_is_403_and_nothing_applied(base_url: str, fakes: FakeParts) -> None:
    fields = {"MessageSid": SID, "MessageStatus": "delivered"}
    forged = {
        "X-Twilio-Signature": RequestValidator("not-the-token").compute_signature(
            CALLBACK_URL, fields
        )
    }
    assert post(base_url, fields, forged).status_code == 403
    assert fakes.receipts == []


def test_an_unsigned_receipt_is_403(base_url: str, fakes: FakeParts) -> None:
    answer = post(base_url, {"MessageSid": SID, "MessageStatus": "delivered"}, {})
    assert answer.status_code == 403
    assert fakes.receipts == []


def test_a_signature_for_another_url_is_403(base_url: str) -> None:
    # The URL is NOTIFIER_PUBLIC_URL's, never the Host header's: signing the
    # address the request really went to does not pass.
    fields = {"MessageSid": SID, "MessageStatus": "delivered"}
    answer = post(base_url, fields, signed(fields, url=base_url + "/twilio/status"))
    assert answer.status_code == 403


def test_a_changed_field_breaks_the_signature(base_url: str) -> None:
    fields = {"MessageSid": SID, "MessageStatus": "undelivered"}
    headers = signed(fields)
    assert post(base_url, {**fields, "MessageStatus": "delivered"}, headers).status_code == 403


@pytest.mark.parametrize(
    "fields",
    [
        {"MessageStatus": "delivered"},
        {"MessageSid": SID},
        {"MessageSid": "not-a-sid", "MessageStatus": "delivered"},
        {"MessageSid": SID, "MessageStatus": "exploded"},
        {"MessageSid": SID, "MessageStatus": "failed", "ErrorCode": "thirty"},
    ],
    ids=["no-sid", "no-status", "bad-sid", "unknown-status", "bad-error-code"],
)
def test_a_signed_malformed_form_is_400(
    base_url: str, fakes: FakeParts, fields: dict[str, str]
) -> None:
    assert post(base_url, fields, signed(fields)).status_code == 400
    assert fakes.receipts == []


def test_without_public_url_it_is_404(serve: Callable[..., str], fakes: FakeParts) -> None:
    url = serve(notifier_public_url=None)
    fields = {"MessageSid": SID, "MessageStatus": "delivered"}
    assert post(url, fields, signed(fields)).status_code == 404
    assert fakes.receipts == []


def test_without_an_auth_token_to_check_with_it_is_404(
    serve: Callable[..., str], fakes: FakeParts
) -> None:
    url = serve(twilio_auth_token=None)
    fields = {"MessageSid": SID, "MessageStatus": "delivered"}
    assert post(url, fields, signed(fields)).status_code == 404
    assert fakes.receipts == []


def test_an_oversize_body_is_413_before_the_signature(base_url: str, fakes: FakeParts) -> None:
    fields = {"MessageSid": SID, "MessageStatus": "delivered", "Pad": "x" * MAX_BODY_BYTES}
    assert post(base_url, fields, signed(fields)).status_code == 413
    assert fakes.receipts == []


def test_a_body_at_the_cap_is_read(base_url: str, fakes: FakeParts) -> None:
    fields = {"MessageSid": SID, "MessageStatus": "delivered", "Pad": ""}
    fields["Pad"] = "x" * (MAX_BODY_BYTES - len(urlencode(fields)))
    assert len(urlencode(fields)) == MAX_BODY_BYTES
    assert post(base_url, fields, signed(fields)).status_code == 200


def _raw(base_url: str, head: bytes, body_chunks: list[bytes]) -> int:
    """Send a hand-made request; the status code of the answer."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused part way: the answer is already there
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status


def test_an_oversize_chunked_body_without_content_length_is_413(base_url: str) -> None:
    head = (
        b"POST /twilio/status HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a=" + b"x" * 4094
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 8 + [b"0\r\n\r\n"]
    assert _raw(base_url, head, chunks) == 413


def test_a_content_length_that_lies_low_is_still_capped(base_url: str) -> None:
    # The server reads only what the header declares: the extra bytes are the
    # next request's on the same connection, and the declared part is small.
    # What matters is that a small declared length cannot smuggle a big body in.
    body = b"a=" + b"x" * (MAX_BODY_BYTES * 2)
    head = (
        b"POST /twilio/status HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 20\r\n\r\n"
    )
    assert _raw(base_url, head, [body]) in (400, 403)


def test_a_content_length_that_lies_high_is_413_at_once(base_url: str) -> None:
    head = (
        b"POST /twilio/status HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 99999999\r\n\r\n"
    )
    assert _raw(base_url, head, [b"a=1"]) == 413
