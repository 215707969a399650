"""The dead-letter store summed up by error fingerprint, for ``notifier stats``.

A report over the store rather than part of it: ``DeadLetterStore.stats``
counts by status, channel and type for ``notifier dlq stats``, while this
groups by what went wrong and keeps each group's latest error, redacted, for
an operator deciding what to fix first.
"""

from __future__ import annotations

import collections
from typing import Any

import redis

from notifier.deadletter import DeadLetterStore
from notifier.redaction import redact_text

__all__ = ["dead_letter_summary"]


def dead_letter_summary(client: redis.Redis) -> dict[str, Any]:
    """Dead letters grouped by error fingerprint, the largest group first.

    Each group: count, statuses, channels, the latest error (redacted) and
    when it last happened. Reads every entry: fine for thousands, which is
    where ``NOTIFIER_DLQ_ALERT_THRESHOLD`` already turns health red.
    """
    groups: dict[str, dict[str, Any]] = {}
    total = 0
    for entry in DeadLetterStore(client):  # oldest first: the last one seen is the latest
        total += 1
        group = groups.setdefault(
            entry.fingerprint,
            {"count": 0, "status": collections.Counter(), "channel": collections.Counter()},
        )
        group["count"] += 1
        group["status"][entry.status] += 1
        group["channel"][entry.channel or "none"] += 1
        group["error"] = redact_text(entry.error)
        group["last_failed_at"] = entry.failed_at
    ordered = sorted(groups.items(), key=lambda item: (-item[1]["count"], item[0]))
    return {
        "total": total,
        "by_fingerprint": {
            fingerprint: {
                "count": group["count"],
                "status": dict(group["status"]),
                "channel": dict(group["channel"]),
                "error": group["error"],
                "last_failed_at": group["last_failed_at"],
            }
            for fingerprint, group in ordered
        },
    }
