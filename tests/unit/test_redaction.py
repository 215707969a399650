"""Redaction of personal data for logs and dead-letter listings."""

from __future__ import annotations

import pytest

from notifier.redaction import (
    EXAMPLE_PHONE,
    redact_address,
    redact_email,
    redact_phone,
    redact_text,
)

# --- one address --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "redacted"),
    [
        ("ada@example.com", "a***@example.com"),
        ("grace.hopper@mail.example.co.uk", "g***@mail.example.co.uk"),
        ("a@example.com", "a***@example.com"),
    ],
)
def test_an_email_keeps_its_first_character_and_its_domain(address: str, redacted: str) -> None:
    assert redact_email(address) == redacted


def test_an_email_redaction_hides_the_local_part() -> None:
    assert "lovelace" not in redact_email("ada.lovelace@example.com")


def test_something_that_is_not_an_email_is_fully_redacted() -> None:
    assert redact_email("ada-at-example.com") == "***"


@pytest.mark.parametrize(
    ("number", "redacted"),
    [
        ("+447911123456", "+44*******456"),
        ("+14155550123", "+14******123"),
    ],
)
def test_a_phone_keeps_its_country_prefix_and_last_three_digits(number: str, redacted: str) -> None:
    assert redact_phone(number) == redacted


def test_a_very_short_phone_is_fully_masked() -> None:
    assert redact_phone("+12345") == "+*****"


@pytest.mark.parametrize(
    ("address", "redacted"),
    [
        pytest.param("ada@example.com", "a***@example.com", id="email"),
        pytest.param("+447911123456", "+44*******456", id="phone"),
        pytest.param("ada", "***", id="neither"),
        pytest.param("", "***", id="empty"),
    ],
)
def test_redact_address_redacts_emails_and_phones_alike(address: str, redacted: str) -> None:
    assert redact_address(address) == redacted


# --- free text ----------------------------------------------------------------------------


def test_an_email_in_free_text_is_redacted_in_place() -> None:
    text = "550 5.1.1 <ada@example.com>: Recipient address rejected"

    assert redact_text(text) == "550 5.1.1 <a***@example.com>: Recipient address rejected"


def test_a_phone_in_free_text_is_redacted_in_place() -> None:
    text = "The 'To' number +447911123456 is not a valid phone number."

    assert redact_text(text) == "The 'To' number +44*******456 is not a valid phone number."


def test_the_example_number_of_our_own_messages_is_left_whole() -> None:
    # In Ofcom's range for drama (020 7946 0xxx): nobody's number, and the
    # hint "such as +44*******123" would be no hint at all.
    text = f"user.phone: must be an E.164 number such as {EXAMPLE_PHONE}"

    assert redact_text(text) == text


def test_a_real_number_beside_the_example_is_still_redacted() -> None:
    text = f"+447911123456 is not like {EXAMPLE_PHONE}"

    assert redact_text(text) == f"+44*******456 is not like {EXAMPLE_PHONE}"


def test_several_addresses_in_one_text_are_all_redacted() -> None:
    text = "to ada@example.com, grace@example.org and +14155550123; cc ada@example.com."

    assert redact_text(text) == (
        "to a***@example.com, g***@example.org and +14******123; cc a***@example.com."
    )


@pytest.mark.parametrize(
    "text",
    [
        "Connection refused",
        "421 4.3.2 Service not available, closing transmission channel",
        "Twilio 429 (code 20429): Too Many Requests",
        "attempt 3 of 8 after 12.5 s; see https://status.example.com/incidents/42",
        "",
    ],
)
def test_text_without_addresses_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "address",
    [
        "ada@example.com",
        "Ada.Lovelace@Example.COM",
        "ada+bookings@mail.example.co.uk",
        "o'brien@example.ie",
        "+447911123456",
        "+14155550123",
        # The event contract accepts internationalized addresses (email-validator's default).
        "zoë@example.com",
        "李雷@example.com",
        "ada@exämple.com",
    ],
)
def test_no_raw_address_survives_redaction(address: str) -> None:
    text = f"delivery to {address} failed: mailbox {address} unavailable"

    redacted = redact_text(text)

    assert address not in redacted
    assert redacted.startswith("delivery to ")
