"""The event contract (schema_version 1): what producers publish to ``notifier.events``.

Events are validated from their JSON form, in strict mode: a date is an ISO
string, never a number; a time zone is required; unknown extra fields are
ignored so producers can add fields before we read them. ``parse_event`` is the
one entry point and turns every problem into an ``InvalidEventError`` whose
messages name the field.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias
from urllib.parse import urlsplit
from uuid import UUID

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from notifier.addresses import E164, email_fast_path, phone_fast_path
from notifier.errors import InvalidEventError
from notifier.redaction import EXAMPLE_PHONE

__all__ = [
    "MAX_EVENT_BYTES",
    "SUPPORTED_SCHEMA_VERSIONS",
    "SUPPORTED_TYPES",
    "BookingCancelled",
    "BookingCreated",
    "Event",
    "EventInfo",
    "PasswordResetRequested",
    "Person",
    "Slot",
    "UserRegistered",
    "email_address",
    "event_json_schema",
    "header_text",
    "json_type",
    "parse_event",
    "person_name",
]

MAX_EVENT_BYTES = 64 * 1024
MAX_URL_LENGTH = 2048
SUPPORTED_SCHEMA_VERSIONS = (1,)
SUPPORTED_TYPES = (
    "user.registered",
    "booking.created",
    "booking.cancelled",
    "password.reset_requested",
)
DEFAULT_RESET_LIFETIME = timedelta(hours=1)
# Validation context key: addresses under .test are accepted (a staging worker).
_ALLOW_SPECIAL_DOMAINS = "allow_special_domains"
# Times outside this range are mistakes (seconds read as milliseconds, a
# "never" sentinel), and near year 9999 the arithmetic on them overflows:
# occurred_at + DEFAULT_RESET_LIFETIME, or a conversion to UTC.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC)

# What nearly every URL we get looks like; what _http_url accepts without urlsplit.
_PLAIN_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]*)?(?:[/?#][!-~]*)?")


def _no_control_characters(value: str) -> str:
    if value.isprintable():
        # One pass in C for the usual case: str.isprintable() is False for
        # every C* and Z* character but the ASCII space, so a printable string
        # passes the loop below (tests/unit/test_events_fast_paths.py).
        return value
    return _check_no_control_characters(value)


def _check_no_control_characters(value: str) -> str:
    # Category C* covers CR, LF, NUL, DEL, and the invisible format characters
    # (bidi overrides) that make a name lie about what it says.
    for char in value:
        category = unicodedata.category(char)
        # Zl/Zp (U+2028, U+2029) are line breaks to some mail and JSON software.
        if category.startswith("C") or category in ("Zl", "Zp"):
            raise ValueError(f"must not contain control characters (found {char!r})")
    return value


def _no_control_except_newlines(value: str) -> str:
    # Web forms submit text areas with CRLF; a reason only reaches bodies, never headers.
    _no_control_characters(value.replace("\r\n", " ").replace("\n", " ").replace("\t", " "))
    return value


def _email(value: str, info: ValidationInfo) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF")
    if "=?" in value:
        # RFC 5322 allows it, but mail software (Python's email package among
        # it) decodes encoded-words inside an address, and an address cannot be
        # written encoded the way a name is: "=?" could smuggle a line break.
        raise ValueError("must not contain '=?' (it starts an RFC 2047 encoded-word)")
    normalized = email_fast_path(value)
    if normalized is not None:
        return normalized
    # NOTIFIER_ALLOW_SPECIAL_DOMAINS: email-validator's test_environment lets
    # .test (RFC 6761) through, and nothing else changes with deliverability off.
    staging = bool(info.context and info.context.get(_ALLOW_SPECIAL_DOMAINS))
    try:
        # Syntax only: a worker must not block on DNS, and producers know their users.
        return validate_email(
            value, check_deliverability=False, test_environment=staging
        ).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def _phone(value: str) -> str:
    if not E164.fullmatch(value):
        raise ValueError(f"must be an E.164 number such as {EXAMPLE_PHONE} (no spaces, leading +)")
    normalized = phone_fast_path(value)
    if normalized is not None:
        return normalized
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a valid phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _http_url(value: str) -> str:
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    if _PLAIN_HTTP_URL.fullmatch(value):
        # Printable ASCII, scheme http(s), a non-empty host of letters, digits,
        # dots and hyphens, no "@" or brackets: every check of _check_http_url
        # passes, and they cost ten times this (tests/unit/test_events_fast_paths.py).
        return value
    return _check_http_url(value)


def _check_http_url(value: str) -> str:
    if any(char.isspace() or unicodedata.category(char).startswith("C") for char in value):
        raise ValueError("URL must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("URL must be absolute http or https")
    if not parts.hostname:
        raise ValueError("URL must have a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URL must not carry credentials")
    return value


def _in_range(value: datetime) -> datetime:
    # Aware datetimes compare by their UTC instant without converting, so this
    # cannot overflow even at datetime.max with a negative offset.
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise ValueError(f"must be between {_rfc3339(EARLIEST_TIME)} and {_rfc3339(LATEST_TIME)}")
    return value


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


SingleLine = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_control_characters),
]
# Names may hold "=?": compose writes any such text as encoded-words of its
# own, so a reader decodes exactly the characters given.
Name = SingleLine
EmailAddress = Annotated[
    str,
    StringConstraints(max_length=320),
    AfterValidator(_email),
    Field(examples=["ada@example.com"]),
]
PhoneNumber = Annotated[str, AfterValidator(_phone), Field(examples=["+447911123456"])]
HttpUrl = Annotated[
    str, AfterValidator(_http_url), Field(examples=["https://app.example.com/bookings/b-42"])
]
Moment = Annotated[AwareDatetime, AfterValidator(_in_range)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
Reason = Annotated[
    str, StringConstraints(max_length=1000), AfterValidator(_no_control_except_newlines)
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Person(_Model):
    """Someone we notify: a fan, an admin, a registering user."""

    name: Name
    email: EmailAddress
    phone: PhoneNumber | None = None


class EventInfo(_Model):
    """The booked event (named ``event`` in the contract)."""

    title: SingleLine
    date: date


class Slot(_Model):
    """The booked time slot, as ``HH:MM`` local times of the event."""

    start_time: ClockTime
    end_time: ClockTime


class _Envelope(_Model):
    event_id: UUID
    occurred_at: Moment
    schema_version: Literal[1]


class UserRegistered(_Envelope):
    """A new user signed up and must verify their address."""

    type: Literal["user.registered"]
    user: Person
    verification_url: HttpUrl


class BookingCreated(_Envelope):
    """A fan booked a slot at an admin's event."""

    type: Literal["booking.created"]
    booking_id: SingleLine
    fan: Person
    admin: Person
    event: EventInfo
    slot: Slot
    booking_url: HttpUrl
    admin_booking_url: HttpUrl


