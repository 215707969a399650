"""Turns a delivery and its rendered text into the message a channel sends.

Headers are built only through the ``email`` package's header API
(``Address`` objects, ``EmailMessage.__setitem__``), and anything that would
put CR or LF into a header is refused, never folded into a new header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from email_validator import EmailNotValidError, validate_email

from notifier.errors import ConfigurationError, PermanentError
from notifier.planner import Delivery
from notifier.templates import RenderedEmail

__all__ = ["SmsMessage", "compose_email", "compose_sms", "parse_sender"]


class _CachedHeaderRegistry(HeaderRegistry):
    """The email package's header registry, minus a class creation per header.

    ``HeaderRegistry.__getitem__`` builds a new class with ``type()`` every
    time a header is set or parsed: about 15 times per message, half the
    cost of composing one (benchmark profile, README "Performance"). The
    classes it builds are stateless and depend only on the header name, so
    one per name is kept (up to a bound, should this policy ever parse mail
    with arbitrary header names). Parsing, folding and encoding are unchanged.
    """

    _MAX_CACHED = 256

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = super().__getitem__(name)
            if len(self._classes) < self._MAX_CACHED:
                self._classes[key] = cls
        return cls


# RFC-correct CRLF line endings on the wire; headers that are not ASCII are
# RFC 2047-encoded (utf8=False), which every server accepts.
SMTP_POLICY = policy.SMTP.clone(header_factory=_CachedHeaderRegistry())


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """One SMS to send: E.164 recipient and the body."""

    to: str
    body: str


_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\x00")


def _header_safe(value: str, what: str) -> str:
    """Refuse a header value that is, or decodes to, more than one line.

    The ``email`` package decodes RFC 2047 encoded-words it finds in a value
    (``=?utf-8?b?...?=``) and then writes the decoded text back out, so an
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
        if any(char in text for char in _FORBIDDEN_IN_HEADERS):
            raise PermanentError(
                f"{what} contains CR/LF or NUL: refusing to build a mail header from it"
            )
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
    if "=?" in name:
        # Even malformed encoded-words (=??Q?=3B) are decoded by the email
        # package; a stored delivery skips event validation, so check again.
        raise PermanentError("recipient name contains '=?': refusing a possible encoded-word")
    address = _header_safe(delivery.address, "recipient address")
    message = EmailMessage(policy=SMTP_POLICY)
    try:
        message["Subject"] = _header_safe(rendered.subject, "subject")
        message["From"] = sender
        message["To"] = Address(display_name=name, addr_spec=address)
        message["Date"] = format_datetime(now)
        message["Message-ID"] = f"<{delivery.delivery_id}@{sender.domain}>"
    except (ValueError, IndexError, HeaderParseError) as exc:
        # The email package's own refusal (e.g. a linefeed it would have to
        # write): the same verdict as ours, never a crash of the task.
        raise PermanentError(f"cannot build mail headers: {exc}") from None
    # Quoted-printable keeps the message 7-bit clean: servers without 8BITMIME
    # exist, and non-ASCII names must survive them.
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message


def compose_sms(delivery: Delivery, body: str) -> SmsMessage:
    """The SMS for a delivery; the address is already E.164 (validated with the event)."""
    return SmsMessage(to=delivery.address, body=body)
