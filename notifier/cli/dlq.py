"""``notifier dlq``: list, inspect, replay, purge and count dead letters.

A thin wrapper over ``DeadLetterStore`` and ``pipeline.replay``. Listings
redact addresses; ``show`` prints the whole entry for the operator who asks.
A corrupt entry (a document that is not a dead letter) is listed and counted
as ``corrupt``, shown raw, purged like any other, and never replayed. All
output goes through ``notifier.cli.output``: stored text is printed inert.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Annotated

import typer

from notifier import when
from notifier.cli import output
from notifier.cli.progress import ProgressLine
from notifier.deadletter import (
    CORRUPT_REASON,
    CorruptEntry,
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


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 ('2026-11-26T10:00Z', '2026-11-26') or a duration ago ('30m', '2h', '1d')."""
    try:
        return when.parse_when(value, now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _store() -> DeadLetterStore:
    from notifier.redis_clients import redis_client
    from notifier.settings import get_settings

    store = DeadLetterStore(redis_client(get_settings()))
    _index_what_is_missing(store)
    return store


def _index_what_is_missing(store: DeadLetterStore) -> None:
    """The migration from a store written by an older notifier: once, with progress."""
    missing = store.unindexed()
    if not missing:
        return
    output.line(
        f"indexing {missing:,} dead letters that have no counts yet "
        "(written by an older notifier, or by hand): once",
        err=True,
    )
    with ProgressLine("indexed", missing) as progress:
        store.reindex(lambda done, _: progress.update(done), missing)


ChannelOpt = Annotated[str | None, typer.Option("--channel", help="email, sms or callback.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Event type, e.g. booking.created.")]
StatusOpt = Annotated[
    str | None,
    typer.Option(
        "--status", help="failed, rejected, expired, rate_limited, undelivered or corrupt."
    ),
]
ErrorOpt = Annotated[str | None, typer.Option("--error", help="Text the error contains.")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="ISO 8601 time or a duration: 30m, 2h, 1d.")
]
UntilOpt = Annotated[
    str | None,
    typer.Option("--until", help="Failed at or before: ISO 8601 or a duration ago (paging)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every entry matching the filters.")]


