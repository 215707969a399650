"""Redaction of personal data for logs and dead-letter listings.

``a***@example.com`` and ``+44*******123``: enough for an operator to tell
two recipients apart or spot a typo in a domain, not enough to contact anyone.
"""

from __future__ import annotations

import re

from notifier.addresses import E164

__all__ = ["EXAMPLE_PHONE", "redact_address", "redact_email", "redact_phone", "redact_text"]

EXAMPLE_PHONE = "+442079460123"
"""The number our own messages give as an example (the E.164 hint), left whole in logs.

It is in Ofcom's range for drama (020 7946 0000-0999), so it is nobody's;
redacted, the hint "such as +44*******123" would show no format at all.
"""

# \w is Unicode-aware: internationalized addresses (zoë@exämple.com) are valid events.
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def redact_email(address: str) -> str:
    """Keep the first character of the local part and the whole domain."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def redact_phone(number: str) -> str:
    """Keep the leading + and two digits (the country, roughly) and the last three."""
    digits = number.lstrip("+")
    if len(digits) <= 5:
        return "+" + "*" * len(digits)
    return f"+{digits[:2]}{'*' * (len(digits) - 5)}{digits[-3:]}"


def redact_address(address: str) -> str:
    """Redact an email address or an E.164 number, whichever it is."""
    if "@" in address:
        return redact_email(address)
    if address.startswith("+"):
        return redact_phone(address)
    return "***"


def redact_text(text: str) -> str:
    """Redact every email address and E.164 number found in free text (error messages)."""
    # Most logged values (ids, names of things) hold neither: skip both scans.
    if "@" not in text and "+" not in text:
        return text
    text = _EMAIL.sub(lambda match: redact_email(match.group(0)), text)
    return E164.sub(_redact_phone_match, text)


def _redact_phone_match(match: re.Match[str]) -> str:
    number = match.group(0)
    return number if number == EXAMPLE_PHONE else redact_phone(number)
