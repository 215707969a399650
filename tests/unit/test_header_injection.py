"""No generated name or subject can add a mail header (issue 6), as hypothesis properties.

The path is the worker's: ``parse_event`` → ``plan`` → ``Renderer`` →
``compose_email``, then the bytes a receiving server gets, parsed back with
``email.policy.default``. Every input must end in one of:

* rejected by the contract (``InvalidEventError``),
* refused while building the message (``PermanentError``: dead-lettered,
  never retried), or
* a message with exactly the expected headers and one ``To`` address, the
  event's.

Anything else (an extra header, a second recipient, a different exception
that Celery would see) is a failure.
"""

from __future__ import annotations

import email
import email.policy
import re
from base64 import b64encode
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notifier.compose import ComposedEmail, compose_email, parse_sender
from notifier.errors import InvalidEventError, PermanentError
from notifier.events import parse_event
from notifier.planner import Delivery, plan
from notifier.templates import Renderer
from tests import samples

NOW = datetime(2026, 11, 26, 10, 0, 5, tzinfo=UTC)
SENDER = parse_sender("Bookings <bookings@example.com>")
EXPECTED_HEADERS = sorted(
    ["subject", "from", "to", "date", "message-id", "mime-version", "content-type"]
)
ATTACKER = "evil@attacker.example"
PACKAGED = Renderer()

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- strategies ---------------------------------------------------------------------

# Everything that ends a line somewhere: CR, LF, the other C0/C1 controls and
# the Unicode separators str.splitlines() honours (the email package uses it).
LINE_BREAKERS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]
LINE_BREAKERS += ["\u2028", "\u2029", "\x00", "\t", "\x1b", "\u202e", "\ufeff"]
HEADER_SPECIALS = [*'"<>@,;:\\()[]=?.', " ", "Bcc: ", ATTACKER, "=?utf-8?q?", "?="]

hostile_characters = st.one_of(
    st.characters(),  # all of Unicode, lone surrogates included (JSON can carry "\ud800")
    st.sampled_from(LINE_BREAKERS + HEADER_SPECIALS),
)
hostile_text = st.lists(hostile_characters, max_size=40).map("".join)


def q_encoded_word(text: str) -> str:
    """``text`` as an RFC 2047 Q encoded word, every byte escaped."""
    data = text.encode("utf-8", "replace")
    return "=?utf-8?q?" + "".join(f"={byte:02X}" for byte in data) + "?="


def b_encoded_word(text: str) -> str:
    return "=?utf-8?b?" + b64encode(text.encode("utf-8", "replace")).decode() + "?="


# A decoder in the header path would turn these printable names into CR/LF.
encoded_words = st.one_of(
    st.builds(q_encoded_word, hostile_text), st.builds(b_encoded_word, hostile_text)
)
names = st.one_of(
    hostile_text,
    st.text(max_size=210),
    encoded_words,
    st.tuples(hostile_text, encoded_words, hostile_text).map("".join),
)

# --- helpers ------------------------------------------------------------------------


def on_the_wire(message: ComposedEmail) -> EmailMessage:
    """What a receiving server parses out of the bytes we send."""
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def collapse_blanks(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text)


def header_names(message: EmailMessage) -> list[str]:
    return sorted(key.lower() for key in message)


def to_addresses(message: EmailMessage) -> list[str]:
    return [address.addr_spec for address in message["To"].addresses]


def only_delivery(event: dict[str, Any], template: str) -> Delivery:
    [delivery] = [d for d in plan(parse_event(event)) if d.template == template]
    return delivery


def compose(delivery: Delivery, renderer: Renderer = PACKAGED) -> ComposedEmail:
    rendered = renderer.email(delivery.template, renderer.context(delivery, NOW))
    return compose_email(delivery, rendered, SENDER, NOW)


def registration_for(name: str) -> dict[str, Any]:
    return samples.user_registered(user={**samples.FAN, "name": name})


def assert_only_the_expected_headers(message: ComposedEmail, address: str) -> EmailMessage:
    wire = on_the_wire(message)
    assert header_names(wire) == EXPECTED_HEADERS
    assert to_addresses(wire) == [address]
    # Header lines, not bytes: a body may hold "Bcc:" at a line start (the
    # name's own text, or after a quoted-printable soft break) harmlessly.
    top = message.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nbcc:" not in b"\r\n" + top.lower()
    assert all("bcc" not in (key.lower() for key in part) for part in wire.walk())
    return wire


# --- display names ------------------------------------------------------------------


@PROPERTY
@given(name=names)
@example(name=f"Ada\r\nBcc: {ATTACKER}")
@example(name=f"Ada\nBcc: {ATTACKER}")
@example(name=f"Ada\u2028Bcc: {ATTACKER}")
@example(name=f"Ada\x85Bcc: {ATTACKER}")
@example(name=q_encoded_word(f"\r\nBcc: {ATTACKER}"))
@example(name=b_encoded_word(f"Ada\r\nBcc: {ATTACKER}"))
@example(name=f'"Ada" <{ATTACKER}>, Grace')
def test_no_display_name_adds_a_header_or_a_recipient(name: str) -> None:
    try:
        [delivery] = plan(parse_event(registration_for(name)))
        message = compose(delivery)
    except (InvalidEventError, PermanentError):
        return
    assert_only_the_expected_headers(message, "ada@example.com")


