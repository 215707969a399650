"""``notifier dlq``: list, inspect, replay, purge and count dead letters.

A thin wrapper over ``DeadLetterStore`` and ``pipeline.replay``. Listings
redact addresses; ``show`` prints the whole entry for the operator who asks.
A corrupt entry (a document that is not a dead letter) is listed and counted
as ``corrupt``, shown raw, purged like any other, and never replayed. All
output goes through ``notifier.cli.output``: stored text is printed inert.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from notifier.cli import output
from notifier.deadletter import (
    CORRUPT_REASON,
    CorruptEntry,
    DeadLetter,
    DeadLetterStore,
    Entry,
    Filter,
)
from notifier.redaction import redact_address, redact_text

__all__ = ["app", "parse_when"]

app = typer.Typer(
    name="dlq",
    help="Dead letters: what could not be delivered, kept for operators.",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 ('2026-11-26T10:00Z', '2026-11-26') or a duration ago ('30m', '2h', '1d')."""
    match = _DURATION.match(value.strip())
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither ISO 8601 nor a duration like 30m, 2h, 1d"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _store() -> DeadLetterStore:
    from notifier.redis_clients import redis_client
    from notifier.settings import get_settings

    return DeadLetterStore(redis_client(get_settings()))


ChannelOpt = Annotated[str | None, typer.Option("--channel", help="email or sms.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Event type, e.g. booking.created.")]
StatusOpt = Annotated[
    str | None,
    typer.Option("--status", help="failed, rejected, expired, rate_limited or corrupt."),
]
ErrorOpt = Annotated[str | None, typer.Option("--error", help="Text the error contains.")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="ISO 8601 time or a duration: 30m, 2h, 1d.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every entry matching the filters.")]


def _filter(
    channel: str | None,
    event_type: str | None,
    status: str | None,
    error: str | None,
    since: str | None,
) -> Filter:
    return Filter(
        channel=channel,
        event_type=event_type,
        status=status,
        error=error,
        since=parse_when(since) if since else None,
    )


def summary(entry: Entry) -> dict[str, object]:
    """The redacted listing form of an entry (``list --json``).

    A corrupt entry has its id, ``status: "corrupt"`` and the time it was
    indexed; nothing else it says can be trusted, so the rest is null.
    """
    if isinstance(entry, CorruptEntry):
        return {
            "id": entry.id,
            "status": entry.status,
            "event_id": None,
            "event_type": None,
            "channel": None,
            "template": None,
            "recipient": None,
            "error": None,
            "fingerprint": None,
            "attempts": None,
            "failed_at": entry.failed_at,
        }
    return {
        "id": entry.id,
        "status": entry.status,
        "event_id": entry.event_id,
        "event_type": entry.event_type,
        "channel": entry.channel,
        "template": entry.template,
        "recipient": redact_address(entry.recipient) if entry.recipient else None,
        "error": redact_text(entry.error),
        "fingerprint": entry.fingerprint,
        "attempts": entry.attempts,
        "failed_at": entry.failed_at,
    }


