"""Cutting text to a size in bytes, with a mark that says how much was cut.

Log records and dead-letter entries hold text that producers chose, so both
are capped (docs/DESIGN.md §10: a cut string ends with ``…[truncated N bytes]``,
N being the UTF-8 bytes left out).
"""

from __future__ import annotations

__all__ = ["mark", "truncate", "utf8_size"]


def mark(cut_bytes: int) -> str:
    """What ends a cut string."""
    return f"…[truncated {cut_bytes} bytes]"


def utf8_size(text: str) -> int:
    """Bytes of ``text`` as UTF-8 (lone surrogates counted as the 3 bytes they would take)."""
    return len(text.encode("utf-8", "surrogatepass"))


def truncate(text: str, max_bytes: int) -> str:
    """``text`` if it fits in ``max_bytes`` of UTF-8, else its start plus the mark, within them.

    Cuts between characters, never inside one. ``max_bytes`` is meant to be
    well above the mark's own 30-odd bytes; below that, the mark alone is returned.
    """
    # Each character is at most 4 bytes: short text needs no encoding to know it fits.
    if len(text) * 4 <= max_bytes:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    end = max(0, max_bytes - len(mark(len(data)).encode()))
    while end > 0 and data[end] & 0xC0 == 0x80:  # a continuation byte: inside a character
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass") + mark(len(data) - end)
