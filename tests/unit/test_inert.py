"""Inert text: stored text printed to a terminal can only ever be read, never obeyed."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.inert import inert

# What a terminal acts on: C0 controls, DEL, C1 controls (U+009B is a one-character CSI),
# the bidi controls (they reorder what is shown), and lone surrogates (unprintable).
ACTIVE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


@pytest.mark.parametrize(
    ("char", "escaped"),
    [
        pytest.param("\x1b", "\\u001b", id="ESC"),
        pytest.param("\x07", "\\u0007", id="BEL"),
        pytest.param("\x00", "\\u0000", id="NUL"),
        pytest.param("\x08", "\\u0008", id="BS"),
        pytest.param("\n", "\\n", id="LF"),
        pytest.param("\r", "\\r", id="CR"),
        pytest.param("\t", "\\t", id="TAB"),
        pytest.param("\x7f", "\\u007f", id="DEL"),
        pytest.param("\x9b", "\\u009b", id="C1-CSI"),
        pytest.param("\x9d", "\\u009d", id="C1-OSC"),
        pytest.param("\u202e", "\\u202e", id="RLO"),
        pytest.param("\u202a", "\\u202a", id="LRE"),
        pytest.param("\u2066", "\\u2066", id="LRI"),
        pytest.param("\u2069", "\\u2069", id="PDI"),
        pytest.param("\u200f", "\\u200f", id="RLM"),
        pytest.param("\u061c", "\\u061c", id="ALM"),
        pytest.param("\ud800", "\\ud800", id="lone-surrogate"),
    ],
)
def test_a_character_a_terminal_acts_on_is_written_as_its_escape(char: str, escaped: str) -> None:
    assert inert(f"a{char}b") == f"a{escaped}b"


def test_an_osc8_hyperlink_and_a_window_title_become_plain_text() -> None:
    hostile = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\\x1b]0;pwned\x07"

    assert inert(hostile) == (
        "\\u001b]8;;https://evil.example/\\u001b\\click\\u001b]8;;\\u001b\\\\u001b]0;pwned\\u0007"
    )


@pytest.mark.parametrize(
    "text",
    ["booking.created", "Zoë Ångström", "李雷", "a***@example.com", 'quote " and \\ backslash', ""],
)
def test_printable_text_is_left_as_it_is(text: str) -> None:
    assert inert(text) == text


def test_newlines_can_be_kept_for_multi_line_text_we_wrote() -> None:
    assert inert("Subject: hi\n\n\x1b[2Kbody\r\n", keep_newlines=True) == (
        "Subject: hi\n\n\\u001b[2Kbody\\r\n"
    )


@given(st.text())
def test_nothing_a_terminal_acts_on_survives(text: str) -> None:
    assert ACTIVE.search(inert(text)) is None


@given(st.text())
def test_escaped_json_is_still_the_same_json(text: str) -> None:
    document = json.dumps({"error": text, "list": [text]}, indent=2)

    assert json.loads(inert(document, keep_newlines=True)) == {"error": text, "list": [text]}
