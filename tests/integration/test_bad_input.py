"""Bad input published raw into a real worker (issue 6).

Every case goes in the way any Celery client in any language would send it:
``send_task("notifier.handle_event", args=[payload])``, no client-side
validation. For each one:

* no message goes to an injected address, and no received message carries an
  injected header;
* the worker goes on: a good event published right after it is delivered;
* the bad event is not lost: it is in the dead-letter store, status
  ``rejected``, with a reason a producer can act on.
"""

from __future__ import annotations

import json
import uuid
from base64 import b64encode
from email.header import decode_header, make_header
from typing import Any

import pytest

from notifier.app import NotifierCelery
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.testing import ReceivedEmail, SmtpSink, TwilioStandIn
from tests import samples
from tests.polling import eventually

pytestmark = pytest.mark.integration

ATTACKER = "evil@attacker.example"
# The follow-up event goes to someone else, so its message can't be confused
# with one the bad event should not have produced.
GOOD_RECIPIENT = "grace@example.com"
EXPECTED_HEADERS = sorted(
    ["subject", "from", "to", "date", "message-id", "mime-version", "content-type"]
)


# --- building bad payloads ----------------------------------------------------------


def with_user(**person: Any) -> dict[str, Any]:
    """A user.registered event whose user has these fields replaced."""
    return samples.user_registered(user={**samples.FAN, **person})


def without(event: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key not in fields}


def nested(depth: int) -> object:
    """``depth`` levels of alternating objects and lists."""
    junk: object = "junk"
    for level in range(depth):
        junk = {"junk": junk} if level % 2 else [junk]
    return junk


def q_encoded_word(text: str) -> str:
    """``text`` as an RFC 2047 Q encoded word, every byte escaped."""
    return "=?utf-8?q?" + "".join(f"={byte:02X}" for byte in text.encode()) + "?="


def b_encoded_word(text: str) -> str:
    return "=?utf-8?b?" + b64encode(text.encode()).decode() + "?="


BAD_INPUTS = [
    pytest.param(
        with_user(name=f"Ada\r\nBcc: {ATTACKER}"),
        "user.name: must not contain control characters",
        id="header-injection-in-name",
    ),
    pytest.param(
        with_user(email=f"ada@example.com\r\nBcc: {ATTACKER}"),
        "user.email: must not contain CR or LF",
        id="header-injection-in-address",
    ),
    pytest.param(
        samples.booking_created(event={"title": f"Jazz\r\nBcc: {ATTACKER}", "date": "2026-12-01"}),
        "event.title: must not contain control characters",
        id="header-injection-in-event-title",
    ),
    pytest.param(
        with_user(email="ada.example.com"),
        "user.email: not a valid email address",
        id="invalid-email",
    ),
    pytest.param(
        with_user(phone="07911 123456"),
        "user.phone: must be an E.164 number",
        id="phone-in-national-format",
    ),
    pytest.param(
        samples.user_registered(verification_url="javascript:alert(document.cookie)"),
        "verification_url: URL must be absolute http or https",
        id="javascript-url",
    ),
    pytest.param(
        samples.password_reset_requested(reset_url="data:text/html,<script>alert(1)</script>"),
        "reset_url: URL must be absolute http or https",
        id="data-url",
    ),
    pytest.param(
        samples.user_registered(type="user.deleted"),
        "unknown type 'user.deleted' (supported: user.registered, booking.created, "
        "booking.cancelled, password.reset_requested)",
        id="unknown-type",
    ),
    pytest.param(
        without(samples.user_registered(), "user", "verification_url"),
        "user: Field required",
        id="missing-fields",
    ),
    pytest.param(
        samples.user_registered(padding="x" * 100 * 1024),
        "the limit is 65,536",
        id="oversized-payload",
    ),
    pytest.param(
        samples.user_registered(schema_version=2),
        "schema_version: unsupported 2 (supported: 1)",
        id="wrong-schema-version",
    ),
    pytest.param(
        "Ada Lovelace registered",
        "must be a JSON object",
        id="string-instead-of-object",
    ),
    pytest.param(
        # The classic producer mistake: the event JSON-encoded twice.
        json.dumps(samples.user_registered()),
        "must be a JSON object",
        id="json-text-string-instead-of-object",
    ),
    pytest.param(
        [samples.user_registered()],
        "must be a JSON object, got array",
        id="list",
    ),
    pytest.param(None, "must be a JSON object", id="null"),
    pytest.param(
        samples.user_registered(junk=nested(500)),
        "nested too deeply",
        id="deeply-nested-junk-in-extra-field",
    ),
    pytest.param(
        # Valid JSON ("\\ud800"), not valid Unicode: it can't be encoded as UTF-8.
        with_user(name="Ada \ud800"),
        "surrogate",
        id="lone-surrogate-in-name",
    ),
    pytest.param(
        # occurred_at + the default hour of a reset link is past year 9999.
        samples.password_reset_requested(occurred_at="9999-12-31T23:30:00Z"),
        "occurred_at: must be between 1970-01-01T00:00:00Z and 9999-01-01T00:00:00Z",
        id="date-out-of-range",
    ),
    pytest.param(
        samples.user_registered(event_id=12345),
        "event_id: UUID input should be a string",
        id="number-as-event-id",
    ),
]


