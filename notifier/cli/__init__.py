"""The ``notifier`` command line (typer): demo, worker, publish, preview, schema.

Sub-command groups live beside this module: ``dlq`` (dead letters),
``ops`` (health, stats), ``trace`` (per-delivery status) and ``web`` (the web process).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from notifier.cli import output
from notifier.errors import ConfigurationError, InvalidEventError, NotifierError, PublishError
from notifier.keys import QUEUES

__all__ = ["app", "main"]

app = typer.Typer(
    name="notifier",
    help="Turn booking-platform events into emails and SMS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ChannelName(StrEnum):
    """A delivery channel, as the CLI spells it."""

    email = "email"
    sms = "sms"


def _read_input(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    return Path(source).read_text(encoding="utf-8")


def parse_input(text: str) -> list[tuple[int, Any]]:
    """One JSON object, or JSON lines: (line number, parsed value) pairs.

    Raises InvalidEventError naming the line of any unparsable JSON.
    """
    stripped = text.strip()
    if not stripped:
        raise InvalidEventError(["input is empty: expected a JSON object or JSON lines"])
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, dict):
            return [(text[: text.index(stripped[0])].count("\n") + 1, whole)]
    items: list[tuple[int, Any]] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON: {exc}")
    if problems:
        raise InvalidEventError(problems)
    return items


@app.command()
def publish(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="JSON object or JSON lines.")],
) -> None:
    """Validate events and publish them; print one event_id per line.

    Exit 0: all published. 1: invalid input (nothing published). 2: broker unreachable.
    """
    from notifier.client import publish_many
    from notifier.events import parse_event
    from notifier.settings import get_settings

    try:
        special = get_settings().notifier_allow_special_domains
        items = parse_input(_read_input(source))
        problems: list[str] = []
        for number, item in items:
            try:
                parse_event(item, allow_special_domains=special)
            except InvalidEventError as exc:
                problems.extend(f"line {number}: {message}" for message in exc.errors)
        if problems:
            raise InvalidEventError(problems)
    except (InvalidEventError, ConfigurationError, OSError) as exc:
        messages = exc.errors if isinstance(exc, InvalidEventError) else [str(exc)]
        for message in messages:
            output.line(f"error: {message}", err=True)
        output.line("nothing was published", err=True)
        raise typer.Exit(1) from None
    try:
        event_ids = publish_many([item for _, item in items])
    except PublishError as exc:
        # The ones certainly taken (a refusal part way: Redis full) are printed
        # as on success; the message names the rest.
        for event_id in exc.published:
            output.line(event_id)
        output.line(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for event_id in event_ids:
        output.line(event_id)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the event contract."""
    from notifier.events import event_json_schema

    output.document(event_json_schema())


@app.command()
def preview(
    template: Annotated[str, typer.Argument(help="Template name, e.g. booking_confirmation_fan.")],
    event_file: Annotated[Path, typer.Option("--event", help="An event as a JSON file.")],
    channel: Annotated[ChannelName, typer.Option(help="email or sms.")] = ChannelName.email,
) -> None:
    """Render one template for an event, as the worker would send it."""
    from notifier.events import parse_event
    from notifier.planner import plan
    from notifier.settings import get_settings
    from notifier.templates import Renderer

    try:
        event = parse_event(event_file.read_text(encoding="utf-8"))
        deliveries = plan(event)
        chosen = [d for d in deliveries if d.template == template and d.channel == channel.value]
        if not chosen:
            used = ", ".join(sorted({f"{d.channel}:{d.template}" for d in deliveries}))
            raise NotifierError(
                f"a {event.type} event plans no {channel.value} with template {template!r} "
                f"(it plans: {used})"
            )
        renderer = Renderer(get_settings().notifier_template_dir)
        context = renderer.context(chosen[0])
        if channel is ChannelName.sms:
            output.text(renderer.sms(template, context))
            return
        rendered = renderer.email(template, context)
    except (NotifierError, OSError) as exc:
        output.line(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    output.text(
        f"Subject: {rendered.subject}\n\n{rendered.text}\n\n--- text/html ---\n{rendered.html}"
    )


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")
    ] = ",".join(QUEUES),
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", help="Worker processes.")
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
) -> None:
    """Run a worker; the same as ``celery -A worker worker -Q ...``."""
    from worker import app as celery_app

    argv = ["worker", "--queues", queues, "--loglevel", loglevel]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    celery_app.worker_main(argv)


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every delivery.")] = 60.0,
) -> None:
    """Run the service locally: Redis (embedded if needed), SMTP sink, Twilio stand-in, worker.

    Publishes one event of each type and exits 0 only when every planned delivery arrived.
    """
    from notifier.demo import run_demo

    raise typer.Exit(run_demo(timeout=timeout))


def main() -> None:
    """Console-script entry point."""
    app()


def _register_groups() -> None:
    from notifier.cli import dlq, ops, trace, web

    app.add_typer(dlq.app, name="dlq")
    app.command()(ops.health)
    app.command()(ops.stats)
    app.command()(trace.trace)
    app.command()(web.web)


_register_groups()