@pytest.mark.parametrize(
    "name",
    [
        "Zoë Ångström",
        "李雷",
        "<script>alert(1)</script>",
        'Ada "The Countess" Lovelace, Esq. (Byron)',
        "Ada Lovelace <ada@example.com>",
        "Ada Lovelace",
    ],
)
def test_a_display_name_arrives_as_it_was_given(name: str) -> None:
    [delivery] = plan(parse_event(registration_for(name)))

    wire = assert_only_the_expected_headers(compose(delivery), "ada@example.com")
    [address] = wire["To"].addresses
    assert collapse_blanks(address.display_name) == collapse_blanks(name)


def test_a_q_encoded_word_name_cannot_inject_a_bcc_header() -> None:
    name = q_encoded_word(f"\r\nBcc: {ATTACKER}")

    try:
        [delivery] = plan(parse_event(registration_for(name)))
        message = compose(delivery)
    except (InvalidEventError, PermanentError):
        return
    assert_only_the_expected_headers(message, "ada@example.com")


def test_a_b_encoded_word_name_cannot_end_the_headers_and_write_the_body() -> None:
    name = b_encoded_word("Ada\r\n\r\n<h1>Your account is locked</h1>")

    try:
        [delivery] = plan(parse_event(registration_for(name)))
        message = compose(delivery)
    except (InvalidEventError, PermanentError):
        return
    assert b"<h1>Your account is locked" not in message.data


# --- stored deliveries: compose is the last line of defence ------------------------
# A dead letter replayed after an upgrade, or a job published straight to
# notifier.deliver, reaches compose_email without parse_event.


def stored_delivery_for(name: str) -> Delivery:
    [delivery] = plan(parse_event(registration_for("Ada Lovelace")))
    event = {**delivery.event, "user": {**delivery.event["user"], "name": name}}
    return delivery.model_copy(update={"event": event})


@PROPERTY
@given(name=names)
@example(name=f"Ada\r\nBcc: {ATTACKER}")
@example(name=f"Ada\u2028Bcc: {ATTACKER}")
@example(name=q_encoded_word(f"\r\nBcc: {ATTACKER}"))
@example(name=b_encoded_word(f"Ada\r\nBcc: {ATTACKER}"))
def test_no_name_in_a_stored_delivery_adds_a_header_or_a_recipient(name: str) -> None:
    try:
        message = compose(stored_delivery_for(name))
    except PermanentError:
        return
    assert_only_the_expected_headers(message, "ada@example.com")


# --- subjects through an operator's template override -----------------------------

SUBJECT_TEMPLATE = (
    "Cancelled: {{ event.title }} ({{ booking_id }}) for {{ fan.name }}: {{ reason }}"
)


@pytest.fixture(scope="module")
def override_renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    """An override directory whose subject renders values the producer controls."""
    root: Path = tmp_path_factory.mktemp("templates")
    (root / "email").mkdir()
    (root / "email" / "booking_cancellation.subject").write_text(SUBJECT_TEMPLATE)
    return Renderer(root)


# ``reason`` is free text that may hold line breaks (it only reaches bodies in
# the packaged templates), so it is the value most likely to reach a subject.
@PROPERTY
@given(reason=hostile_text, title=names)
@example(reason=f"Sorry\r\nBcc: {ATTACKER}", title="Jazz Night")
@example(reason=f"Sorry\nBcc: {ATTACKER}", title="Jazz Night")
@example(reason=f"Sorry\u2028Bcc: {ATTACKER}", title="Jazz Night")
@example(reason=f"Sorry\u2029Bcc: {ATTACKER}", title="Jazz Night")
@example(reason="Sorry", title=q_encoded_word(f"\r\nBcc: {ATTACKER}"))
def test_no_subject_adds_a_header_and_a_line_break_is_a_permanent_error(
    override_renderer: Renderer, reason: str, title: str
) -> None:
    event = samples.booking_cancelled(reason=reason, event={"title": title, "date": "2026-12-01"})
    try:
        delivery = only_delivery(event, "booking_cancellation")
    except InvalidEventError:
        return
    subject = override_renderer.render(
        "email/booking_cancellation.subject", override_renderer.context(delivery, NOW)
    ).strip()
    breaks_a_line = len(subject.splitlines()) > 1

    try:
        message = compose(delivery, override_renderer)
    except PermanentError:
        return  # refused and dead-lettered: safe, whatever the reason
    assert not breaks_a_line, f"composed a subject that breaks a line: {subject!r}"
    assert_only_the_expected_headers(message, "ada@example.com")


def test_a_line_separator_in_a_reason_is_refused_by_the_contract() -> None:
    # U+2028 (category Zl) is a line break to the email package.
    with pytest.raises(InvalidEventError, match="control characters"):
        parse_event(samples.booking_cancelled(reason=f"Sorry\u2028Bcc: {ATTACKER}"))


def test_a_line_separator_in_a_subject_is_a_permanent_error(override_renderer: Renderer) -> None:
    # A stored delivery (replay, raw deliver job) skips event validation.
    valid = only_delivery(samples.booking_cancelled(reason="Sorry"), "booking_cancellation")
    event = {**valid.event, "reason": f"Sorry\u2028Bcc: {ATTACKER}"}
    delivery = valid.model_copy(update={"event": event})

    with pytest.raises(PermanentError):
        compose(delivery, override_renderer)


def test_crlf_in_a_subject_is_a_permanent_error(override_renderer: Renderer) -> None:
    event = samples.booking_cancelled(reason=f"Sorry\r\nBcc: {ATTACKER}")
    delivery = only_delivery(event, "booking_cancellation")

    with pytest.raises(PermanentError, match="CR/LF"):
        compose(delivery, override_renderer)
