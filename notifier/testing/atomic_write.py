"""Writing a received message to disk so that a reader never sees half of it."""

from __future__ import annotations

import os
import pathlib
import uuid

__all__ = ["write_atomically"]


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` so a reader never sees a half-written ``path``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