@app.command("list")
def list_(
    channel: ChannelOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters, most recent first (addresses redacted)."""
    entries = _store().select(_filter(channel, event_type, status, error, since), limit)
    if as_json:
        output.document([summary(entry) for entry in entries])
        return
    if not entries:
        output.line("no dead letters match")
        return
    columns = ("id", "status", "event_type", "channel", "template", "recipient", "attempts")
    table = [[*columns, "failed_at", "error"]]
    for entry in entries:
        row = summary(entry)
        # A corrupt entry's "error" is why it is corrupt: worth a column in a table.
        error_text = redact_text(entry.error)
        table.append(
            [str(row[c] if row[c] is not None else "-") for c in columns]
            + [str(row["failed_at"])[:19], error_text[:70] + ("…" if len(error_text) > 70 else "")]
        )
    output.table(table)


@app.command()
def show(
    entry_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOpt = False,
) -> None:
    """Show one entry in full: the delivery, the error, every attempt (unredacted)."""
    entry = _store().get(entry_id)
    if entry is None:
        output.line(f"error: no dead letter {entry_id}", err=True)
        raise typer.Exit(1)
    if isinstance(entry, CorruptEntry):
        _show_corrupt(entry, as_json)
        return
    if as_json:
        output.document(entry.model_dump(mode="json"))
        return
    output.line(f"id:         {entry.id}")
    output.line(f"status:     {entry.status}")
    output.line(f"event:      {entry.event_type} {entry.event_id}")
    output.line(f"delivery:   {entry.channel} {entry.template} to {entry.recipient}")
    output.line(f"error:      {entry.error}")
    output.line(f"attempts:   {entry.attempts} (first failure {entry.first_failed_at})")
    if entry.fallback:
        output.line(f"fallback:   email {entry.fallback}")
    for record in entry.history:
        output.line(f"  #{record.attempt} {record.at}  {record.error}")
    for problem in entry.errors:
        output.line(f"  - {problem}")


def _show_corrupt(entry: CorruptEntry, as_json: bool) -> None:
    if as_json:
        output.document(
            {
                "id": entry.id,
                "status": entry.status,
                "failed_at": entry.failed_at,
                "problem": entry.problem,
                "raw": entry.raw,
            }
        )
        return
    output.line(f"id:         {entry.id}")
    output.line(f"status:     {entry.status} (not a dead letter: purge it, or repair it in Redis)")
    output.line(f"failed_at:  {entry.failed_at or '- (not in the index)'}")
    output.line(f"problem:    {entry.problem}")
    output.line(f"raw:        {entry.raw}")


def _chosen(
    store: DeadLetterStore, ids: list[str] | None, everything: bool, where: Filter
) -> list[Entry]:
    if bool(ids) == everything:
        raise typer.BadParameter("give entry IDs or --all (with optional filters), not both")
    if everything:
        return store.select(where)
    found = []
    for entry_id in ids or []:
        entry = store.get(entry_id)
        if entry is None:
            output.line(f"warning: no dead letter {entry_id}", err=True)
        else:
            found.append(entry)
    return found


@app.command()
def replay(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every entry matching the filters.")
    ] = False,
    channel: ChannelOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be replayed.")] = False,
) -> None:
    """Send dead letters through the pipeline again; they leave the list.

    Safe to run twice, even at once: each entry is taken by one replay only,
    and the idempotency ledger stops a delivery that was already sent.
    """
    from notifier.app import create_app
    from notifier.logs import configure_logging
    from notifier.pipeline import replay as replay_entry
    from notifier.settings import get_settings

    store = _store()
    entries = _chosen(store, ids, everything, _filter(channel, event_type, status, error, since))
    if dry_run:
        replayable = [entry for entry in entries if isinstance(entry, DeadLetter)]
        for entry in entries:
            if isinstance(entry, CorruptEntry):
                output.line(f"would fail {entry.id}: {CORRUPT_REASON}")
            else:
                output.line(
                    f"would replay {entry.id} ({entry.status}, {entry.event_type}, {entry.channel})"
                )
        output.line(f"{len(replayable)} would be replayed")
        return
    settings = get_settings()
    # This command sends through the pipeline, which logs: redacted, as a worker's.
    configure_logging(settings)
    runtime = create_app(settings).runtime
    results = store.replay(entries, lambda entry: replay_entry(entry, runtime))
    for result in results:
        if result.error:
            output.line(f"failed {result.entry_id}: {result.error}")
        else:
            output.line(f"replayed {result.entry_id}: {result.done}")
    failed = sum(1 for result in results if result.error)
    output.line(f"{len(results) - failed} replayed, {failed} could not be replayed")
    if failed:
        raise typer.Exit(1)


@app.command()
def purge(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every entry matching the filters.")
    ] = False,
    channel: ChannelOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
) -> None:
    """Delete dead letters for good (requires --yes)."""
    store = _store()
    entries = _chosen(store, ids, everything, _filter(channel, event_type, status, error, since))
    if not yes:
        output.line(f"{len(entries)} entries match; add --yes to delete them", err=True)
        raise typer.Exit(1)
    output.line(f"{store.purge(entries)} purged")


@app.command()
def stats(as_json: JsonOpt = False) -> None:
    """Counts by status, channel, event type and error fingerprint."""
    counts = _store().stats()
    if as_json:
        output.document(counts)
        return
    output.line(f"total: {counts['total']}")
    for group in ("by_status", "by_channel", "by_type", "by_fingerprint"):
        output.line(f"{group.removeprefix('by_')}:")
        for name, count in sorted(counts[group].items(), key=lambda item: -item[1]):
            output.line(f"  {count:>6}  {name}")
