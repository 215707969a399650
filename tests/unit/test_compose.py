"""compose_email / compose_sms / parse_sender: the bytes that go on the wire."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifier.compose import (
    ComposedEmail,
    SmsMessage,
    compose_email,
    compose_sms,
    parse_sender,
)
from notifier.errors import ConfigurationError, PermanentError
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from notifier.templates import RenderedEmail
from tests import samples

NOW = datetime(2026, 11, 26, 10, 0, 5, tzinfo=UTC)
RENDERED = RenderedEmail(
    subject="Booking Confirmation",
    text="Hello Zoë,\nYour booking is confirmed.\n",
    html="<p>Hello Zoë,</p>\n<p>Your booking is confirmed.</p>\n",
)


def delivery_for(channel: str = "email", **fields: Any) -> Delivery:
    """The fan's delivery on this channel for a booking.created event."""
    (chosen,) = [
        d
        for d in plan(parse_event(samples.booking_created(**fields)))
        if d.role == "fan" and d.channel == channel
    ]
    return chosen


def with_fan_name(delivery: Delivery, name: str) -> Delivery:
    """The same delivery with a name the event contract would have refused (a stored delivery)."""
    event = {**delivery.event, "fan": {**delivery.event["fan"], "name": name}}
    return delivery.model_copy(update={"event": event})


def parsed_bytes(data: bytes) -> EmailMessage:
    """What a receiving server sees."""
    result = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(result, EmailMessage)
    return result


def parsed(message: ComposedEmail) -> EmailMessage:
    return parsed_bytes(message.data)


def headers_of(data: bytes) -> bytes:
    """The top-level header block of a serialized message."""
    return data.split(b"\r\n\r\n", 1)[0]


@pytest.fixture
def sender() -> Address:
    return parse_sender("Bookings <noreply@example.com>")


@pytest.fixture
def delivery() -> Delivery:
    return delivery_for()


def test_email_is_multipart_alternative_text_then_html(delivery: Delivery, sender: Address) -> None:
    message = parsed(compose_email(delivery, RENDERED, sender, NOW))

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [part.get_content_charset() for part in parts] == ["utf-8", "utf-8"]


def test_email_parts_carry_the_rendered_text_and_html(delivery: Delivery, sender: Address) -> None:
    message = parsed(compose_email(delivery, RENDERED, sender, NOW))

    text, html = message.iter_parts()
    # On the wire every line ends in CRLF; the content is otherwise what was rendered.
    assert text.get_content().replace("\r\n", "\n") == RENDERED.text
    assert html.get_content().replace("\r\n", "\n") == RENDERED.html


def test_email_headers(delivery: Delivery, sender: Address) -> None:
    message = parsed(compose_email(delivery, RENDERED, sender, NOW))

    assert message["Subject"] == "Booking Confirmation"
    assert message["From"] == "Bookings <noreply@example.com>"
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert message["MIME-Version"] == "1.0"


def test_message_id_is_the_delivery_id_at_the_sender_domain(
    delivery: Delivery, sender: Address
) -> None:
    message = parsed(compose_email(delivery, RENDERED, sender, NOW))

    assert message["Message-ID"] == f"<{delivery.delivery_id}@example.com>"


def test_message_id_is_the_same_when_the_delivery_is_composed_again(
    delivery: Delivery, sender: Address
) -> None:
    first = compose_email(delivery, RENDERED, sender, NOW)
    retry = compose_email(delivery, RENDERED, sender, datetime(2026, 11, 27, tzinfo=UTC))

    assert first.message_id == retry.message_id


@pytest.mark.parametrize("name", ["Zoë Ångström", "李雷"], ids=["latin", "cjk"])
def test_non_ascii_recipient_name_is_rfc2047_encoded_and_decodes_back(
    delivery: Delivery, sender: Address, name: str
) -> None:
    data = compose_email(with_fan_name(delivery, name), RENDERED, sender, NOW).data

    assert headers_of(data).isascii()
    (to_line,) = [line for line in data.split(b"\r\n") if line.startswith(b"To:")]
    assert to_line.startswith(b"To: =?utf-8?")
    (address,) = parsed_bytes(data)["To"].addresses
    assert address.display_name == name
    assert address.addr_spec == "ada@example.com"


def test_non_ascii_subject_is_encoded_and_decodes_back(delivery: Delivery, sender: Address) -> None:
    rendered = RenderedEmail(subject="Réservation confirmée 李雷", text="x", html="<p>x</p>")

    data = compose_email(delivery, rendered, sender, NOW).data

    assert headers_of(data).isascii()
    assert b"=?utf-8?" in headers_of(data)
    assert parsed_bytes(data)["Subject"] == "Réservation confirmée 李雷"