class BookingCancelled(_Envelope):
    """A booking was cancelled, by the fan or by the admin."""

    type: Literal["booking.cancelled"]
    booking_id: SingleLine
    fan: Person
    admin: Person
    event: EventInfo
    slot: Slot
    cancelled_by: Literal["fan", "admin"] | None = None
    reason: Reason | None = None


class PasswordResetRequested(_Envelope):
    """A user asked for a password reset link; ``expires_at`` defaults to one hour later."""

    type: Literal["password.reset_requested"]
    user: Person
    reset_url: HttpUrl
    expires_at: Moment | None = None

    @model_validator(mode="after")
    def _default_expiry(self) -> PasswordResetRequested:
        if self.expires_at is None:
            expires_at = self.occurred_at + DEFAULT_RESET_LIFETIME
            # The default is held to the range an explicit expires_at is: a job
            # carrying this event back from the queue is validated again.
            if expires_at >= LATEST_TIME:
                raise ValueError(
                    "expires_at (occurred_at + 1 hour by default) must be before "
                    f"{_rfc3339(LATEST_TIME)}"
                )
            # frozen model: set the derived default once, at validation time.
            object.__setattr__(self, "expires_at", expires_at)
        elif self.expires_at <= self.occurred_at:
            raise ValueError("expires_at must be later than occurred_at")
        return self


Event: TypeAlias = Annotated[
    UserRegistered | BookingCreated | BookingCancelled | PasswordResetRequested,
    Field(discriminator="type"),
]

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
_NAME_ADAPTER: TypeAdapter[str] = TypeAdapter(Name, config=ConfigDict(strict=True))
_EMAIL_ADAPTER: TypeAdapter[str] = TypeAdapter(EmailAddress, config=ConfigDict(strict=True))