# --- publishing and observing -------------------------------------------------------


def publish_raw(app: NotifierCelery, payload: object) -> None:
    """What any Celery client sends: no validation on the way in."""
    app.send_task("notifier.handle_event", args=[payload], queue="notifier.events")


def publish_good_event_and_wait(app: NotifierCelery, smtp_sink: SmtpSink) -> None:
    """Proves the worker goes on: the solo worker takes messages in order."""
    publish_raw(
        app,
        samples.user_registered(
            user={"name": "Grace Hopper", "email": GOOD_RECIPIENT, "phone": None}
        ),
    )
    eventually(
        lambda: any(GOOD_RECIPIENT in mail.rcpt_tos for mail in smtp_sink.messages),
        timeout=10,
        what="the good event published after the bad one",
    )


def headers_of(mail: ReceivedEmail) -> bytes:
    return mail.data.split(b"\r\n\r\n", 1)[0]


def assert_nothing_injected(received: list[ReceivedEmail]) -> None:
    for mail in received:
        assert not any("attacker" in rcpt for rcpt in mail.rcpt_tos), mail.rcpt_tos
        assert b"attacker" not in mail.data
        # A header line, not the letters: ids in Message-ID and the boundary are hex.
        assert b"\r\nbcc:" not in b"\r\n" + headers_of(mail).lower()
        message = mail.message()
        assert sorted(key.lower() for key in message) == EXPECTED_HEADERS
        assert [address.addr_spec for address in message["To"].addresses] == list(mail.rcpt_tos)


def display_name_as_sent(mail: ReceivedEmail) -> str:
    """The To display name as an RFC 2047 decoder reads it.

    The email package keeps the folding space between two encoded-words
    (RFC 2047 §6.2 drops it, as mail clients do), so decode by the standard.
    """
    unfolded = headers_of(mail).decode("ascii").replace("\r\n ", " ")
    [to] = [line for line in unfolded.split("\r\n") if line.startswith("To: ")]
    phrase = to.removeprefix("To: ").rsplit(" <", 1)[0]
    return str(make_header(decode_header(phrase)))


def the_rejected_entry(dead_letters: DeadLetterStore) -> DeadLetter:
    entries = eventually(lambda: list(dead_letters), timeout=2, what="a dead-letter entry")
    [entry] = entries
    assert isinstance(entry, DeadLetter)
    return entry


