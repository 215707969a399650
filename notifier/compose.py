"""Turns a delivery and its rendered text into the message a channel sends.

An email is written straight to the bytes SMTP carries (RFC 5322 headers,
MIME multipart/alternative, quoted-printable parts), not built as an
``email.message.EmailMessage``: building and flattening one cost about
750 us per email, ten times the rest of composing, and most of a worker's
CPU (bench/README.md). The format written here is small and fixed, so
it is written directly, and the tests parse every message back with the
``email`` package (``policy.default``) to check it.

Header safety does not depend on the writer being careful. The recipient's
name and address and the subject are held to the event contract's own rules
(``notifier.events``: one line, no control or format characters, a valid
address without "=?"), so compose writes exactly what validation accepts,
whether the delivery came from an event or from a job that skipped
``parse_event``. The sender, from ``MAIL_DEFAULT_SENDER``, is refused if it
holds any line break ``str.splitlines`` knows (CR, LF, VT, FF, FS, GS, RS,
NEL, U+2028, U+2029) or NUL. Display names and subjects that are not plain
printable ASCII, or that hold "=?", are written as base64 encoded-words, so
what a receiver decodes is exactly the text we were given, never a header
hidden inside an encoded-word of the producer's.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.utils import format_datetime, parseaddr
from functools import partial

from notifier.errors import ConfigurationError, PermanentError
from notifier.events import email_address, header_text, person_name
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
# quotes, no comments): a second guard behind the contract's own check.
_PLAIN_ADDRESS = re.compile(r'[^\s<>()\[\]\\,;:@"]+@[^\s<>()\[\]\\,;:@"]+')

# A delivery id goes into Message-ID and the MIME boundary: a UUID from the
# planner, or a token of the same characters.
_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,99}")

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
    """Refuse a header value that is more than one line, or not valid Unicode.

    Nothing is written raw that holds "=?" (``_is_plain``), so a receiver's
    RFC 2047 decoder never meets an encoded-word we did not write ourselves.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate: no mail software can carry it.
        raise PermanentError(f"{what} is not valid Unicode (lone surrogate)") from None
    if _LINE_BREAKS.search(value):
        raise PermanentError(
            f"{what} contains CR/LF, another line break or NUL: "
            "refusing to build a mail header from it"
        )
    return value


def _contract(rule: Callable[[str], str], value: object, what: str) -> str:
    """``value`` under one of the event contract's rules, or a PermanentError saying why."""
    if not isinstance(value, str):
        raise PermanentError(f"{what} is missing or not text")
    try:
        return rule(value)
    except ValueError as exc:
        raise PermanentError(f"{what}: {exc}: refusing to build a mail header from it") from None


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


def _address(value: object, what: str, *, allow_special_domains: bool) -> str:
    _contract(partial(email_address, allow_special_domains=allow_special_domains), value, what)
    assert isinstance(value, str)  # _contract refused anything else
    if not _PLAIN_ADDRESS.fullmatch(value):
        raise PermanentError(f"{what} is not a plain address: refusing to build a mail header")
    # As given, not normalized: the SMTP envelope is sent to this very string.
    return value


def _quoted_printable(text: str, what: str) -> bytes:
    """A body part as quoted-printable with CRLF line endings (7-bit clean, lines <= 76)."""
    try:
        data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise PermanentError(f"the {what} part is not valid Unicode (lone surrogate)") from None
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def parse_sender(sender: str | None, *, allow_special_domains: bool = False) -> Address:
    """``MAIL_DEFAULT_SENDER`` as an Address: 'Bookings <noreply@example.com>' or a bare address.

    ``allow_special_domains`` (``NOTIFIER_ALLOW_SPECIAL_DOMAINS``) accepts a sender under .test.
    """
    if not sender:
        raise ConfigurationError("MAIL_DEFAULT_SENDER is not set: no From address for emails")
    _header_safe(sender, "MAIL_DEFAULT_SENDER")
    name, addr = parseaddr(sender)
    try:
        addr = email_address(addr, allow_special_domains=allow_special_domains)
    except ValueError as exc:
        raise ConfigurationError(f"MAIL_DEFAULT_SENDER is not a valid address: {exc}") from None
    return Address(display_name=name, addr_spec=addr)


def compose_email(
    delivery: Delivery,
    rendered: RenderedEmail,
    sender: Address,
    now: datetime,
    *,
    allow_special_domains: bool = False,
) -> ComposedEmail:
    """A multipart/alternative (text + HTML) message with Date and a stable Message-ID.

    ``allow_special_domains`` is ``NOTIFIER_ALLOW_SPECIAL_DOMAINS``, as validation had it.

    The Message-ID is derived from the delivery id, so a retried or replayed
    send carries the same id and receiving systems can drop the repeat. So is
    the MIME boundary: it starts with ``=_``, which quoted-printable can never
    produce, so no body can contain it.
    """
    name = _contract(person_name, delivery.recipient.get("name"), "recipient name")
    address = _address(
        delivery.address, "recipient address", allow_special_domains=allow_special_domains
    )
    subject = _contract(header_text, rendered.subject, "subject")
    sender_name = _header_safe(sender.display_name, "sender name")
    if not _DELIVERY_ID.fullmatch(delivery.delivery_id):
        raise PermanentError("delivery_id is not a plain token: refusing to build a Message-ID")
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
