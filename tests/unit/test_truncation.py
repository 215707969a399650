"""Cutting text to a number of UTF-8 bytes, marked with how much was cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from notifier.truncation import truncate, utf8_size


def test_text_that_fits_is_returned_as_it_is() -> None:
    assert truncate("booking.created", 100) == "booking.created"


def test_a_cut_ends_with_the_number_of_bytes_left_out() -> None:
    cut = truncate("x" * 1000, 100)

    kept = len(cut) - len(cut.lstrip("x"))
    assert cut == "x" * kept + f"…[truncated {1000 - kept} bytes]"


def test_a_cut_never_splits_a_character() -> None:
    cut = truncate("李" * 100, 50)

    kept = cut.split("…")[0]
    assert set(kept) == {"李"}
    assert cut.endswith(f"…[truncated {300 - utf8_size(kept)} bytes]")


@given(st.text(), st.integers(min_value=40, max_value=500))
def test_a_cut_fits_in_the_bytes_given(text: str, max_bytes: int) -> None:
    cut = truncate(text, max_bytes)

    assert utf8_size(cut) <= max_bytes
    assert cut == text or text.startswith(cut.rsplit("…[truncated ", 1)[0])
