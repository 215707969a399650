"""Renderer: the seed's subjects and wording, strict variables, escaping, overrides, caching."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from notifier.errors import ConfigurationError, PermanentError
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from notifier.templates import Renderer, describe_lifetime
from tests import samples

HOSTILE_NAME = "<script>alert(1)</script> & co"
ESCAPED_NAME = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
ADMIN_WITH_PHONE = {**samples.ADMIN, "phone": "+14155550123"}


def delivery_for(event: dict[str, Any], channel: str, template: str) -> Delivery:
    """The delivery the planner makes for this channel and template."""
    (chosen,) = [
        d for d in plan(parse_event(event)) if d.channel == channel and d.template == template
    ]
    return chosen


@pytest.fixture
def renderer() -> Renderer:
    return Renderer()


def occurred_at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


EMAILS = [
    pytest.param(
        samples.user_registered,
        "registration_confirmation",
        "Welcome to Appointment Booking System",
        id="registration_confirmation",
    ),
    pytest.param(
        samples.booking_created,
        "booking_confirmation_fan",
        "Booking Confirmation",
        id="booking_confirmation_fan",
    ),
    pytest.param(
        samples.booking_created,
        "booking_notification_admin",
        "New Booking for Your Event",
        id="booking_notification_admin",
    ),
    pytest.param(
        samples.booking_cancelled,
        "booking_cancellation",
        "Booking Cancellation",
        id="booking_cancellation",
    ),
    pytest.param(
        samples.booking_cancelled,
        "booking_cancellation_admin",
        "Booking Cancelled for Your Event",
        id="booking_cancellation_admin",
    ),
    pytest.param(
        samples.password_reset_requested, "password_reset", "Password Reset", id="password_reset"
    ),
]

SMS = [
    pytest.param(
        "booking_confirmation_fan",
        "Appointment Booking Confirmation\n"
        "Hello Ada Lovelace,\n"
        "Your booking for Jazz Night on 2026-12-01 at 19:00 is confirmed.\n"
        "View details: https://app.example.com/bookings/b-42",
        id="booking_confirmation_fan",
    ),
    pytest.param(
        "booking_notification_admin",
        "New Booking Alert\n"
        "Hello Grace Hopper,\n"
        'A new booking was made for "Jazz Night" on 2026-12-01 at 19:00.\n'
        "Fan: Ada Lovelace\n"
        "View details: https://admin.example.com/bookings/b-42",
        id="booking_notification_admin",
    ),
]


@pytest.mark.parametrize(("make_event", "template", "subject"), EMAILS)
def test_every_email_renders_with_the_seed_subject(
    renderer: Renderer,
    make_event: Callable[..., dict[str, Any]],
    template: str,
    subject: str,
) -> None:
    delivery = delivery_for(make_event(), "email", template)

    rendered = renderer.email(template, renderer.context(delivery))

    assert rendered.subject == subject
    assert rendered.text.strip()
    assert "<html" in rendered.html


@pytest.mark.parametrize(("make_event", "template", "subject"), EMAILS)
def test_every_email_greets_its_recipient_by_name(
    renderer: Renderer,
    make_event: Callable[..., dict[str, Any]],
    template: str,
    subject: str,
) -> None:
    delivery = delivery_for(make_event(), "email", template)

    rendered = renderer.email(template, renderer.context(delivery))

    name = delivery.recipient["name"]
    assert name in rendered.text
    assert name in rendered.html


@pytest.mark.parametrize(("template", "expected"), SMS)
def test_every_sms_renders_the_seed_wording(
    renderer: Renderer, template: str, expected: str
) -> None:
    event = samples.booking_created(admin=dict(ADMIN_WITH_PHONE))
    delivery = delivery_for(event, "sms", template)

    assert renderer.sms(template, renderer.context(delivery)) == expected


def _everyone_named(make_event: Callable[..., dict[str, Any]], name: str) -> dict[str, Any]:
    event = make_event()
    for role in ("user", "fan", "admin"):
        if role in event:
            event[role] = {**event[role], "name": name}
    return event


@pytest.mark.parametrize(("make_event", "template", "subject"), EMAILS)
def test_html_escapes_a_name_that_looks_like_markup(
    renderer: Renderer,
    make_event: Callable[..., dict[str, Any]],
    template: str,
    subject: str,
) -> None:
    delivery = delivery_for(_everyone_named(make_event, HOSTILE_NAME), "email", template)

    rendered = renderer.email(template, renderer.context(delivery))

    assert HOSTILE_NAME not in rendered.html
    assert "<script>" not in rendered.html
    assert ESCAPED_NAME in rendered.html


@pytest.mark.parametrize(("make_event", "template", "subject"), EMAILS)
def test_text_part_keeps_a_name_that_looks_like_markup_as_written(
    renderer: Renderer,
    make_event: Callable[..., dict[str, Any]],
    template: str,
    subject: str,
) -> None:
    delivery = delivery_for(_everyone_named(make_event, HOSTILE_NAME), "email", template)

    rendered = renderer.email(template, renderer.context(delivery))

    assert HOSTILE_NAME in rendered.text
    assert "&lt;" not in rendered.text


@pytest.mark.parametrize(("template", "expected"), SMS)
def test_sms_keeps_a_name_that_looks_like_markup_as_written(
    renderer: Renderer, template: str, expected: str
) -> None:
    event = _everyone_named(samples.booking_created, HOSTILE_NAME)
    event["admin"]["phone"] = ADMIN_WITH_PHONE["phone"]
    delivery = delivery_for(event, "sms", template)

    body = renderer.sms(template, renderer.context(delivery))

    assert HOSTILE_NAME in body
    assert "&lt;" not in body


def test_sms_strips_control_characters_but_keeps_newlines(renderer: Renderer) -> None:
    # The event model refuses control characters; a delivery stored before that
    # rule (or replayed from an old dead letter) must still not smuggle them out.
    delivery = delivery_for(samples.booking_created(), "sms", "booking_confirmation_fan")
    event = {**delivery.event, "fan": {**delivery.event["fan"], "name": "Ada\x07\x1b[2J\r\u202eX"}}
    dirty = delivery.model_copy(update={"event": event})

    body = renderer.sms("booking_confirmation_fan", renderer.context(dirty))

    assert "Hello Ada[2JX," in body
    assert body.count("\n") == 3
    assert [c for c in body if c != "\n" and unicodedata.category(c).startswith("C")] == []


def test_admin_email_says_not_provided_when_the_fan_has_no_phone(renderer: Renderer) -> None:
    event = samples.booking_created(fan={**samples.FAN, "phone": None})
    delivery = delivery_for(event, "email", "booking_notification_admin")

    rendered = renderer.email("booking_notification_admin", renderer.context(delivery))

    assert "Fan Phone: not provided" in rendered.text
    assert "not provided" in rendered.html


def test_admin_email_shows_the_fan_phone_when_given(renderer: Renderer) -> None:
    delivery = delivery_for(samples.booking_created(), "email", "booking_notification_admin")

    rendered = renderer.email("booking_notification_admin", renderer.context(delivery))

    assert "Fan Phone: +447911123456" in rendered.text
    assert "+447911123456" in rendered.html
    assert "not provided" not in rendered.text


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        pytest.param(timedelta(minutes=59, seconds=57), "1 hour", id="59m57s-rounds-up"),
        pytest.param(timedelta(hours=1), "1 hour", id="1h"),
        pytest.param(timedelta(minutes=30), "30 minutes", id="30m"),
        pytest.param(timedelta(minutes=1), "1 minute", id="1m"),
        pytest.param(timedelta(minutes=90), "1 hour 30 minutes", id="90m"),
        pytest.param(timedelta(hours=5), "5 hours", id="5h"),
        pytest.param(timedelta(days=2), "2 days", id="2d"),
        pytest.param(timedelta(days=1, minutes=1), "1 day 1 minute", id="1d1m"),
    ],
)
def test_describe_lifetime(remaining: timedelta, expected: str) -> None:
    assert describe_lifetime(remaining) == expected


@pytest.mark.parametrize(
    ("elapsed", "phrase"),
    [
        pytest.param(timedelta(seconds=1), "expire in 1 hour.", id="right-away"),
        pytest.param(timedelta(minutes=30), "expire in 30 minutes.", id="half-an-hour-later"),
    ],
)
def test_reset_email_states_the_remaining_lifetime(
    renderer: Renderer, elapsed: timedelta, phrase: str
) -> None:
    event = samples.password_reset_requested()
    delivery = delivery_for(event, "email", "password_reset")

    context = renderer.context(delivery, now=occurred_at(event) + elapsed)
    rendered = renderer.email("password_reset", context)

    assert phrase in rendered.text
    assert phrase in rendered.html


def test_reset_email_uses_the_events_own_expiry(renderer: Renderer) -> None:
    event = samples.password_reset_requested()
    event["expires_at"] = (occurred_at(event) + timedelta(days=2)).isoformat()
    delivery = delivery_for(event, "email", "password_reset")

    context = renderer.context(delivery, now=occurred_at(event))
    rendered = renderer.email("password_reset", context)

    assert "expire in 2 days." in rendered.text


def test_missing_variable_is_a_permanent_error(tmp_path: Path) -> None:
    # The seed's flat names are what a value means, not what it is called.
    write(tmp_path, "email/booking_confirmation_fan.txt", "Hello {{ fan_name }}")
    renderer = Renderer(tmp_path)
    delivery = delivery_for(samples.booking_created(), "email", "booking_confirmation_fan")

    with pytest.raises(PermanentError, match="fan_name"):
        renderer.email("booking_confirmation_fan", renderer.context(delivery))


def test_missing_attribute_is_a_permanent_error(tmp_path: Path) -> None:
    write(tmp_path, "sms/booking_confirmation_fan.txt", "Hi {{ fan.nickname }}")
    renderer = Renderer(tmp_path)
    delivery = delivery_for(samples.booking_created(), "sms", "booking_confirmation_fan")

    with pytest.raises(PermanentError, match="nickname"):
        renderer.sms("booking_confirmation_fan", renderer.context(delivery))


def test_override_dir_takes_precedence_over_packaged_templates(tmp_path: Path) -> None:
    write(tmp_path, "email/booking_confirmation_fan.subject", "You're in, {{ fan.name }}")
    renderer = Renderer(tmp_path)
    delivery = delivery_for(samples.booking_created(), "email", "booking_confirmation_fan")

    rendered = renderer.email("booking_confirmation_fan", renderer.context(delivery))

    assert rendered.subject == "You're in, Ada Lovelace"


def test_override_dir_falls_back_to_packaged_templates_for_the_rest(tmp_path: Path) -> None:
    write(tmp_path, "email/booking_confirmation_fan.subject", "Custom")
    renderer = Renderer(tmp_path)
    delivery = delivery_for(samples.booking_created(), "email", "booking_confirmation_fan")

    rendered = renderer.email("booking_confirmation_fan", renderer.context(delivery))

    assert "Your booking has been confirmed" in rendered.text
    assert "Your booking has been confirmed" in rendered.html


def test_override_dir_that_does_not_exist_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="NOTIFIER_TEMPLATE_DIR"):
        Renderer(tmp_path / "missing")


def test_subject_that_renders_a_line_feed_is_a_permanent_error(tmp_path: Path) -> None:
    # reason may hold newlines; a subject built from it must not become two headers.
    write(tmp_path, "email/booking_cancellation.subject", "Cancelled: {{ reason }}")
    renderer = Renderer(tmp_path)
    event = samples.booking_cancelled(reason="sorry\nBcc: victim@example.com")
    delivery = delivery_for(event, "email", "booking_cancellation")

    with pytest.raises(PermanentError, match="one line"):
        renderer.email("booking_cancellation", renderer.context(delivery))


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"], ids=["LF", "CR", "CRLF"])
def test_subject_with_any_line_break_is_a_permanent_error(tmp_path: Path, newline: str) -> None:
    # The event contract refuses CR in reason; a stored delivery is not re-validated.
    write(tmp_path, "email/booking_cancellation.subject", "Cancelled: {{ reason }}")
    renderer = Renderer(tmp_path)
    delivery = delivery_for(samples.booking_cancelled(), "email", "booking_cancellation")
    event = {**delivery.event, "reason": f"sorry{newline}Bcc: victim@example.com"}
    tampered = delivery.model_copy(update={"event": event})

    with pytest.raises(PermanentError, match="one line"):
        renderer.email("booking_cancellation", renderer.context(tampered))


def test_templates_are_compiled_once_and_cached(renderer: Renderer) -> None:
    environment = renderer.environment

    first = environment.get_template("email/booking_confirmation_fan.html")
    second = environment.get_template("email/booking_confirmation_fan.html")

    assert first is second


def test_environment_is_made_once_per_renderer(renderer: Renderer) -> None:
    environment = renderer.environment
    delivery = delivery_for(samples.booking_created(), "email", "booking_confirmation_fan")

    renderer.email("booking_confirmation_fan", renderer.context(delivery))
    renderer.email("booking_confirmation_fan", renderer.context(delivery))

    assert renderer.environment is environment


def test_a_template_is_not_reread_after_its_first_use(tmp_path: Path) -> None:
    write(tmp_path, "email/booking_confirmation_fan.subject", "First")
    renderer = Renderer(tmp_path)
    delivery = delivery_for(samples.booking_created(), "email", "booking_confirmation_fan")
    context = renderer.context(delivery)
    renderer.email("booking_confirmation_fan", context)

    write(tmp_path, "email/booking_confirmation_fan.subject", "Second")

    assert renderer.email("booking_confirmation_fan", context).subject == "First"
