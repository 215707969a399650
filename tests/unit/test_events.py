"""The event contract (docs/DESIGN.md §2): what ``parse_event`` accepts, rejects, and why."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from notifier.errors import InvalidEventError
from notifier.events import (
    BookingCancelled,
    BookingCreated,
    PasswordResetRequested,
    UserRegistered,
    event_json_schema,
    parse_event,
)
from tests import samples

TYPES = ("user.registered", "booking.created", "booking.cancelled", "password.reset_requested")
MODELS = {
    "user.registered": UserRegistered,
    "booking.created": BookingCreated,
    "booking.cancelled": BookingCancelled,
    "password.reset_requested": PasswordResetRequested,
}
LIMIT = 64 * 1024

ENVELOPE = ("type", "event_id", "occurred_at", "schema_version")
REQUIRED = {
    "user.registered": (*ENVELOPE, "user", "verification_url"),
    "booking.created": (
        *ENVELOPE,
        "booking_id",
        "fan",
        "admin",
        "event",
        "slot",
        "booking_url",
        "admin_booking_url",
    ),
    "booking.cancelled": (*ENVELOPE, "booking_id", "fan", "admin", "event", "slot"),
    "password.reset_requested": (*ENVELOPE, "user", "reset_url"),
}
REQUIRED_CASES = [
    pytest.param(kind, field, id=f"{kind}-{field}")
    for kind, fields in REQUIRED.items()
    for field in fields
]
NESTED_REQUIRED = [
    ("user.registered", "user", "name"),
    ("user.registered", "user", "email"),
    ("password.reset_requested", "user", "email"),
    ("booking.created", "fan", "name"),
    ("booking.created", "fan", "email"),
    ("booking.created", "admin", "email"),
    ("booking.created", "event", "title"),
    ("booking.created", "event", "date"),
    ("booking.created", "slot", "start_time"),
    ("booking.cancelled", "slot", "end_time"),
]


def rejection(raw: object) -> list[str]:
    """The error messages ``parse_event`` gives for ``raw``, which it must reject."""
    with pytest.raises(InvalidEventError) as info:
        parse_event(raw)
    assert info.value.errors, "an InvalidEventError must say what is wrong"
    return info.value.errors


def fields_named(errors: list[str]) -> set[str]:
    """The field paths the messages start with (``user.email: not valid`` → ``user.email``)."""
    return {message.split(":", 1)[0] for message in errors}


def with_user(**person: Any) -> dict[str, Any]:
    """A ``user.registered`` event for ``samples.FAN`` with ``person`` replacing fields."""
    return samples.user_registered(user={**samples.FAN, **person})


def without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    """``event`` with the field at ``path`` removed (the input is not modified)."""
    copy: dict[str, Any] = json.loads(json.dumps(event))
    parent: dict[str, Any] = copy
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return copy


def compact_size(event: dict[str, Any]) -> int:
    return len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())


def event_of_size(size: int) -> dict[str, Any]:
    """A valid ``user.registered`` event padded by an unknown ``extra`` field to ``size`` bytes."""
    event = samples.user_registered(extra="")
    event["extra"] = "x" * (size - compact_size(event))
    assert compact_size(event) == size
    return event


def nested_lists(depth: int) -> list[Any]:
    root: list[Any] = []
    current = root
    for _ in range(depth - 1):
        child: list[Any] = []
        current.append(child)
        current = child
    return root


# --- every type ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
def test_a_valid_event_of_every_type_is_accepted(kind: str) -> None:
    event = parse_event(samples.ALL[kind]())

    assert isinstance(event, MODELS[kind])
    assert event.type == kind


@pytest.mark.parametrize("kind", TYPES)
def test_a_valid_event_is_accepted_as_json_text_and_bytes(kind: str) -> None:
    raw = samples.ALL[kind]()
    text = json.dumps(raw)

    assert parse_event(text) == parse_event(raw)
    assert parse_event(text.encode()) == parse_event(raw)


def test_samples_cover_every_supported_type() -> None:
    assert set(samples.ALL) == set(TYPES)


# --- missing fields -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "field"), REQUIRED_CASES)
def test_a_missing_required_field_is_rejected_naming_the_field(kind: str, field: str) -> None:
    errors = rejection(without(samples.ALL[kind](), field))

    assert field in fields_named(errors), errors


@pytest.mark.parametrize(
    ("kind", "parent", "field"),
    [pytest.param(*case, id="-".join(case)) for case in NESTED_REQUIRED],
)
def test_a_missing_nested_field_is_rejected_naming_its_path(
    kind: str, parent: str, field: str
) -> None:
    errors = rejection(without(samples.ALL[kind](), parent, field))

    assert f"{parent}.{field}" in fields_named(errors), errors


def test_every_problem_is_reported_not_only_the_first() -> None:
    event = without(without(samples.booking_created(), "booking_url"), "fan", "email")

    assert {"booking_url", "fan.email"} <= fields_named(rejection(event))


# --- type and schema_version --------------------------------------------------------------


def test_unknown_extra_fields_are_ignored() -> None:
    raw = samples.booking_created(priority="high", tags=["a", "b"])
    raw["fan"]["nickname"] = "Ada"
    raw["event"]["venue"] = {"name": "Blue Note"}

    event = parse_event(raw)

    assert isinstance(event, BookingCreated)
    assert "priority" not in event.model_dump()
    assert "nickname" not in event.fan.model_dump()


def test_unknown_type_is_rejected_with_the_supported_types() -> None:
    errors = rejection(samples.user_registered(type="user.deleted"))

    message = " ".join(errors)
    assert "user.deleted" in message
    for kind in TYPES:
        assert kind in message


def test_missing_type_is_rejected_with_the_supported_types() -> None:
    errors = rejection(without(samples.user_registered(), "type"))

    assert "type" in fields_named(errors)
    for kind in TYPES:
        assert kind in " ".join(errors)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(samples.user_registered(schema_version=2), id="2"),
        pytest.param(samples.user_registered(schema_version="1"), id="string-1"),
        pytest.param(samples.user_registered(schema_version=1.0), id="float-1.0"),
        pytest.param(samples.user_registered(schema_version=True), id="true"),
        pytest.param(without(samples.user_registered(), "schema_version"), id="missing"),
    ],
)
def test_an_unsupported_schema_version_is_rejected_listing_the_supported_ones(
    event: dict[str, Any],
) -> None:
    errors = rejection(event)

    assert "schema_version" in fields_named(errors)
    assert re.search(r"supported: 1\b", " ".join(errors)), errors


# --- shape of the input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([samples.user_registered()], id="list"),
        pytest.param('"user.registered"', id="json-string"),
        pytest.param("42", id="json-number"),
        pytest.param("[]", id="json-array"),
        pytest.param("null", id="json-null"),
        pytest.param(42, id="number"),
        pytest.param(None, id="none"),
    ],
)
def test_an_event_that_is_not_an_object_is_rejected(raw: object) -> None:
    errors = rejection(raw)

    assert "object" in " ".join(errors)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("{not json", id="broken-text"),
        pytest.param("", id="empty-text"),
        pytest.param(b"\xff\xfe{}", id="not-utf8-bytes"),
        pytest.param(json.dumps(samples.user_registered())[:-1], id="truncated"),
    ],
)
def test_invalid_json_text_is_rejected(raw: str | bytes) -> None:
    errors = rejection(raw)

    assert "JSON" in " ".join(errors)


# --- people: email ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("ada.example.com", id="no-at"),
        pytest.param("ada@example.com\r\nBcc: all@example.com", id="crlf-header-injection"),
        pytest.param("ada\r@example.com", id="cr"),
        pytest.param("ada\n@example.com", id="lf"),
        pytest.param("ada lovelace@example.com", id="space-in-local-part"),
        pytest.param("ada@exa mple.com", id="space-in-domain"),
        pytest.param("", id="empty"),
        pytest.param("ada@", id="no-domain"),
    ],
)
def test_an_invalid_email_is_rejected(email: str) -> None:
    errors = rejection(with_user(email=email))

    assert "user.email" in fields_named(errors)


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("=?utf-8?q?=0D=0ABcc:_evil?=@example.com", id="encoded-word-local-part"),
        pytest.param("ada=?x@example.com", id="encoded-word-opener"),
    ],
)
def test_an_email_with_an_encoded_word_opener_is_rejected(email: str) -> None:
    # Valid RFC 5322 atext, but mail software (Python's email package among
    # them) decodes encoded-words inside an address, and an address cannot be
    # written encoded: compose could not send to it.
    errors = rejection(with_user(email=email))

    assert "user.email" in fields_named(errors)
    assert "=?" in " ".join(errors)


@pytest.mark.parametrize("email", ["ada@mail.test", "ada@test"])
def test_an_address_under_test_is_rejected_by_default(email: str) -> None:
    errors = rejection(with_user(email=email))

    assert "user.email" in fields_named(errors)


@pytest.mark.parametrize("email", ["ada@mail.test", "ada@staging.example.test", "ada@test"])
def test_an_address_under_test_is_accepted_when_special_domains_are_allowed(email: str) -> None:
    event = parse_event(with_user(email=email), allow_special_domains=True)

    assert isinstance(event, UserRegistered)
    assert event.user.email == email


@pytest.mark.parametrize(
    "email", ["ada@mail.local", "ada@localhost", "ada@x.onion", "ada@x.invalid", "ada@x.arpa"]
)
def test_other_special_use_domains_stay_rejected_when_special_domains_are_allowed(
    email: str,
) -> None:
    # .test is RFC 6761's name for testing; the others name real networks
    # (mDNS, Tor) or nothing at all.
    with pytest.raises(InvalidEventError) as info:
        parse_event(with_user(email=email), allow_special_domains=True)

    assert "user.email" in fields_named(info.value.errors)


def test_an_email_is_normalized_with_its_domain_lower_cased() -> None:
    event = parse_event(with_user(email="ada@Example.COM"))

    assert isinstance(event, UserRegistered)
    assert event.user.email.rsplit("@", 1)[1] == "example.com"


# --- people: phone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        pytest.param("07911123456", id="national-format"),
        pytest.param("+44 7911 123456", id="with-spaces"),
        pytest.param("+4479111234AB", id="with-letters"),
        pytest.param("+447700900123", id="uk-drama-range"),
        pytest.param("+4479", id="too-short"),
        pytest.param("", id="empty"),
    ],
)
def test_a_phone_not_in_valid_e164_form_is_rejected(phone: str) -> None:
    errors = rejection(with_user(phone=phone))

    assert "user.phone" in fields_named(errors)


@pytest.mark.parametrize("phone", ["+14155550123", "+447911123456"])
def test_a_valid_e164_phone_is_accepted(phone: str) -> None:
    event = parse_event(with_user(phone=phone))

    assert isinstance(event, UserRegistered)
    assert event.user.phone == phone


def test_a_null_phone_is_accepted() -> None:
    event = parse_event(with_user(phone=None))

    assert isinstance(event, UserRegistered)
    assert event.user.phone is None


def test_a_missing_phone_is_accepted_as_none() -> None:
    event = parse_event(without(samples.user_registered(), "user", "phone"))

    assert isinstance(event, UserRegistered)
    assert event.user.phone is None


# --- people: name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("a" * 201, id="201-chars"),
        pytest.param("Ada\rLovelace", id="cr"),
        pytest.param("Ada\nLovelace", id="lf"),
        pytest.param("Ada\x00Lovelace", id="nul"),
        pytest.param("Ada\u202eecalevoL", id="bidi-override"),
    ],
)
def test_an_invalid_name_is_rejected(name: str) -> None:
    errors = rejection(with_user(name=name))

    assert "user.name" in fields_named(errors)


@pytest.mark.parametrize("name", ["Zoë Ångström", "李雷", "a" * 200])
def test_a_name_of_up_to_200_characters_in_any_script_is_accepted(name: str) -> None:
    event = parse_event(with_user(name=name))

    assert isinstance(event, UserRegistered)
    assert event.user.name == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Zoë =? not a word", id="encoded-word-opener"),
        pytest.param("=?utf-8?q?=0D=0ABcc:_evil@attacker.example?=", id="q-encoded-word"),
        pytest.param("Ada ?= Lovelace =?", id="markers-in-any-order"),
    ],
)
def test_a_name_that_looks_like_an_encoded_word_is_accepted_as_it_is(name: str) -> None:
    # compose writes such a name as an encoded-word of its own, so a reader
    # decodes exactly these characters (tests/unit/test_validation_agrees_with_compose.py).
    event = parse_event(with_user(name=name))

    assert isinstance(event, UserRegistered)
    assert event.user.name == name


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
        pytest.param("/verify?token=t1", id="relative"),
        pytest.param("ftp://app.example.com/verify", id="ftp"),
        pytest.param("https://u:p@app.example.com/verify", id="credentials"),
        pytest.param("https://u@app.example.com/verify", id="username"),
        pytest.param("https://app.example.com/" + "v" * (2049 - 24), id="2049-chars"),
        pytest.param("https://app.example.com/verify me", id="space"),
        pytest.param("https://app.example.com/verify\nSet-Cookie: x=1", id="newline"),
        pytest.param("https:///verify", id="no-host"),
        pytest.param("", id="empty"),
    ],
)
def test_an_unsafe_or_malformed_url_is_rejected(url: str) -> None:
    errors = rejection(samples.user_registered(verification_url=url))

    assert "verification_url" in fields_named(errors)


@pytest.mark.parametrize(
    "url",
    [
        "http://app.example.com/verify?token=t1",
        "https://app.example.com/verify?token=t1",
        "https://app.example.com:8443/verify#top",
        "https://app.example.com/" + "v" * (2048 - 24),
    ],
)
def test_an_absolute_http_or_https_url_up_to_2048_characters_is_accepted(url: str) -> None:
    event = parse_event(samples.user_registered(verification_url=url))

    assert isinstance(event, UserRegistered)
    assert event.verification_url == url


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        pytest.param(samples.booking_created, "booking_url", id="booking_url"),
        pytest.param(samples.booking_created, "admin_booking_url", id="admin_booking_url"),
        pytest.param(samples.password_reset_requested, "reset_url", id="reset_url"),
    ],
)
def test_every_url_field_is_validated(factory: Callable[..., dict[str, Any]], field: str) -> None:
    errors = rejection(factory(**{field: "javascript:alert(1)"}))

    assert field in fields_named(errors)


# --- dates and times ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "occurred_at",
    [
        pytest.param("2026-11-26T10:00:00", id="no-time-zone"),
        pytest.param(1764151200, id="number"),
        pytest.param("yesterday", id="words"),
    ],
)
def test_occurred_at_must_be_an_rfc3339_time_with_a_zone(occurred_at: object) -> None:
    errors = rejection(samples.user_registered(occurred_at=occurred_at))

    assert "occurred_at" in fields_named(errors)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize(
    "occurred_at",
    [
        pytest.param("9999-12-31T23:30:00Z", id="year-9999"),
        pytest.param("9999-01-01T00:00:00Z", id="upper-bound"),
        pytest.param("0001-01-01T00:00:00+01:00", id="year-1-ahead-of-utc"),
        pytest.param("1969-12-31T23:59:59Z", id="before-1970"),
    ],
)
def test_occurred_at_outside_1970_to_9999_is_rejected_naming_the_field(
    kind: str, occurred_at: str
) -> None:
    errors = rejection(samples.ALL[kind](occurred_at=occurred_at))

    assert "occurred_at" in fields_named(errors)
    assert "1970-01-01T00:00:00Z" in " ".join(errors)


@pytest.mark.parametrize(
    "expires_at",
    [
        pytest.param("9999-12-31T23:59:59-05:00", id="past-9999-in-utc"),
        pytest.param("9999-06-01T00:00:00Z", id="year-9999"),
    ],
)
def test_a_reset_expiring_after_the_range_is_rejected_naming_expires_at(expires_at: str) -> None:
    errors = rejection(samples.password_reset_requested(expires_at=expires_at))

    assert "expires_at" in fields_named(errors)


@pytest.mark.parametrize("occurred_at", ["1970-01-01T00:00:00Z", "9998-12-31T23:59:59Z"])
def test_occurred_at_at_either_end_of_the_range_is_accepted(occurred_at: str) -> None:
    event = parse_event(samples.user_registered(occurred_at=occurred_at))

    assert event.occurred_at == datetime.fromisoformat(occurred_at)


def test_a_reset_whose_default_expiry_falls_past_the_range_is_rejected() -> None:
    errors = rejection(samples.password_reset_requested(occurred_at="9998-12-31T23:30:00Z"))

    assert "expires_at" in " ".join(errors)


def test_occurred_at_with_an_offset_is_accepted() -> None:
    event = parse_event(samples.user_registered(occurred_at="2026-11-26T11:00:00+01:00"))

    assert event.occurred_at == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(20261201, id="number"),
        pytest.param("01/12/2026", id="dd-mm-yyyy"),
        pytest.param("2026-13-01", id="month-13"),
    ],
)
def test_the_event_date_must_be_an_iso_date(value: object) -> None:
    errors = rejection(samples.booking_created(event={"title": "Jazz Night", "date": value}))

    assert "event.date" in fields_named(errors)


@pytest.mark.parametrize("field", ["start_time", "end_time"])
@pytest.mark.parametrize("value", ["7pm", "24:00", "19:5", "19:60", "1900", 1900])
def test_slot_times_must_be_hh_mm(field: str, value: object) -> None:
    slot: dict[str, object] = {"start_time": "19:00", "end_time": "19:30", field: value}

    errors = rejection(samples.booking_created(slot=slot))

    assert f"slot.{field}" in fields_named(errors)


@pytest.mark.parametrize("value", ["00:00", "09:05", "23:59"])
def test_slot_times_from_00_00_to_23_59_are_accepted(value: str) -> None:
    event = parse_event(samples.booking_created(slot={"start_time": value, "end_time": value}))

    assert isinstance(event, BookingCreated)
    assert event.slot.start_time == value


# --- size ---------------------------------------------------------------------------------


def test_an_event_over_64_kib_is_rejected_with_the_limit_in_the_message() -> None:
    errors = rejection(event_of_size(LIMIT + 1))

    assert re.search(r"65,?536", " ".join(errors)), errors


def test_an_event_of_exactly_64_kib_is_accepted_extra_fields_included() -> None:
    event = parse_event(event_of_size(LIMIT))

    assert isinstance(event, UserRegistered)


def test_the_size_limit_applies_to_json_text_too() -> None:
    errors = rejection(json.dumps(event_of_size(LIMIT + 1)))

    assert re.search(r"65,?536", " ".join(errors)), errors


def test_a_huge_json_text_is_rejected_with_the_limit_in_the_message() -> None:
    errors = rejection(json.dumps(samples.user_registered(extra="x" * (10 * LIMIT))))

    assert re.search(r"65,?536", " ".join(errors)), errors


def test_size_counts_utf8_bytes_not_characters() -> None:
    event = samples.user_registered(extra="")
    # "é" is two bytes in UTF-8: this many characters fit by count but not by bytes.
    event["extra"] = "é" * ((LIMIT - compact_size(event)) // 2 + 1)

    rejection(event)


# --- password reset -----------------------------------------------------------------------


def test_a_reset_expires_one_hour_after_it_occurred_by_default() -> None:
    event = parse_event(samples.password_reset_requested())

    assert isinstance(event, PasswordResetRequested)
    assert event.expires_at == event.occurred_at + timedelta(hours=1)


def test_an_explicit_reset_expiry_is_kept() -> None:
    event = parse_event(
        samples.password_reset_requested(
            occurred_at="2026-11-26T10:00:00Z", expires_at="2026-11-26T10:15:00Z"
        )
    )

    assert isinstance(event, PasswordResetRequested)
    assert event.expires_at == datetime(2026, 11, 26, 10, 15, tzinfo=UTC)


def test_a_reset_expiring_before_it_occurred_is_rejected() -> None:
    errors = rejection(
        samples.password_reset_requested(
            occurred_at="2026-11-26T10:00:00Z", expires_at="2026-11-26T09:00:00Z"
        )
    )

    assert "expires_at" in " ".join(errors)


def test_a_reset_expiry_without_a_time_zone_is_rejected() -> None:
    errors = rejection(
        samples.password_reset_requested(
            occurred_at="2026-11-26T10:00:00Z", expires_at="2026-11-26T11:00:00"
        )
    )

    assert "expires_at" in fields_named(errors)


# --- cancellation -------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["fan", "admin", None])
def test_cancelled_by_may_be_fan_admin_or_absent(who: str | None) -> None:
    event = parse_event(samples.booking_cancelled(cancelled_by=who))

    assert isinstance(event, BookingCancelled)
    assert event.cancelled_by == who


@pytest.mark.parametrize("who", ["system", "Fan", ""])
def test_cancelled_by_anyone_else_is_rejected(who: str) -> None:
    errors = rejection(samples.booking_cancelled(cancelled_by=who))

    assert "cancelled_by" in fields_named(errors)


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("Sorry,\nthe venue flooded.\n\nSee you next time.", id="lf"),
        pytest.param("Sorry,\r\nthe venue flooded.", id="crlf-from-a-web-form"),
    ],
)
def test_a_cancellation_reason_may_span_several_lines(reason: str) -> None:
    event = parse_event(samples.booking_cancelled(reason=reason))

    assert isinstance(event, BookingCancelled)
    assert event.reason is not None
    assert event.reason.splitlines() == reason.splitlines()


def test_a_cancellation_reason_with_nul_is_rejected() -> None:
    errors = rejection(samples.booking_cancelled(reason="Sorry\x00"))

    assert "reason" in fields_named(errors)


# --- hostile input ------------------------------------------------------------------------


def test_deeply_nested_junk_in_an_extra_field_is_rejected_not_a_crash() -> None:
    rejection(samples.user_registered(extra=nested_lists(10_000)))


def test_deeply_nested_junk_in_json_text_is_rejected_not_a_crash() -> None:
    text = json.dumps(samples.user_registered())[:-1] + ', "extra": '
    text += "[" * 10_000 + "]" * 10_000 + "}"

    rejection(text)


def test_a_value_json_cannot_encode_is_rejected_not_a_crash() -> None:
    rejection(samples.user_registered(extra={1, 2}))


def test_a_wrongly_typed_field_is_rejected_not_coerced() -> None:
    errors = rejection(samples.booking_created(booking_id=42))

    assert "booking_id" in fields_named(errors)


# --- JSON Schema --------------------------------------------------------------------------


def test_the_json_schema_describes_all_four_types() -> None:
    schema = event_json_schema()

    assert set(schema["discriminator"]["mapping"]) == set(TYPES)
    assert len(schema["oneOf"]) == len(TYPES)


def test_the_json_schema_is_json_serializable() -> None:
    text = json.dumps(event_json_schema())

    assert json.loads(text) == event_json_schema()
