"""Inert text: what anyone could have stored, made safe to print on an operator's terminal.

Dead letters hold what producers sent, and producers can be hostile: an event
``type`` can carry an OSC 8 hyperlink, a window title, a line erase, a right-to-left
override that makes ``exe.pdf`` read as ``fdp.exe``. A terminal obeys those when
they are printed, so every line the CLI prints passes through ``inert`` first.

Escapes are JSON's (``\\u001b``, ``\\n``), so ``inert`` of JSON text is still the
same JSON, and an operator reads exactly which character was there.
"""

from __future__ import annotations

import re

__all__ = ["inert"]

# C0 controls, DEL, C1 controls (U+009B alone is a CSI on some terminals), the Unicode
# Bidi_Control characters (they reorder what is shown), and lone surrogates (which
# cannot be encoded for output at all).
_ACTIVE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_ACTIVE_BUT_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _SHORT.get(char) or f"\\u{ord(char):04x}"


def inert(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character a terminal would act on written as its escape.

    ``keep_newlines`` is for multi-line text whose line breaks we wrote (pretty
    JSON, a rendered template); a newline in a stored field must be escaped, or it
    could print a line of its own that looks like ours.
    """
    pattern = _ACTIVE_BUT_NEWLINE if keep_newlines else _ACTIVE
    # Nearly all text holds nothing to escape: one scan, no copy.
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escape, text)
