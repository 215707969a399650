"""Who gets what (docs/DESIGN.md §2 table): an event becomes deliveries, deterministically."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from notifier.events import parse_event
from notifier.planner import Delivery, delivery_id, plan
from tests import samples

FAN = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+447911123456"}
ADMIN = {"name": "Grace Hopper", "email": "grace@example.com", "phone": "+14155550123"}
NO_PHONE = {"phone": None}

Row = tuple[str, str, str, str]  # channel, template, role, address

# docs/DESIGN.md §2, with every person given a phone so every conditional row shows.
TABLE: dict[str, list[Row]] = {
    "user.registered": [
        ("email", "registration_confirmation", "user", "ada@example.com"),
    ],
    "booking.created": [
        ("email", "booking_confirmation_fan", "fan", "ada@example.com"),
        ("email", "booking_notification_admin", "admin", "grace@example.com"),
        ("sms", "booking_confirmation_fan", "fan", "+447911123456"),
        ("sms", "booking_notification_admin", "admin", "+14155550123"),
    ],
    "booking.cancelled": [
        ("email", "booking_cancellation", "fan", "ada@example.com"),
        ("email", "booking_cancellation_admin", "admin", "grace@example.com"),
    ],
    "password.reset_requested": [
        ("email", "password_reset", "user", "ada@example.com"),
    ],
}

EVENT_ID = "6f1c2b9e-4a51-4a0e-9b1e-0c7d2f3a8e11"
OTHER_EVENT_ID = "0b7e3c2a-1d4f-4c6e-8a9b-2f3e4d5c6b7a"


def raw_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A sample event of ``kind`` in which every person has a phone."""
    people: dict[str, Any] = (
        {"user": dict(FAN)}
        if kind in ("user.registered", "password.reset_requested")
        else {"fan": dict(FAN), "admin": dict(ADMIN)}
    )
    return samples.ALL[kind](**{**people, **fields})


def deliveries(raw: dict[str, Any]) -> list[Delivery]:
    return plan(parse_event(raw))


def rows(planned: list[Delivery]) -> list[Row]:
    return sorted((d.channel, d.template, d.role, d.address) for d in planned)


def ids(planned: list[Delivery]) -> list[str]:
    return sorted(d.delivery_id for d in planned)


# --- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), list(TABLE.items()), ids=list(TABLE))
def test_each_type_is_planned_exactly_as_the_design_table_says(
    kind: str, expected: list[Row]
) -> None:
    assert rows(deliveries(raw_event(kind))) == sorted(expected)


@pytest.mark.parametrize("kind", list(TABLE))
def test_every_delivery_names_its_event(kind: str) -> None:
    raw = raw_event(kind, event_id=EVENT_ID)

    for delivery in deliveries(raw):
        assert delivery.event_id == EVENT_ID
        assert delivery.event_type == kind


# --- SMS only for people with a phone -----------------------------------------------------


def test_booking_created_with_both_phones_plans_four_deliveries() -> None:
    planned = deliveries(raw_event("booking.created"))

    assert len(planned) == 4
    assert sorted(d.channel for d in planned) == ["email", "email", "sms", "sms"]


def test_booking_created_without_phones_plans_only_the_two_emails() -> None:
    raw = raw_event("booking.created", fan={**FAN, **NO_PHONE}, admin={**ADMIN, **NO_PHONE})

    planned = deliveries(raw)

    assert len(planned) == 2
    assert {d.channel for d in planned} == {"email"}


def test_booking_created_with_a_missing_phone_field_plans_no_sms_for_that_person() -> None:
    admin = {key: value for key, value in ADMIN.items() if key != "phone"}

    planned = deliveries(raw_event("booking.created", admin=admin))

    assert [(d.role, d.address) for d in planned if d.channel == "sms"] == [
        ("fan", "+447911123456")
    ]


def test_booking_created_texts_only_the_person_who_has_a_phone() -> None:
    planned = deliveries(raw_event("booking.created", fan={**FAN, **NO_PHONE}))

    assert [(d.role, d.address) for d in planned if d.channel == "sms"] == [
        ("admin", "+14155550123")
    ]


@pytest.mark.parametrize(
    "kind", ["user.registered", "booking.cancelled", "password.reset_requested"]
)
def test_types_without_sms_rows_send_no_sms_even_to_people_with_phones(kind: str) -> None:
    assert all(d.channel == "email" for d in deliveries(raw_event(kind)))


# --- delivery_id --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TABLE))
def test_planning_the_same_event_twice_gives_the_same_delivery_ids(kind: str) -> None:
    event = parse_event(raw_event(kind))

    assert ids(plan(event)) == ids(plan(event))


