"""The dead-letter store summed up by error fingerprint, for ``notifier stats``.

A report over the store rather than part of it: ``DeadLetterStore.stats``
counts by status, channel and type for ``notifier dlq stats``, while this
groups by what went wrong and keeps each group's latest error, redacted, for
an operator deciding what to fix first.
"""

from __future__ import annotations

from typing import Any

import redis

from notifier.deadletter import DeadLetterStore
from notifier.redaction import redact_text

__all__ = ["dead_letter_summary"]


def dead_letter_summary(client: redis.Redis) -> dict[str, Any]:
    """Dead letters grouped by error fingerprint, the largest group first.

    Each group: count, statuses, channels, the latest error (redacted) and
    when it last happened. Read from the store's counters and one entry per
    fingerprint (its index's newest), never every entry (issue 16).
    """
    store = DeadLetterStore(client)
    counts = store.counts()
    groups = counts["fingerprint"]
    ordered = sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    latest = store.latest([fingerprint for fingerprint, _ in ordered])
    summary: dict[str, dict[str, Any]] = {}
    for fingerprint, count in ordered:
        entry = latest.get(fingerprint)
        summary[fingerprint] = {
            "count": count,
            "status": counts["fps"].get(fingerprint, {}),
            "channel": {
                name or "none": n for name, n in counts["fpc"].get(fingerprint, {}).items()
            },
            "error": redact_text(entry.error) if entry is not None else "",
            "last_failed_at": entry.failed_at if entry is not None else None,
        }
    return {"total": store.count(), "by_fingerprint": summary}