# The contract's rules for single values, for compose: a delivery that skipped
# parse_event (a job on the queue, a replayed dead letter) is held to them too,
# so the two sides never disagree on what may be sent.


def person_name(value: str) -> str:
    """A person's name as the contract keeps it (outer blanks stripped); ValueError if invalid."""
    return _validate_one(_NAME_ADAPTER, value)


def email_address(value: str, *, allow_special_domains: bool = False) -> str:
    """An email address as the contract normalizes it; ValueError if invalid.

    ``allow_special_domains`` is ``NOTIFIER_ALLOW_SPECIAL_DOMAINS``: addresses under .test.
    """
    return _validate_one(_EMAIL_ADAPTER, value, allow_special_domains)


def header_text(value: str) -> str:
    """``value`` if the contract lets it into a single-line field; ValueError if not.

    One line, no control, format, surrogate or line-separator characters.
    """
    return _no_control_characters(value)


def _validate_one(
    adapter: TypeAdapter[str], value: str, allow_special_domains: bool = False
) -> str:
    try:
        return adapter.validate_python(value, context=_context(allow_special_domains))
    except ValidationError as exc:
        problems = (error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise ValueError("; ".join(problems)) from None


def _describe(exc: ValidationError, event_type: str) -> list[str]:
    messages = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        if loc and loc[0] == event_type:
            loc = loc[1:]  # the union's tag, not a field
        message = error["msg"].removeprefix("Value error, ")
        if "recursion limit exceeded" in message:
            message = "event is nested too deeply"
        messages.append(f"{'.'.join(loc) or 'event'}: {message}")
    return messages


def _context(allow_special_domains: bool) -> dict[str, bool] | None:
    return {_ALLOW_SPECIAL_DOMAINS: True} if allow_special_domains else None


def parse_event(raw: object, *, allow_special_domains: bool = False) -> Event:
    """Validate one event given as a dict (from Celery) or JSON text/bytes.

    Raises ``InvalidEventError`` listing every problem; never anything else for
    bad input, whatever its shape. ``allow_special_domains`` is
    ``NOTIFIER_ALLOW_SPECIAL_DOMAINS``: addresses under .test are accepted.
    """
    if isinstance(raw, (str, bytes, bytearray)):
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(data) > MAX_EVENT_BYTES * 4:
            # Don't even parse a huge document; pretty-printed JSON gets slack.
            raise InvalidEventError([_too_large(len(data))])
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEventError([f"event is not valid JSON: {exc}"]) from None
        except RecursionError:
            raise InvalidEventError(["event is nested too deeply"]) from None
    if not isinstance(raw, dict):
        raise InvalidEventError([f"event must be a JSON object, got {json_type(raw)}"])
    try:
        compact = json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidEventError([f"event is not JSON-serializable: {exc}"]) from None
    except RecursionError:
        raise InvalidEventError(["event is nested too deeply"]) from None
    if len(compact) > MAX_EVENT_BYTES:
        raise InvalidEventError([_too_large(len(compact))])

    event_type = raw.get("type")
    if event_type not in SUPPORTED_TYPES:
        supported = ", ".join(SUPPORTED_TYPES)
        what = "missing" if event_type is None else f"unknown type {event_type!r}"
        raise InvalidEventError([f"type: {what} (supported: {supported})"])
    version = raw.get("schema_version")
    if version is None:
        raise InvalidEventError(["schema_version: Field required (supported: 1)"])
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
        raise InvalidEventError(
            [f"schema_version: unsupported {version!r} (supported: {supported})"]
        )
    try:
        return _EVENT_ADAPTER.validate_json(compact, context=_context(allow_special_domains))
    except ValidationError as exc:
        raise InvalidEventError(_describe(exc, str(event_type))) from None


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _too_large(size: int) -> str:
    return f"event is {size:,} bytes as compact JSON; the limit is {MAX_EVENT_BYTES:,}"


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of every event type, for producers in other languages."""
    schema = _EVENT_ADAPTER.json_schema(mode="validation")
    schema["title"] = "notifier event (schema_version 1)"
    schema["description"] = (
        "One event published as the single argument of task notifier.handle_event "
        f"on queue notifier.events. At most {MAX_EVENT_BYTES} bytes as compact UTF-8 JSON."
    )
    return schema
