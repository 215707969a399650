"""Everything the ``notifier`` command prints goes through here, made inert.

Much of what the CLI shows was written by someone else: event types and ids
from producers, errors quoting them, documents in Redis. ``notifier.inert``
escapes what a terminal would obey; this module is the only way out to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import typer

from notifier.inert import inert

__all__ = ["document", "line", "table", "text"]


def line(message: str = "", *, err: bool = False) -> None:
    """Print one line; a newline inside ``message`` is escaped (it could forge a line)."""
    typer.echo(inert(message), err=err)


def text(message: str) -> None:
    """Print text whose line breaks are ours to keep (a rendered template)."""
    typer.echo(inert(message, keep_newlines=True))


def document(value: object) -> None:
    """Print ``value`` as indented JSON (ASCII: every control character escaped)."""
    typer.echo(inert(json.dumps(value, indent=2, ensure_ascii=True), keep_newlines=True))


def table(rows: Sequence[Sequence[str]], *, indent: str = "") -> None:
    """Print rows as aligned columns (widths measured on the escaped cells)."""
    cells = [[inert(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        padded = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo(indent + padded.rstrip())
