"""Turns a delivery and its rendered text into the message a channel sends.

An email is written straight to the bytes SMTP carries (RFC 5322 headers,
MIME multipart/alternative, quoted-printable parts), not built as an
``email.message.EmailMessage``: building and flattening one cost about
750 us per email, ten times the rest of composing, and most of a worker's
CPU (README, "Performance"). The format written here is small and fixed, so
it is written directly, and the tests parse every message back with the
``email`` package (``policy.default``) to check it.

Header safety does not depend on the writer being careful: every value is
refused before it is written if it holds any line break ``str.splitlines``
knows (CR, LF, VT, FF, FS, GS, RS, NEL, U+2028, U+2029) or NUL, or if it
decodes, as an RFC 2047 encoded-word, to one. Display names and subjects
that are not plain printable ASCII are written as base64 encoded-words, so
what a receiver decodes is exactly the text we were given.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64encode
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.utils import format_datetime, parseaddr

from email_validator import EmailNotValidError, validate_email

from notifier.errors import ConfigurationError, PermanentError
from notifier.planner import Delivery
from notifier.templates import RenderedEmail

__all__ = ["ComposedEmail", "SmsMessage", "compose_email", "compose_sms", "parse_sender"]


@dataclass(frozen=True, slots=True)
class ComposedEmail:
    """One email as it goes on the wire, and what the SMTP envelope needs to know of it."""

    data: bytes
    """The whole message: headers and body, CRLF line endings (before SMTP dot-stuffing)."""
    message_id: str
    """``<delivery_id@sender domain>``: the provider id in the delivery's receipt."""
    smtputf8: bool = False
    """An address is not ASCII: the server must offer SMTPUTF8 (RFC 6531)."""


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """One SMS to send: E.164 recipient and the body."""

    to: str
    body: str


# Every character str.splitlines() breaks a line at, and NUL. Mail software
# built on that method (the email package is) would start a new header there.
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00]")

# An address as email-validator normalizes it (dot-atom local part, no
# quotes, no comments): anything else came from a tampered stored delivery.
_PLAIN_ADDRESS = re.compile(r'[^\s<>()\[\]\\,;:@"]+@[^\s<>()\[\]\\,;:@"]+')

# A display name that is words of RFC 5322 atext, single-spaced, is written as
# it is; any other (specials, runs of spaces) as a quoted-string, so receivers
# read back exactly the name we were given.
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")

# Plain names and subjects up to these lengths are written as they are (lines
# stay under RFC 5322's 78); longer or non-ASCII ones become encoded-words,
# one per folded line.
_PLAIN_NAME_MAX = 60
_PLAIN_SUBJECT_MAX = 78 - len("Subject: ")
# Bytes of UTF-8 per encoded-word: 39 -> 52 base64 characters, a 64-character
# word, so "Subject: " plus one word stays under RFC 2047's 76 (whole characters
# only: a word never ends inside a multi-byte sequence).
_WORD_BYTES = 39