# --- the table --------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "reason"), BAD_INPUTS)
def test_bad_input_is_rejected_with_its_reason_and_the_worker_goes_on(
    payload: object,
    reason: str,
    app: NotifierCelery,
    smtp_sink: SmtpSink,
    twilio: TwilioStandIn,
    dead_letters: DeadLetterStore,
) -> None:
    publish_raw(app, payload)
    publish_good_event_and_wait(app, smtp_sink)

    received = smtp_sink.messages
    assert_nothing_injected(received)
    assert [mail.rcpt_tos for mail in received] == [(GOOD_RECIPIENT,)]
    assert twilio.messages == []
    entry = the_rejected_entry(dead_letters)
    assert entry.status == "rejected"
    assert entry.error.startswith("InvalidEventError: ")
    assert reason in entry.error
    assert entry.raw_event  # kept for the operator, nothing disappears


# --- hostile input the contract accepts ------------------------------------------


def test_a_name_with_html_is_accepted_escaped_in_html_and_literal_in_text(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    publish_raw(app, with_user(name="<script>alert(1)</script>"))

    [mail] = smtp_sink.wait_for(1, timeout=10)
    assert_nothing_injected([mail])
    assert mail.rcpt_tos == ("ada@example.com",)
    message = mail.message()
    html = message.get_body(preferencelist=("html",))
    text = message.get_body(preferencelist=("plain",))
    assert html is not None
    assert text is not None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html.get_content()
    assert "<script>" not in html.get_content()
    assert "<script>alert(1)</script>" in text.get_content()
    assert message["To"].addresses[0].display_name == "<script>alert(1)</script>"
    assert dead_letters.count() == 0


ENCODED_WORD_NAMES = [
    pytest.param(q_encoded_word(f"\r\nBcc: {ATTACKER}"), id="q-encoded-crlf-bcc"),
    pytest.param(b_encoded_word(f"Ada\r\nBcc: {ATTACKER}"), id="b-encoded-crlf-bcc"),
    pytest.param(
        q_encoded_word("Ada\r\n\r\n<h1>Your account is locked, call attacker</h1>"),
        id="q-encoded-crlf-crlf-body",
    ),
]


@pytest.mark.parametrize("name", ENCODED_WORD_NAMES)
def test_an_encoded_word_in_a_name_never_becomes_a_header(
    name: str,
    app: NotifierCelery,
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    # Printable ASCII, so the name passes the control-character rule; an RFC
    # 2047 decoder must not turn it into CR/LF on the wire.
    publish_raw(app, with_user(name=name))
    publish_good_event_and_wait(app, smtp_sink)

    received = smtp_sink.messages
    assert_nothing_injected(received)
    to_ada = [mail for mail in received if mail.rcpt_tos == ("ada@example.com",)]
    if to_ada:  # accepted: then the name is shown as it was given
        [mail] = to_ada
        assert display_name_as_sent(mail) == name
    else:  # refused: then it is kept, not lost
        assert dead_letters.count() == 1


# --- below the task: a message Celery itself cannot decode ------------------------


def publish_raw_body(app: NotifierCelery, body: bytes) -> None:
    """A Celery protocol 2 message with a hand-made JSON body, as a non-Python producer sends."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": "notifier.handle_event",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "test",
    }
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange="notifier.events",
            routing_key="notifier.events",
            serializer=None,
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
        )


def test_json_nested_too_deep_to_decode_is_recorded_not_lost(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    # Python's json cannot even encode this; a Go or Node producer can.
    event = json.dumps(samples.user_registered())
    deep = event[:-1] + ', "junk": ' + "[" * 5000 + "]" * 5000 + "}"
    body = f'[[{deep}], {{}}, {{"callbacks": null, "errbacks": null, "chain": null}}]'
    publish_raw_body(app, body.encode())
    publish_good_event_and_wait(app, smtp_sink)

    assert [mail.rcpt_tos for mail in smtp_sink.messages] == [(GOOD_RECIPIENT,)]
    entry = the_rejected_entry(dead_letters)
    assert entry.status == "rejected"
    assert entry.raw_event
