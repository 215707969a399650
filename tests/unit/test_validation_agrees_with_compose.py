"""The event contract and the composer agree on every name, address and header text (issue 13).

Two sides judge the same value: ``parse_event`` when an event comes in, and
``compose_email`` when a delivery is written, whether it came from that event
or from a job on the queue that never met ``parse_event`` (a forged job, a
dead letter replayed after an upgrade). If the contract accepts what compose
refuses, every email to that person is dead-lettered; if compose writes what
the contract refuses, a job can send what no event may hold. So for every
value: the contract accepts it exactly when compose writes it. Compose may
only refuse with ``PermanentError``; anything else it raises fails the test.
"""

from __future__ import annotations

from base64 import b64encode
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notifier.compose import compose_email, parse_sender
from notifier.errors import InvalidEventError, PermanentError
from notifier.events import UserRegistered, parse_event
from notifier.planner import Delivery, plan
from notifier.templates import RenderedEmail
from tests import samples
from tests.unit.test_compose import display_name_as_sent, parsed_bytes

NOW = datetime(2026, 11, 26, 10, 0, 5, tzinfo=UTC)
SENDER = parse_sender("Bookings <bookings@example.com>")
RENDERED = RenderedEmail(subject="Welcome", text="Hello\n", html="<p>Hello</p>\n")
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------

# What ends a line somewhere, what RFC 2047 decoders look for, what address
# parsers split on, and text in other scripts.
TRICKY = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x00"]
TRICKY += ["\t", "\u202e", "\u200d", "\ufeff", "\ud800", "\u3000", " ", "  "]
TRICKY += ["=?", "?=", "=?utf-8?q?", "=?utf-8?b?", "=0D=0A", '"', "<", ">", ",", "\\", "é", "李"]


def q_encoded_word(text: str) -> str:
    data = text.encode("utf-8", "surrogatepass")
    return "=?utf-8?q?" + "".join(f"={byte:02X}" for byte in data) + "?="


def b_encoded_word(text: str) -> str:
    return "=?utf-8?b?" + b64encode(text.encode("utf-8", "surrogatepass")).decode() + "?="


pieces = st.one_of(st.characters(), st.sampled_from(TRICKY), st.text(max_size=8))
tricky_text = st.lists(pieces, max_size=30).map("".join)
encoded_words = st.one_of(
    st.builds(q_encoded_word, tricky_text), st.builds(b_encoded_word, tricky_text)
)
texts = st.one_of(
    tricky_text,
    st.text(max_size=210),
    encoded_words,
    st.tuples(tricky_text, encoded_words, tricky_text).map("".join),
)

LOCAL_PIECES = [*"aZ09.!#$%&'*+-/=?^_`{|}~", *'"(),:;<>@[\\] ', "=?", "?=", "é", "李", "\r\n"]
DOMAIN_LABELS = ["example", "com", "Example", "test", "localhost", "local", "invalid", "onion"]
DOMAIN_LABELS += ["xn--bcher-kva", "bücher", "a-b", "-a", "a--b", "1", "co", "=?x?="]
local_parts = st.lists(st.sampled_from(LOCAL_PIECES), max_size=12).map("".join)
domains = st.lists(st.sampled_from(DOMAIN_LABELS), min_size=1, max_size=4).map(".".join)
addresses = st.one_of(
    st.emails(),
    st.builds("{}@{}".format, local_parts, domains),
    tricky_text,
)

# --- the two sides ------------------------------------------------------------------


def registration_for(**person: Any) -> dict[str, Any]:
    return samples.user_registered(user={**samples.FAN, **person})


def contract_accepts(
    event: dict[str, Any], *, allow_special_domains: bool = False
) -> UserRegistered | None:
    try:
        parsed = parse_event(event, allow_special_domains=allow_special_domains)
    except InvalidEventError:
        return None
    assert isinstance(parsed, UserRegistered)
    return parsed


def stored_delivery(**person: str) -> Delivery:
    """The registration email with ``person`` as given: a job that skipped parse_event."""
    [delivery] = plan(parse_event(registration_for()))
    user = {**delivery.event["user"], **person}
    return delivery.model_copy(
        update={"event": {**delivery.event, "user": user}, "address": user["email"]}
    )


def compose_writes(
    delivery: Delivery, rendered: RenderedEmail = RENDERED, *, allow_special_domains: bool = False
) -> bytes | None:
    try:
        message = compose_email(
            delivery, rendered, SENDER, NOW, allow_special_domains=allow_special_domains
        )
    except PermanentError:
        return None
    return message.data


# --- the properties -----------------------------------------------------------------


@PROPERTY
@given(name=texts)
@example(name="Zoë =? not a word")
@example(name="=?utf-8?q?=0D=0ABcc:_evil@attacker.example?=")
@example(name=" Ada Lovelace\u3000")
@example(name="\x85Ada")
@example(name="Ada\u200dLovelace")
@example(name="a" * 201)
@example(name="")
def test_a_name_is_accepted_by_the_contract_exactly_when_compose_writes_it(name: str) -> None:
    accepted = contract_accepts(registration_for(name=name))
    written = compose_writes(stored_delivery(name=name))

    assert (accepted is not None) == (written is not None)
    if accepted is not None and written is not None:
        # What a reader decodes is the name the contract kept, nothing more.
        assert display_name_as_sent(written, parsed_bytes(written)) == accepted.user.name


@PROPERTY
@given(address=addresses, special=st.booleans())
@example(address="=?utf-8?q?=0D=0ABcc:_evil?=@example.com", special=False)
@example(address="ada@example.test", special=False)
@example(address="ada@example.test", special=True)
@example(address="ada@test", special=True)
@example(address="ada@localhost", special=True)
@example(address="Ada@Example.COM", special=False)
@example(address="zoë@bücher.example", special=False)
@example(address='"ada"@example.com', special=False)
@example(address="ada@[127.0.0.1]", special=False)
def test_an_address_is_accepted_by_the_contract_exactly_when_compose_writes_it(
    address: str, special: bool
) -> None:
    # special: NOTIFIER_ALLOW_SPECIAL_DOMAINS, which both sides must honour alike.
    accepted = contract_accepts(registration_for(email=address), allow_special_domains=special)
    written = compose_writes(stored_delivery(email=address), allow_special_domains=special)

    assert (accepted is not None) == (written is not None)


@PROPERTY
@given(text=texts)
@example(text="Jazz =?utf-8?q?=0D=0ABcc:_evil@attacker.example?= Night")
@example(text="Zoë =? not a word")
@example(text="Jazz\tNight")
@example(text="Jazz\u202eNight")
def test_header_text_is_accepted_by_the_contract_exactly_when_compose_writes_it_as_a_subject(
    text: str,
) -> None:
    # The contract's single-line fields (event.title, booking_id, names) are
    # what an operator's subject template can show. Their length limit and
    # the stripping of outer blanks are the contract's own; a subject has
    # neither, so the text here is already within both.
    if not text or text != text.strip() or len(text) > 200:
        return
    try:
        parse_event(samples.booking_created(event={"title": text, "date": "2026-12-01"}))
        accepted = True
    except InvalidEventError:
        accepted = False
    rendered = RenderedEmail(subject=text, text="x\n", html="<p>x</p>\n")
    written = compose_writes(stored_delivery(), rendered)

    assert accepted == (written is not None)
    if written is not None:
        assert parsed_bytes(written)["Subject"] == text