def _header_safe(value: str, what: str) -> str:
    """Refuse a header value that is, or decodes to, more than one line.

    Receiving software decodes RFC 2047 encoded-words it finds in a value
    (``=?utf-8?b?...?=``), and some writes the decoded text back out, so an
    encoded CR/LF would become a real one: a second header, or the start of
    the body. Checking the decoded form closes that door too.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from a stored delivery: no mail software can carry it.
        raise PermanentError(f"{what} is not valid Unicode (lone surrogate)") from None
    decoded = value
    if "=?" in value:
        try:
            decoded = str(make_header(decode_header(value)))
        except (HeaderParseError, LookupError, UnicodeDecodeError, ValueError) as exc:
            raise PermanentError(f"{what} has a malformed encoded-word: {exc}") from None
    for text in (value, decoded):
        if _LINE_BREAKS.search(text):
            raise PermanentError(
                f"{what} contains CR/LF, another line break or NUL: "
                "refusing to build a mail header from it"
            )
    return value


def _encoded_words(text: str) -> str:
    """``text`` as base64 encoded-words of UTF-8, one per folded line."""
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _WORD_BYTES:
            words.append(b64encode(chunk).decode("ascii"))
            chunk = bytearray()
        chunk += encoded
    words.append(b64encode(chunk).decode("ascii"))
    return "\r\n ".join(f"=?utf-8?b?{word}?=" for word in words)


def _is_plain(text: str, limit: int) -> bool:
    # "=?" would be decoded by the receiver: such text is sent encoded, so it
    # arrives as the characters it is.
    return len(text) <= limit and text.isascii() and text.isprintable() and "=?" not in text


def _unstructured(text: str) -> str:
    return text if _is_plain(text, _PLAIN_SUBJECT_MAX) else _encoded_words(text)


def _mailbox(name: str, address: str) -> str:
    """``name <address>`` for a From or To header; the bare address without a name."""
    if not name:
        return address
    if not _is_plain(name, _PLAIN_NAME_MAX):
        return f"{_encoded_words(name)}\r\n <{address}>"
    if _ATOMS.fullmatch(name):
        return f"{name} <{address}>"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{address}>'


def _address(value: str, what: str) -> str:
    _header_safe(value, what)
    if not _PLAIN_ADDRESS.fullmatch(value):
        raise PermanentError(f"{what} is not a plain address: refusing to build a mail header")
    return value


def _quoted_printable(text: str, what: str) -> bytes:
    """A body part as quoted-printable with CRLF line endings (7-bit clean, lines <= 76)."""
    try:
        data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise PermanentError(f"the {what} part is not valid Unicode (lone surrogate)") from None
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def parse_sender(sender: str | None) -> Address:
    """``MAIL_DEFAULT_SENDER`` as an Address: 'Bookings <noreply@example.com>' or a bare address."""
    if not sender:
        raise ConfigurationError("MAIL_DEFAULT_SENDER is not set: no From address for emails")
    _header_safe(sender, "MAIL_DEFAULT_SENDER")
    name, addr = parseaddr(sender)
    try:
        addr = validate_email(addr, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ConfigurationError(f"MAIL_DEFAULT_SENDER is not a valid address: {exc}") from None
    return Address(display_name=name, addr_spec=addr)


def compose_email(
    delivery: Delivery, rendered: RenderedEmail, sender: Address, now: datetime
) -> ComposedEmail:
    """A multipart/alternative (text + HTML) message with Date and a stable Message-ID.

    The Message-ID is derived from the delivery id, so a retried or replayed
    send carries the same id and receiving systems can drop the repeat. So is
    the MIME boundary: it starts with ``=_``, which quoted-printable can never
    produce, so no body can contain it.
    """
    name = _header_safe(str(delivery.recipient.get("name") or ""), "recipient name")
    if "=?" in name:
        # Even malformed encoded-words (=??Q?=3B) are decoded by some mail
        # software; a stored delivery skips event validation, so check again.
        raise PermanentError("recipient name contains '=?': refusing a possible encoded-word")
    address = _address(delivery.address, "recipient address")
    subject = _header_safe(rendered.subject, "subject")
    sender_name = _header_safe(sender.display_name, "sender name")
    message_id = f"<{delivery.delivery_id}@{sender.domain}>"
    boundary = f"=_notifier_{delivery.delivery_id}"
    head = (
        f"Subject: {_unstructured(subject)}\r\n"
        f"From: {_mailbox(sender_name, sender.addr_spec)}\r\n"
        f"To: {_mailbox(name, address)}\r\n"
        f"Date: {format_datetime(now)}\r\n"
        f"Message-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
        "\r\n"
    )
    part = (
        f'--{boundary}\r\nContent-Type: text/%s; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    smtputf8 = not (address.isascii() and sender.addr_spec.isascii())
    data = b"".join(
        (
            # UTF-8 only in an address, and only when the envelope says SMTPUTF8.
            head.encode("utf-8" if smtputf8 else "ascii"),
            (part % "plain").encode("ascii"),
            _quoted_printable(rendered.text, "text"),
            b"\r\n",
            (part % "html").encode("ascii"),
            _quoted_printable(rendered.html, "HTML"),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        )
    )
    return ComposedEmail(data=data, message_id=message_id, smtputf8=smtputf8)


def compose_sms(delivery: Delivery, body: str) -> SmsMessage:
    """The SMS for a delivery; the address is already E.164 (validated with the event)."""
    return SmsMessage(to=delivery.address, body=body)