def test_non_ascii_sender_name_is_encoded_and_decodes_back(delivery: Delivery) -> None:
    sender = parse_sender("Zoë's Bookings <noreply@example.com>")

    data = compose_email(delivery, RENDERED, sender, NOW).data

    assert headers_of(data).isascii()
    (address,) = parsed_bytes(data)["From"].addresses
    assert address.display_name == "Zoë's Bookings"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Zoë =? not a word", id="encoded-word-opener"),
        pytest.param("=?utf-8?q?=0D=0ABcc:_victim@example.com?=", id="q-encoded-crlf"),
        pytest.param("=?utf-8?b?QWRhDQpCY2M6IHZpY3RpbUBleGFtcGxlLmNvbQ==?=", id="b-encoded-crlf"),
    ],
)
def test_a_name_holding_encoded_word_markers_arrives_as_it_was_given(
    delivery: Delivery, sender: Address, name: str
) -> None:
    data = compose_email(with_fan_name(delivery, name), RENDERED, sender, NOW).data

    message = parsed_bytes(data)
    assert sorted(key.lower() for key in message) == [
        "content-type", "date", "from", "message-id", "mime-version", "subject", "to"
    ]  # fmt: skip
    assert display_name_as_sent(data, message) == name
    assert [address.addr_spec for address in message["To"].addresses] == ["ada@example.com"]
    assert b"victim" not in data


def test_a_subject_holding_an_encoded_word_arrives_as_it_was_given(
    delivery: Delivery, sender: Address
) -> None:
    subject = "Jazz =?utf-8?q?=0D=0ABcc:_victim@example.com?= Night"
    rendered = RenderedEmail(subject=subject, text="x", html="<p>x</p>")

    data = compose_email(delivery, rendered, sender, NOW).data

    assert parsed_bytes(data)["Subject"] == subject
    assert b"victim" not in data


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_recipient_name_with_a_line_break_is_refused(
    delivery: Delivery, sender: Address, newline: str
) -> None:
    tampered = with_fan_name(delivery, f"Ada{newline}Bcc: victim@example.com")

    with pytest.raises(PermanentError, match="recipient name"):
        compose_email(tampered, RENDERED, sender, NOW)


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_subject_with_a_line_break_is_refused(
    delivery: Delivery, sender: Address, newline: str
) -> None:
    rendered = RenderedEmail(
        subject=f"Booking{newline}Bcc: victim@example.com", text="x", html="<p>x</p>"
    )

    with pytest.raises(PermanentError, match="subject"):
        compose_email(delivery, rendered, sender, NOW)


def test_recipient_address_with_a_line_break_is_refused(
    delivery: Delivery, sender: Address
) -> None:
    tampered = delivery.model_copy(update={"address": "ada@example.com\r\nBcc: v@example.com"})

    with pytest.raises(PermanentError, match="recipient address"):
        compose_email(tampered, RENDERED, sender, NOW)


@pytest.mark.parametrize(
    "delivery_id",
    ["d-1>\r\nBcc: victim@example.com\r\nX-Note: <x", 'd-1"\r\n\r\nbody', "", "-1"],
    ids=["crlf-bcc", "boundary-quote", "empty", "leading-hyphen"],
)
def test_a_delivery_id_that_is_not_a_plain_token_is_refused(
    delivery: Delivery, sender: Address, delivery_id: str
) -> None:
    # It is written into Message-ID and the MIME boundary; a job on the queue
    # can carry any string there.
    tampered = delivery.model_copy(update={"delivery_id": delivery_id})

    with pytest.raises(PermanentError, match="delivery_id"):
        compose_email(tampered, RENDERED, sender, NOW)


def test_every_serialized_line_ends_in_crlf(delivery: Delivery, sender: Address) -> None:
    data = compose_email(delivery, RENDERED, sender, NOW).data

    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


def test_serialized_message_is_7bit_clean(delivery: Delivery, sender: Address) -> None:
    # smtplib.send_message declares BODY=8BITMIME only for SMTPUTF8 envelopes, so raw
    # 8-bit body bytes would go to servers that never offered 8BITMIME (RFC 6152).
    # A non-ASCII name in the body must travel quoted-printable or base64.
    rendered = RenderedEmail(subject="Booking Confirmation", text="Hello Zoë", html="<p>Zoë</p>")

    data = compose_email(delivery, rendered, sender, NOW).data

    assert data.isascii()
    text, html = parsed_bytes(data).iter_parts()
    assert text.get_content().rstrip() == "Hello Zoë"
    assert html.get_content().rstrip() == "<p>Zoë</p>"


@pytest.mark.parametrize(
    ("setting", "display_name", "addr_spec"),
    [
        pytest.param(
            "Bookings <noreply@example.com>", "Bookings", "noreply@example.com", id="named"
        ),
        pytest.param("noreply@example.com", "", "noreply@example.com", id="bare"),
        pytest.param(
            '"Bookings, Inc." <noreply@example.com>',
            "Bookings, Inc.",
            "noreply@example.com",
            id="quoted-name",
        ),
    ],
)
def test_parse_sender_accepts(setting: str, display_name: str, addr_spec: str) -> None:
    sender = parse_sender(setting)

    assert sender.display_name == display_name
    assert sender.addr_spec == addr_spec
    assert sender.domain == "example.com"


