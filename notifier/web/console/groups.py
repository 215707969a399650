"""Dead letters grouped by error fingerprint, the largest groups first, from the counters.

Like ``notifier.metrics.dead_letters.dead_letter_summary`` (``notifier stats``), but
only the top ``limit`` groups read an entry (their newest, for the error text):
the console never loads entries beyond what a page shows (docs/DESIGN.md §11).
"""

from __future__ import annotations

from dataclasses import dataclass

from notifier.deadletter import DeadLetterStore

__all__ = ["Group", "fingerprint_groups"]


@dataclass(frozen=True, slots=True)
class Group:
    """One fingerprint: how many, by status and channel, and its latest error."""

    fingerprint: str
    count: int
    by_status: dict[str, int]
    by_channel: dict[str, int]
    error: str
    """Not redacted: the page redacts and neutralises it (``rendering``)."""
    last_failed_at: str | None


def fingerprint_groups(store: DeadLetterStore, limit: int) -> tuple[int, list[Group]]:
    """(Entries in all, the ``limit`` largest groups.)"""
    counts = store.counts()
    ordered = sorted(counts["fingerprint"].items(), key=lambda item: (-item[1], item[0]))[:limit]
    latest = store.latest([fingerprint for fingerprint, _ in ordered])
    groups = []
    for fingerprint, count in ordered:
        entry = latest.get(fingerprint)
        groups.append(
            Group(
                fingerprint=fingerprint,
                count=count,
                by_status=dict(counts["fps"].get(fingerprint, {})),
                by_channel={
                    name or "none": n for name, n in counts["fpc"].get(fingerprint, {}).items()
                },
                error=entry.error if entry is not None else "",
                last_failed_at=entry.failed_at if entry is not None else None,
            )
        )
    return store.count(), groups
