"""``notifier health`` and ``notifier stats``: what an operator looks at first.

``health`` runs the checks in ``notifier.health`` and exits 1 when one fails
(a container healthcheck). ``stats`` reads Redis: queue lengths, what the
workers hold, outcomes over the last hour and dead letters by fingerprint.
Both take ``--json``; neither prints a secret or a raw address, and what they
print from Redis goes out inert (``notifier.cli.output``).
"""

from __future__ import annotations

from typing import Annotated, Any

import redis
import typer

from notifier import keys
from notifier.cli import output
from notifier.redaction import redact_text

__all__ = ["collect_stats", "health", "stats"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

_MARKS = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def health(as_json: JsonOpt = False) -> None:
    """Check Redis, SMTP (connect + EHLO), Twilio settings and dead letters.

    Exit 0 when healthy (warnings allowed), 1 when any check failed.
    """
    from notifier.health import run_checks
    from notifier.settings import get_settings

    report = run_checks(get_settings())
    if as_json:
        output.document(report.as_dict())
    else:
        rows: list[tuple[str, ...]] = [("CHECK", "STATUS", "DETAIL")]
        rows += [(c.name, _MARKS[c.status], redact_text(c.detail)) for c in report.checks]
        output.table(rows)
        output.line("healthy" if report.healthy else "UNHEALTHY")
    if not report.healthy:
        raise typer.Exit(1)


def collect_stats(client: redis.Redis) -> dict[str, Any]:
    """The ``stats --json`` document (see docs/operations.md)."""
    from notifier.metrics.dead_letters import dead_letter_summary
    from notifier.metrics.queues import queue_lengths
    from notifier.metrics.tallies import recent_outcomes
    from notifier.metrics.unacked import held_messages

    ready = queue_lengths(client)
    held = held_messages(client)
    queues: dict[str, dict[str, int]] = {}
    for queue in [*keys.QUEUES, *sorted(set(held.by_queue) - set(keys.QUEUES))]:
        holding = held.by_queue.get(queue)
        queues[queue] = {
            "ready": ready.get(queue, 0),
            "held": holding.total if holding else 0,
            "scheduled": holding.scheduled if holding else 0,
        }
    by_channel = recent_outcomes(client, minutes=60)
    by_outcome: dict[str, int] = {}
    for counts in by_channel.values():
        for outcome, count in counts.items():
            by_outcome[outcome] = by_outcome.get(outcome, 0) + count
    return {
        "queues": queues,
        "held_total": held.total,
        "held_complete": held.complete,
        "outcomes_last_hour": {
            "total": sum(by_outcome.values()),
            "by_outcome": dict(sorted(by_outcome.items())),
            "by_channel": by_channel,
        },
        "dead_letters": dead_letter_summary(client),
    }


def _print_stats(document: dict[str, Any]) -> None:
    rows: list[tuple[str, ...]] = [("QUEUE", "READY", "HELD", "SCHEDULED")]
    for queue, counts in document["queues"].items():
        rows.append((queue, str(counts["ready"]), str(counts["held"]), str(counts["scheduled"])))
    output.table(rows)
    if not document["held_complete"]:
        output.line(f"(held by queue counts a sample; {document['held_total']} held in all)")

    recent = document["outcomes_last_hour"]
    output.line()
    output.line(f"Deliveries in the last hour: {recent['total']}")
    if recent["total"]:
        rows = [("CHANNEL", "OUTCOME", "COUNT")]
        for channel, counts in recent["by_channel"].items():
            rows += [(channel, outcome, str(count)) for outcome, count in counts.items()]
        output.table(rows, indent="  ")

    dead = document["dead_letters"]
    output.line()
    output.line(f"Dead letters: {dead['total']}")
    if dead["total"]:
        rows = [("COUNT", "FINGERPRINT", "LAST FAILED", "ERROR")]
        for fingerprint, group in dead["by_fingerprint"].items():
            error = group["error"] if len(group["error"]) <= 80 else group["error"][:77] + "..."
            rows.append((str(group["count"]), fingerprint, str(group["last_failed_at"]), error))
        output.table(rows, indent="  ")


def stats(as_json: JsonOpt = False) -> None:
    """Queue lengths, deliveries by outcome over the last hour, dead letters by fingerprint.

    Exit 2 when Redis is unreachable.
    """
    from notifier.redis_clients import redis_client
    from notifier.settings import get_settings

    client = redis_client(get_settings())
    try:
        document = collect_stats(client)
    except (redis.RedisError, OSError) as exc:
        output.line(f"error: cannot read Redis: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        client.close()
    if as_json:
        output.document(document)
    else:
        _print_stats(document)