def test_parse_sender_refuses_a_test_domain_by_default() -> None:
    with pytest.raises(ConfigurationError, match="not a valid address"):
        parse_sender("Bookings <noreply@staging.test>")


def test_parse_sender_accepts_a_test_domain_when_special_domains_are_allowed() -> None:
    sender = parse_sender("Bookings <noreply@staging.test>", allow_special_domains=True)

    assert sender.addr_spec == "noreply@staging.test"


def test_a_recipient_under_test_is_refused_by_default(delivery: Delivery, sender: Address) -> None:
    staging = delivery.model_copy(update={"address": "ada@mail.test"})

    with pytest.raises(PermanentError, match="recipient address"):
        compose_email(staging, RENDERED, sender, NOW)


def test_a_recipient_under_test_is_written_when_special_domains_are_allowed(
    delivery: Delivery, sender: Address
) -> None:
    staging = delivery.model_copy(update={"address": "ada@mail.test"})

    message = compose_email(staging, RENDERED, sender, NOW, allow_special_domains=True)

    assert [a.addr_spec for a in parsed(message)["To"].addresses] == ["ada@mail.test"]


@pytest.mark.parametrize("setting", [None, ""], ids=["none", "empty"])
def test_parse_sender_requires_a_setting(setting: str | None) -> None:
    with pytest.raises(ConfigurationError, match="MAIL_DEFAULT_SENDER is not set"):
        parse_sender(setting)


@pytest.mark.parametrize(
    "setting",
    ["Bookings", "not an address", "noreply@", "@example.com", "Bookings <noreply@localhost>"],
    ids=["name-only", "words", "no-domain", "no-local-part", "no-dot-in-domain"],
)
def test_parse_sender_refuses_an_invalid_address(setting: str) -> None:
    with pytest.raises(ConfigurationError, match="not a valid address"):
        parse_sender(setting)


@pytest.mark.parametrize(
    "setting",
    ["Bookings <noreply@example.com>\r\nBcc: victim@example.com", "Book\nings <a@example.com>"],
    ids=["CRLF-after", "LF-in-name"],
)
def test_parse_sender_refuses_a_line_break(setting: str) -> None:
    with pytest.raises(PermanentError, match="CR/LF"):
        parse_sender(setting)


def test_compose_sms_sends_the_body_to_the_delivery_address() -> None:
    delivery = delivery_for("sms")

    assert compose_sms(delivery, "Your booking is confirmed.") == SmsMessage(
        to="+447911123456", body="Your booking is confirmed."
    )


# --- what a receiver reads back -------------------------------------------------------
# compose_email writes the bytes itself; the email package, as a receiving
# server would, must read back exactly what was rendered.

# Text the contract lets through to a header: no control, format, surrogate
# or line-separator characters (the event contract's rules).
header_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=120,
).filter(lambda text: text == text.strip())
body_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=400)


@settings(max_examples=300, deadline=None)
@given(name=header_text, subject=header_text, text=body_text, html=body_text)
@example(name="Ada  Lovelace", subject="x" * 69, text="", html=".")
@example(name='"Ada" (Byron) \\', subject="y" * 70, text="a \n", html="=\r\nb\rc")
@example(name="李雷" * 40, subject="Réservation " * 20, text="é" * 200, html="\t")
@example(name="Zoë =? not a word", subject="=?utf-8?q?=0D=0A?=", text="", html="")
def test_a_receiver_reads_back_exactly_what_was_rendered(
    name: str, subject: str, text: str, html: str
) -> None:
    delivery = with_fan_name(delivery_for(), name)
    sender = parse_sender("Bookings <noreply@example.com>")

    data = compose_email(delivery, RenderedEmail(subject, text, html), sender, NOW).data

    assert data.isascii()
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = parsed_bytes(data)
    [address] = message["To"].addresses
    assert address.addr_spec == "ada@example.com"
    assert display_name_as_sent(data, message) == name
    assert message["Subject"] == subject
    plain, rich = message.iter_parts()
    # Line breaks are the wire's (CRLF), whatever the template wrote.
    assert unix_newlines(plain.get_content()) == unix_newlines(text)
    assert unix_newlines(rich.get_content()) == unix_newlines(html)


def unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def display_name_as_sent(data: bytes, message: EmailMessage) -> str:
    """The To display name as an RFC 2047 decoder reads it.

    The email package's address parser keeps the folding space between two
    encoded-words (RFC 2047 §6.2 says to drop it; mail clients do), so a
    name sent as several words is decoded by the standard's rule instead.
    """
    [raw] = [line for line in unfolded_headers(data) if line.startswith("To: ")]
    value = raw.removeprefix("To: ")
    if not value.startswith("=?"):
        [address] = message["To"].addresses
        display_name: str = address.display_name
        return display_name
    phrase = value.rsplit(" <", 1)[0]
    return str(make_header(decode_header(phrase)))


def unfolded_headers(data: bytes) -> list[str]:
    return headers_of(data).decode("ascii").replace("\r\n ", " ").split("\r\n")
