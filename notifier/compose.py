"""Turns a delivery and its rendered text into the message a channel sends.

Headers are built only through the ``email`` package's header API
(``Address`` objects, ``EmailMessage.__setitem__``), and anything that would
put CR or LF into a header is refused, never folded into a new header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from email_validator import EmailNotValidError, validate_email

from notifier.errors import ConfigurationError, PermanentError
from notifier.planner import Delivery
from notifier.templates import RenderedEmail

__all__ = ["SmsMessage", "compose_email", "compose_sms", "parse_sender"]

# RFC-correct CRLF line endings on the wire; headers that are not ASCII are
# RFC 2047-encoded (utf8=False), which every server accepts.
SMTP_POLICY = policy.SMTP


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """One SMS to send: E.164 recipient and the body."""

    to: str
    body: str


def _header_safe(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise PermanentError(f"{what} contains CR/LF: refusing to build a mail header from it")
    return value


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
) -> EmailMessage:
    """A multipart/alternative (text + HTML) message with Date and a stable Message-ID.

    The Message-ID is derived from the delivery id, so a retried or replayed
    send carries the same id and receiving systems can drop the repeat.
    """
    name = _header_safe(str(delivery.recipient.get("name") or ""), "recipient name")
    address = _header_safe(delivery.address, "recipient address")
    message = EmailMessage(policy=SMTP_POLICY)
    message["Subject"] = _header_safe(rendered.subject, "subject")
    message["From"] = sender
    message["To"] = Address(display_name=name, addr_spec=address)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<{delivery.delivery_id}@{sender.domain}>"
    # Quoted-printable keeps the message 7-bit clean: servers without 8BITMIME
    # exist, and non-ASCII names must survive them.
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message


def compose_sms(delivery: Delivery, body: str) -> SmsMessage:
    """The SMS for a delivery; the address is already E.164 (validated with the event)."""
    return SmsMessage(to=delivery.address, body=body)