def _filter(
    channel: str | None,
    event_type: str | None,
    status: str | None,
    error: str | None,
    since: str | None,
    until: str | None = None,
) -> Filter:
    return Filter(
        channel=channel,
        event_type=event_type,
        status=status,
        error=error,
        since=parse_when(since) if since else None,
        until=parse_when(until) if until else None,
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
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many first.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters, most recent first (addresses redacted), with a '50 of N' footer.

    Page on with --offset, or with --until the last failed_at shown. With
    --json the output is a JSON array and the footer goes to stderr.
    """
    where = _filter(channel, event_type, status, error, since, until)
    page = _store().page(where, offset, limit)
    entries = page.entries
    footer = f"{len(entries):,} of {page.total:,}" + (
        f" (after the first {offset:,})" if offset else ""
    )
    if as_json:
        output.document([summary(entry) for entry in entries])
        output.line(footer, err=True)
        return
    if not page.total:
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
    if entries:
        output.table(table)
    output.line(footer)


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
    if entry.callback is not None:
        # What `dlq replay` puts back on notifier.callbacks, as it will be POSTed.
        output.line(f"callback:   {entry.callback.model_dump_json()}")
    else:
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
) -> Iterator[Entry]:
    """The entries a command means, streamed: by id (warning for each unknown), or --all."""
    if everything:
        yield from store.matching(where)
        return
    for entry_id in ids or []:
        entry = store.get(entry_id)
        if entry is None:
            output.line(f"warning: no dead letter {entry_id}", err=True)
        else:
            yield entry


def _require_a_choice(ids: list[str] | None, everything: bool, verb: str) -> None:
    """Exit 2 (a usage error) unless exactly one of IDs and --all is given."""
    if not ids and not everything:
        output.line(
            f"error: nothing to {verb}: give entry IDs, or --all (with optional filters); "
            "see `notifier dlq list`",
            err=True,
        )
        raise typer.Exit(2)
    if ids and everything:
        output.line(f"error: give entry IDs or --all, not both: nothing to {verb}", err=True)
        raise typer.Exit(2)


def _confirm_all(count: int, verb: str, yes: bool) -> None:
    """--all changes every match: asked on a terminal, refused off one without --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        output.line(
            f"error: {verb} --all changes {count:,} dead letters: add --yes "
            "(not run from a terminal, so it cannot ask)",
            err=True,
        )
        raise typer.Exit(2)
    if not typer.confirm(f"{verb} {count:,} dead letters?", default=False, err=True):
        output.line("nothing done", err=True)
        raise typer.Exit(1)


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
    until: UntilOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be replayed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Replay --all without asking.")] = False,
) -> None:
    """Send dead letters through the pipeline again; they leave the list.

    Each result is printed as it happens (stdout); progress, rate and time
    left on stderr every second. Safe to run twice, even at once: each entry
    is taken by one replay only, and the idempotency ledger stops a delivery
    that was already sent. Interrupted (Ctrl-C), it leaves the rest in the
    store. --all asks first on a terminal; elsewhere it needs --yes.
    """
    _require_a_choice(ids, everything, "replay")
    store = _store()
    where = _filter(channel, event_type, status, error, since, until)
    total = store.page(where, 0, 0).total if everything else len(ids or [])
    entries = _chosen(store, ids, everything, where)
    if dry_run:
        _dry_run(entries)
        return
    if everything:
        _confirm_all(total, "replay", yes)
    from notifier.app import create_app
    from notifier.logs import configure_logging
    from notifier.pipeline import replay_many
    from notifier.settings import get_settings

    settings = get_settings()
    # This command sends through the pipeline, which logs: redacted, as a worker's.
    configure_logging(settings)
    runtime = create_app(settings).runtime
    replayed = failed = 0
    try:
        with ProgressLine("replayed", total) as progress:
            for result in store.replay_stream(entries, lambda batch: replay_many(batch, runtime)):
                if result.error:
                    failed += 1
                    output.line(f"failed {result.entry_id}: {result.error}")
                else:
                    replayed += 1
                    output.line(f"replayed {result.entry_id}: {result.done}")
                progress.update(replayed + failed)
    except KeyboardInterrupt:
        output.line(
            f"interrupted: {replayed} replayed, {failed} could not be replayed; "
            "the rest are still in the store",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        runtime.close()
    output.line(f"{replayed} replayed, {failed} could not be replayed")
    if failed:
        raise typer.Exit(1)


def _dry_run(entries: Iterable[Entry]) -> None:
    replayable = 0
    for entry in entries:
        if isinstance(entry, CorruptEntry):
            output.line(f"would fail {entry.id}: {CORRUPT_REASON}")
        else:
            replayable += 1
            # docs/DESIGN.md §10: a second try, under a new delivery id the ledger lets through.
            resend = (
                f": sent again as {entry.delivery.delivery_id}:r<n>"
                if entry.status == "undelivered" and entry.delivery is not None
                else ""
            )
            output.line(
                f"would replay {entry.id} "
                f"({entry.status}, {entry.event_type}, {entry.channel}){resend}"
            )
    output.line(f"{replayable} would be replayed")


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
    until: UntilOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
) -> None:
    """Delete dead letters for good (requires --yes)."""
    _require_a_choice(ids, everything, "purge")
    store = _store()
    where = _filter(channel, event_type, status, error, since, until)
    if not yes:
        count = (
            store.page(where, 0, 0).total
            if everything
            else sum(1 for _ in _chosen(store, ids, everything, where))
        )
        output.line(f"{count} entries match; add --yes to delete them", err=True)
        raise typer.Exit(1)
    output.line(f"{store.purge(_chosen(store, ids, everything, where))} purged")


@app.command()
def stats(
    channel: ChannelOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    error: ErrorOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts by status, channel, event type and error fingerprint (same filters as list).

    Without filters, read from counters kept as entries come and go.
    """
    counts = _store().stats(_filter(channel, event_type, status, error, since, until))
    if as_json:
        output.document(counts)
        return
    output.line(f"total: {counts['total']}")
    for group in ("by_status", "by_channel", "by_type", "by_fingerprint"):
        output.line(f"{group.removeprefix('by_')}:")
        for name, count in sorted(counts[group].items(), key=lambda item: -item[1]):
            output.line(f"  {count:>6}  {name}")
    if counts.get("removed_by_retention"):
        output.line(f"removed by NOTIFIER_DLQ_RETENTION so far: {counts['removed_by_retention']}")


@app.command()
def reindex() -> None:
    """Count and index every entry that has no counts yet (a store from an older notifier).

    Every other dlq command does this on its own when it finds such entries;
    this runs it on purpose. Safe beside running workers, and to run twice.
    """
    from notifier.redis_clients import redis_client
    from notifier.settings import get_settings

    store = DeadLetterStore(redis_client(get_settings()))
    missing = store.unindexed()
    with ProgressLine("indexed", missing) as progress:
        indexed = store.reindex(lambda done, _: progress.update(done), missing)
    output.line(f"{indexed} indexed, {store.count()} dead letters in all")
