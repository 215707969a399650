"""What Twilio's common delivery error codes mean, offline (docs/DESIGN.md §10).

An ``undelivered`` SMS is dead-lettered with ``Twilio ErrorCode N: <meaning>``
as its error, so an operator reading ``dlq list`` sees why without looking the
code up. Only the codes a status callback commonly carries are here; any other
reads "see Twilio error N" (Twilio documents each at /docs/errors/N).
"""

from __future__ import annotations

__all__ = ["describe", "meaning"]

_MEANINGS: dict[int, str] = {
    21211: "invalid 'To' phone number",
    21610: "the recipient has unsubscribed (replied STOP)",
    21614: "'To' number is not a valid mobile number",
    30003: "unreachable destination handset",
    30004: "message blocked",
    30005: "unknown destination handset",
    30006: "landline or unreachable carrier",
    30007: "message filtered by the carrier",
    30008: "unknown error",
    30034: "message from an unregistered number (US A2P 10DLC)",
}


def meaning(code: int) -> str:
    """The meaning of one error code, or "see Twilio error N"."""
    return _MEANINGS.get(code, f"see Twilio error {code}")


def describe(code: int | None) -> str:
    """A dead letter's error: ``Twilio ErrorCode N: <meaning>`` (no code: "no ErrorCode")."""
    if code is None:
        return "Twilio reported it undelivered (no ErrorCode)"
    return f"Twilio ErrorCode {code}: {meaning(code)}"
