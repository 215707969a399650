"""The validation fast paths give the reference libraries' answers, or none.

``notifier.addresses`` answers for common email addresses and E.164 numbers
without email-validator and phonenumbers, and ``notifier.events`` skips its
per-character loops and urlsplit for plain names and URLs. None of it may
change what the contract accepts, how it normalizes, or what it says when it
rejects. Each property compares with the reference: the library call, or the
slow check the fast path stands in for, exactly as events.py did before.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import ATEXT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notifier import events
from notifier.addresses import email_fast_path, phone_fast_path

PROPERTY = settings(
    max_examples=1500,
    deadline=None,  # the first call of a region loads its phonenumbers metadata
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

Outcome = tuple[str, str]


def outcome(check: Callable[[str], str], value: str) -> Outcome:
    """``("ok", normalized)`` or ``("error", message)``: what pydantic would report."""
    try:
        return ("ok", check(value))
    except ValueError as exc:
        return ("error", str(exc))


# --- the reference: events.py's validators before the fast paths ------------------------


def reference_email(value: str, *, allow_special_domains: bool = False) -> str:
    if len(value) > 320:  # the EmailAddress type's StringConstraints, checked first
        raise ValueError("String should have at most 320 characters")
    if any(char in value for char in "\r\n"):
        raise ValueError("must not contain CR or LF")
    if "=?" in value:
        raise ValueError("must not contain '=?' (it starts an RFC 2047 encoded-word)")
    try:
        return validate_email(
            value, check_deliverability=False, test_environment=allow_special_domains
        ).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def staging_email(value: str) -> str:
    return events.email_address(value, allow_special_domains=True)


def staging_reference_email(value: str) -> str:
    return reference_email(value, allow_special_domains=True)


def reference_phone(value: str) -> str:
    if not re.fullmatch(r"\+[1-9][0-9]{6,14}", value):
        raise ValueError("must be an E.164 number such as +442079460123 (no spaces, leading +)")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a valid phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def reference_url(value: str) -> str:
    if len(value) > events.MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {events.MAX_URL_LENGTH} characters")
    return events._check_http_url(value)


# --- email --------------------------------------------------------------------------------

ATEXT_CHARS = re.sub(r"\\(.)", r"\1", ATEXT.replace("a-zA-Z0-9", ""))
LOCAL_ALPHABET = st.sampled_from(
    "abcxyzABCXYZ0189.." + ATEXT_CHARS + ' "\\@<>()[],;:éßü文\u0301\u200b\x00'
)
ROLE_MAILBOXES = ["info", "Postmaster", "ABUSE", "WebMaster", "noc", "sales"]
SPECIAL_TLDS = ["local", "test", "localhost", "invalid", "onion", "arpa", "LOCAL", "Test"]
LABEL_ALPHABET = st.sampled_from("abcxyzABCXYZ0189---_é文")


local_parts = st.one_of(
    st.text(LOCAL_ALPHABET, min_size=0, max_size=12),
    st.from_regex(rf"[{ATEXT}]{{1,8}}(\.[{ATEXT}]{{1,8}}){{0,3}}", fullmatch=True),
    st.sampled_from(ROLE_MAILBOXES),
    st.sampled_from(["a" * 64, "a" * 65, ".ada", "ada.", "a..da", '"ada lovelace"', '"ada"']),
    st.text(LOCAL_ALPHABET, min_size=1, max_size=5).map(lambda s: f'"{s}"'),
)
labels = st.one_of(
    st.text(LABEL_ALPHABET, min_size=0, max_size=8),
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True),
    st.sampled_from(
        [
            "xn--bcher-kva",  # bücher: valid Punycode
            "XN--BCHER-KVA",
            "xn--zz",  # not valid Punycode
            "ab--cd",  # R-LDH, rejected
            "a--b",
            "-ada",
            "ada-",
            "123",
            "Example",
            "EXAMPLE",
            "a" * 63,  # the longest label
            "a" * 64,
            "bücher",
            "例え",
        ]
    ),
)
tlds = st.one_of(labels, st.sampled_from([*SPECIAL_TLDS, "com", "COM", "io", "7", "c0m", "co1"]))


PLAIN_LOCAL = st.from_regex(rf"[{ATEXT}]{{1,10}}(\.[{ATEXT}]{{1,10}}){{0,2}}", fullmatch=True)
PLAIN_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
PLAIN_TLD = st.from_regex(r"[A-Za-z]{2,6}", fullmatch=True)


def _pad_domain(address: str, size: int) -> str:
    """``address`` with labels of 60 characters added so that its domain has ``size``."""
    local, domain = address.rsplit("@", 1)
    missing = size - len(domain)
    if missing <= 1:
        return address
    padding = ".".join(["a" * 60] * (missing // 61 + 1))[: missing - 1].rstrip(".")
    return f"{local}@{padding}.{domain}"


TWISTS: list[Callable[[str], str]] = [
    str.upper,
    lambda a: a.replace("@", "@" + "xn--bcher-kva.", 1),
    lambda a: a.replace("@", "@" + "XN--ZZ.", 1),
    lambda a: a.replace("@", "@ab--cd.", 1),
    lambda a: a.replace("@", "@a--b.", 1),
    lambda a: a.replace("@", "@-a.", 1),
    lambda a: a.replace("@", "@a-.", 1),
    lambda a: a.replace("@", "@" + "a" * 63 + ".", 1),
    lambda a: a.replace("@", "@" + "a" * 64 + ".", 1),
    lambda a: a.replace("@", "@bücher.", 1),
    lambda a: a + ".",
    lambda a: a + "1",
    lambda a: a + "-",
    lambda a: a.rsplit(".", 1)[0] + ".123",
    lambda a: a.rsplit(".", 1)[0],
    lambda a: "." + a,
    lambda a: a.replace("@", ".@", 1),
    lambda a: a.replace(".", "..", 1),
    lambda a: a.replace("@", "é@", 1),
    lambda a: a.replace("@", "\u0301@", 1),
    lambda a: '"' + a.replace("@", ' x"@', 1),
    lambda a: '"' + a.replace("@", '"@', 1),
    lambda a: "@" + a.split("@", 1)[1],
    lambda a: "a" * 64 + "@" + a.split("@", 1)[1],
    lambda a: "a" * 65 + "@" + a.split("@", 1)[1],
    *[lambda a, size=size: _pad_domain(a, size) for size in (252, 253, 254)],
    *[lambda a, size=size: _pad_domain(a, size - len(a.split("@")[0]) - 1) for size in (254, 255)],
    *[lambda a, tld=tld: a.rsplit(".", 1)[0] + "." + tld for tld in SPECIAL_TLDS],
    *[lambda a, name=name: name + "@" + a.split("@", 1)[1] for name in ROLE_MAILBOXES],
]


@st.composite
def addresses(draw: st.DrawFn) -> str:
    """Address-like strings around every edge the fast path has to get right.

    Half are plain addresses with up to two twists (case, Punycode, hyphens
    and dots in odd places, label and length limits, special-use and numeric
    TLDs, role mailboxes, quoting, non-ASCII), the other half freer text.
    """
    if draw(st.booleans()):
        hosts = draw(st.lists(PLAIN_LABEL, min_size=1, max_size=3))
        address = f"{draw(PLAIN_LOCAL)}@{'.'.join([*hosts, draw(PLAIN_TLD)])}"
        for twist in draw(st.lists(st.sampled_from(TWISTS), max_size=2)):
            address = twist(address)
        return address
    local = draw(local_parts)
    domain = ".".join([*draw(st.lists(labels, min_size=0, max_size=4)), draw(tlds)])
    domain = draw(st.sampled_from(["", ".", "..", "-"])).join(["", domain])
    return f"{local}@{domain}" + draw(st.sampled_from(["", "", "", ".", "-"]))


@PROPERTY
@given(addresses())
@example("ada@example.com")
@example("Ada.Lovelace+news@Example.COM")
@example("POSTMASTER@example.com")
@example("ada@xn--bcher-kva.example")
@example("ada@example.local")
@example("ada@example.123")
@example("ada@a.b")
@example('"ada"@example.com')
@example("ada@" + "a" * 63 + ".com")
@example("ada@" + "a" * 64 + ".com")
@example("a" * 64 + "@" + ("b" * 60 + ".") * 3 + "com")
@example("a" * 65 + "@example.com")
def test_an_answered_address_is_what_email_validator_says(address: str) -> None:
    fast = email_fast_path(address)
    if fast is not None:
        assert fast == validate_email(address, check_deliverability=False).normalized
    assert outcome(events.email_address, address) == outcome(reference_email, address)
    assert outcome(staging_email, address) == outcome(staging_reference_email, address)


@PROPERTY
@given(st.text(max_size=40))
def test_any_text_as_an_address_is_judged_as_before(text: str) -> None:
    assert outcome(events.email_address, text) == outcome(reference_email, text)


@pytest.mark.parametrize(
    ("address", "normalized"),
    [
        ("user.1@example.com", "user.1@example.com"),
        ("Ada@Example.COM", "Ada@example.com"),
        ("Info@example.com", "info@example.com"),
        ("a+b_c-d~e!f@sub-1.example.co.uk", "a+b_c-d~e!f@sub-1.example.co.uk"),
    ],
)
def test_plain_addresses_take_the_fast_path(address: str, normalized: str) -> None:
    assert email_fast_path(address) == normalized


# --- phone --------------------------------------------------------------------------------


def _example_numbers() -> list[str]:
    """phonenumbers' own example of every number type of every region, in E.164."""
    numbers = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in phonenumbers.PhoneNumberType.values():
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                numbers.append(
                    phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                )
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is not None:
            numbers.append(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    return sorted(set(numbers))


EXAMPLE_NUMBERS = _example_numbers()
CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def test_every_example_number_of_every_region_is_answered_as_phonenumbers_does() -> None:
    answered = 0
    for number in EXAMPLE_NUMBERS:
        fast = phone_fast_path(number)
        if fast is not None:
            answered += 1
            assert fast == reference_phone(number), number
        assert outcome(events._phone, number) == outcome(reference_phone, number), number
    # Most take the fast path (the rest: national prefixes the library may strip).
    assert answered > 0.9 * len(EXAMPLE_NUMBERS)


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    """E.164-shaped strings: mutated example numbers, and digits after real calling codes."""
    kind = draw(st.integers(-2, 3))
    if kind <= 0:
        digits = list(draw(st.sampled_from(EXAMPLE_NUMBERS))[1:])
        for _ in range(draw(st.integers(0, 2))):
            where = draw(st.integers(0, len(digits) - 1))
            action = draw(st.sampled_from(["replace", "insert", "delete"]))
            digit = draw(st.sampled_from("0123456789"))
            if action == "replace":
                digits[where] = digit
            elif action == "insert":
                digits.insert(where, digit)
            elif len(digits) > 1:
                del digits[where]
        return "+" + "".join(digits)
    code = str(draw(st.sampled_from(CALLING_CODES)))
    if kind == 1:
        # A national prefix or leading zeros after the calling code (+44 0..., +39 06...).
        prefix = draw(st.sampled_from(["0", "00", "1", "8", "9", "15", "0 ", "+", ""]))
        rest = draw(st.from_regex(r"[0-9]{0,13}", fullmatch=True))
        return f"+{code}{prefix}{rest}"
    if kind == 2:
        return "+" + code + draw(st.from_regex(r"[0-9]{2,14}", fullmatch=True))
    return draw(st.from_regex(r"\+[0-9]{0,17}", fullmatch=True))


@PROPERTY
@given(phone_numbers())
@example("+447911123456")
@example("+4407911123456")  # national prefix: the library strips it
@example("+14155550123")
@example("+16135550123")  # Canada: another region of +1
@example("+441534456789")  # Jersey: another region of +44
@example("+390612345678")  # Italian leading zero
@example("+447700900123")  # UK drama range: invalid
@example("+80012345678")  # non-geographic
@example("+999123456789")  # no such calling code
def test_an_answered_number_is_what_phonenumbers_says(number: str) -> None:
    fast = phone_fast_path(number)
    if fast is not None:
        assert fast == reference_phone(number)
    assert outcome(events._phone, number) == outcome(reference_phone, number)


@PROPERTY
@given(st.text(alphabet=st.sampled_from("+0123456789 -()x#;٣"), max_size=20))
def test_any_text_as_a_phone_number_is_judged_as_before(text: str) -> None:
    fast = phone_fast_path(text)
    if fast is not None:
        assert fast == reference_phone(text)
    assert outcome(events._phone, text) == outcome(reference_phone, text)


@pytest.mark.parametrize("number", ["+447911123456", "+14155550123", "+33612345678"])
def test_plain_numbers_take_the_fast_path(number: str) -> None:
    assert phone_fast_path(number) == number


# --- URLs ---------------------------------------------------------------------------------

URL_PIECES = st.sampled_from(
    [
        "http://",
        "https://",
        "HTTPS://",
        "ftp://",
        "https:",
        "//",
        "app.example.com",
        "APP.Example.com",
        "-.",
        ":8443",
        ":",
        ":x",
        "u:p@",
        "u@",
        "@",
        "[::1]",
        "[",
        "]",
        "/verify",
        "?token=t1",
        "#top",
        "/a b",
        "\n",
        "\t",
        "\x00",
        "\u202e",
        "é",
        "%40",
    ]
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    """Plain URLs with a piece or two of trouble spliced in, or pieces put together."""
    pieces = draw(st.lists(URL_PIECES, max_size=6))
    if draw(st.booleans()):
        return "".join(pieces)
    url = draw(st.from_regex(events._PLAIN_HTTP_URL, fullmatch=True))
    for piece in pieces[:2]:
        where = draw(st.integers(0, len(url)))
        url = url[:where] + piece + url[where:]
    return url


@PROPERTY
@given(urls())
@example("https://app.example.com/verify?token=t1")
@example("https://u:p@app.example.com/")
@example("https://app.example.com@evil.example/")
@example("https://[::1]/")
@example("http://:80/")
@example("https:///verify")
def test_urls_are_judged_as_before(url: str) -> None:
    assert outcome(events._http_url, url) == outcome(reference_url, url)


@PROPERTY
@given(st.from_regex(events._PLAIN_HTTP_URL, fullmatch=True))
def test_every_url_the_fast_path_accepts_passes_the_full_check(url: str) -> None:
    assert outcome(events._http_url, url) == outcome(reference_url, url)


@PROPERTY
@given(st.text(max_size=30))
def test_any_text_as_a_url_is_judged_as_before(text: str) -> None:
    assert outcome(events._http_url, text) == outcome(reference_url, text)


# --- control characters -------------------------------------------------------------------


def test_no_printable_character_is_one_the_loop_rejects() -> None:
    # Exhaustive: every code point of this Python's Unicode database.
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if char.isprintable():
            category = unicodedata.category(char)
            assert not category.startswith("C"), hex(code)
            assert category not in ("Zl", "Zp"), hex(code)


@PROPERTY
@given(st.text(max_size=30))
@example("Zoë Ångström")
@example("Ada\u00a0Lovelace")  # a no-break space: not printable, but allowed
@example("Ada\u202eecalevoL")
@example("Ada\u2028Lovelace")
def test_names_are_judged_as_before(name: str) -> None:
    assert outcome(events._no_control_characters, name) == outcome(
        events._check_no_control_characters, name
    )
