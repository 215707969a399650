"""``notifier trace``: what became of an event's deliveries (docs/DESIGN.md §9).

``trace EVENT_ID`` shows the event and every delivery with its timeline;
``trace --delivery ID`` the same shape with that delivery only. ``--json`` prints
exactly ``EventStatus.model_dump(mode="json")``. Exit 1 for an unknown id (or
Redis unreachable), 2 for a usage error. Recipients are stored redacted; every
stored string is printed inert (``notifier.cli.output``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from notifier.cli import output

if TYPE_CHECKING:
    from notifier.status_store import EventStatus

__all__ = ["render", "trace"]


def trace(
    event_id: Annotated[str | None, typer.Argument(metavar="[EVENT_ID]")] = None,
    delivery: Annotated[
        str | None, typer.Option("--delivery", metavar="ID", help="One delivery's id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show an event's deliveries and their timelines (or one delivery's, with --delivery).

    Exit 0: found. 1: unknown id (or Redis unreachable). 2: usage error.
    """
    if (event_id is None) == (delivery is None):
        output.line("error: give an EVENT_ID or --delivery ID (one of them)", err=True)
        raise typer.Exit(2)
    import redis

    from notifier.redis_clients import redis_client
    from notifier.settings import get_settings
    from notifier.status_store import StatusStore

    settings = get_settings()
    client = redis_client(settings)
    store = StatusStore(client, ttl=settings.notifier_status_ttl)
    try:
        found = store.event(event_id) if event_id is not None else store.for_delivery(str(delivery))
    except redis.RedisError as exc:
        output.line(f"error: Redis: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        client.close()
    if found is None:
        what = f"event {event_id}" if event_id is not None else f"delivery {delivery}"
        output.line(
            f"error: no status for {what} (unknown, or older than NOTIFIER_STATUS_TTL)", err=True
        )
        raise typer.Exit(1)
    if as_json:
        output.document(found.model_dump(mode="json"))
        return
    render(found)


def render(found: EventStatus) -> None:
    """The human form: the event, then each delivery and its timeline."""
    output.line(f"event {found.event_id}  {found.type or '-'}  {found.state}")
    if found.dead_letter_id:
        output.line(f"  dead letter {found.dead_letter_id}")
    for reason in found.reasons:
        output.line(f"  reason: {reason}")
    if not found.deliveries:
        output.line("  no deliveries")
    for d in found.deliveries:
        output.line("")
        extra = [f"attempts {d.attempts}"]
        if d.provider_id:
            extra.append(f"{d.provider or 'provider'} {d.provider_id}")
        if d.dead_letter_id:
            extra.append(f"dead letter {d.dead_letter_id}")
        output.line(
            f"{d.delivery_id}  {d.channel}  {d.template}  {d.recipient}  {d.state.upper()}  "
            + "  ".join(extra)
        )
        output.table(
            [(entry.at, entry.state, entry.detail or "") for entry in d.timeline], indent="  "
        )