@pytest.mark.parametrize("kind", list(TABLE))
def test_a_reparsed_copy_of_the_event_gives_the_same_delivery_ids(kind: str) -> None:
    raw = raw_event(kind)

    first = plan(parse_event(raw))
    second = plan(parse_event(json.loads(json.dumps(raw))))

    assert ids(first) == ids(second)


@pytest.mark.parametrize("kind", list(TABLE))
def test_replanning_the_payload_a_delivery_carries_gives_the_same_deliveries(kind: str) -> None:
    planned = deliveries(raw_event(kind))

    replanned = plan(parse_event(planned[0].event))

    assert replanned == planned


@pytest.mark.parametrize("kind", list(TABLE))
def test_delivery_ids_are_unique_within_an_event(kind: str) -> None:
    planned = deliveries(raw_event(kind))

    assert len(set(ids(planned))) == len(planned)


def test_the_same_event_published_with_another_event_id_gets_new_delivery_ids() -> None:
    first = deliveries(raw_event("booking.created", event_id=EVENT_ID))
    second = deliveries(raw_event("booking.created", event_id=OTHER_EVENT_ID))

    assert not set(ids(first)) & set(ids(second))


def test_delivery_ids_do_not_depend_on_the_case_of_the_email_address() -> None:
    lower = deliveries(raw_event("user.registered", event_id=EVENT_ID))
    upper = deliveries(
        raw_event("user.registered", event_id=EVENT_ID, user={**FAN, "email": "ADA@EXAMPLE.COM"})
    )

    assert ids(lower) == ids(upper)


BASE: dict[str, Any] = {
    "event_id": EVENT_ID,
    "channel": "email",
    "template": "booking_confirmation_fan",
    "address": "ada@example.com",
}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"event_id": OTHER_EVENT_ID}, id="event_id"),
        pytest.param({"channel": "sms"}, id="channel"),
        pytest.param({"template": "booking_notification_admin"}, id="template"),
        pytest.param({"address": "grace@example.com"}, id="address"),
    ],
)
def test_delivery_id_differs_when_any_input_differs(change: dict[str, Any]) -> None:
    assert delivery_id(**{**BASE, **change}) != delivery_id(**BASE)


@pytest.mark.parametrize("address", ["ADA@EXAMPLE.COM", "Ada@Example.com", " ada@example.com "])
def test_delivery_id_ignores_address_case_and_surrounding_space(address: str) -> None:
    assert delivery_id(**{**BASE, "address": address}) == delivery_id(**BASE)


def test_delivery_id_is_a_stable_uuid_string() -> None:
    first = delivery_id(**BASE)

    assert first == delivery_id(**BASE)
    assert len(first) == 36
    assert first.count("-") == 4


# --- payload and deadline -----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TABLE))
def test_every_delivery_carries_the_full_event_payload(kind: str) -> None:
    event = parse_event(raw_event(kind))

    for delivery in plan(event):
        assert delivery.event == event.model_dump(mode="json")
        assert json.loads(json.dumps(delivery.event)) == delivery.event


@pytest.mark.parametrize("kind", list(TABLE))
def test_a_delivery_recipient_is_the_person_it_is_addressed_to(kind: str) -> None:
    for delivery in deliveries(raw_event(kind)):
        recipient = delivery.recipient
        key = "email" if delivery.channel == "email" else "phone"
        assert recipient[key] == delivery.address


def test_a_password_reset_delivery_is_not_sent_after_the_link_expires() -> None:
    raw = raw_event("password.reset_requested", occurred_at="2026-11-26T10:00:00Z")

    [delivery] = deliveries(raw)

    assert delivery.not_after is not None
    assert datetime.fromisoformat(delivery.not_after) == datetime.fromisoformat(
        "2026-11-26T10:00:00+00:00"
    ) + timedelta(hours=1)


def test_a_password_reset_delivery_keeps_an_explicit_expiry_as_its_deadline() -> None:
    raw = raw_event(
        "password.reset_requested",
        occurred_at="2026-11-26T10:00:00Z",
        expires_at="2026-11-26T10:20:00+00:00",
    )

    [delivery] = deliveries(raw)

    assert delivery.not_after is not None
    assert datetime.fromisoformat(delivery.not_after) == datetime.fromisoformat(
        "2026-11-26T10:20:00+00:00"
    )


@pytest.mark.parametrize("kind", ["user.registered", "booking.created", "booking.cancelled"])
def test_other_deliveries_have_no_deadline(kind: str) -> None:
    assert all(d.not_after is None for d in deliveries(raw_event(kind)))
