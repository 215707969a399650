"""``notifier trace`` and ``notifier.status`` after a real worker, Redis, SMTP sink and Twilio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from notifier.app import NotifierCelery
from notifier.client import publish
from notifier.events import parse_event
from notifier.planner import plan
from notifier.redis_clients import redis_client
from notifier.settings import Settings
from notifier.status_store import StatusStore
from notifier.testing import SmtpSink, TwilioStandIn
from tests import samples
from tests.polling import eventually

pytestmark = pytest.mark.integration


def notifier(settings: Settings, *args: str, code: str | None = None) -> Any:
    """The ``notifier`` command (or ``code``) in a process of its own, against the test Redis."""
    environment = {**os.environ, "REDIS_URL": settings.redis_url, "NOTIFIER_LOG_FORMAT": "console"}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "notifier", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=environment, check=False
    )


def _trace(settings: Settings, event_id: str) -> dict[str, Any] | None:
    done = notifier(settings, "trace", event_id, "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_trace_json_shows_every_delivery_of_a_booking_with_its_final_state(
    app: NotifierCelery, settings: Settings, smtp_sink: SmtpSink, twilio: TwilioStandIn
) -> None:
    event = samples.booking_created()
    planned = plan(parse_event(event))

    publish(event, app=app)
    smtp_sink.wait_for(2, timeout=15)
    twilio.wait_for(1, timeout=15)

    def all_sent() -> dict[str, Any] | None:
        found = _trace(settings, event["event_id"])
        states = [d["state"] for d in found["deliveries"]] if found else []
        return found if states == ["sent"] * len(planned) else None

    trace = eventually(all_sent, timeout=15, what="every delivery sent in the trace")
    assert (trace["event_id"], trace["type"], trace["state"]) == (
        event["event_id"],
        "booking.created",
        "accepted",
    )
    assert [(d["delivery_id"], d["channel"]) for d in trace["deliveries"]] == [
        (d.delivery_id, d.channel) for d in planned
    ]
    sms = trace["deliveries"][2]
    assert sms["recipient"] == "+44*******456"
    assert sms["provider_id"].startswith("SM")
    assert [e["state"] for e in sms["timeline"]] == ["queued", "sent"]


def test_trace_delivery_shows_the_event_with_only_that_delivery(
    app: NotifierCelery, settings: Settings, smtp_sink: SmtpSink
) -> None:
    event = samples.user_registered()
    [email] = plan(parse_event(event))
    publish(event, app=app)
    smtp_sink.wait_for(1, timeout=15)
    eventually(lambda: _trace(settings, event["event_id"]), timeout=15, what="the trace")

    done = notifier(settings, "trace", "--delivery", email.delivery_id, "--json")

    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert [d["delivery_id"] for d in found["deliveries"]] == [email.delivery_id]
    assert found["event_id"] == event["event_id"]


def test_a_rejected_event_is_traced_rejected_with_its_dead_letter_id(
    app: NotifierCelery, settings: Settings
) -> None:
    event = samples.user_registered()
    event["user"]["email"] = "not an address"
    app.send_task("notifier.handle_event", args=[event], kwargs={}, queue="notifier.events")

    trace = eventually(
        lambda: _trace(settings, event["event_id"]), timeout=15, what="the rejected trace"
    )

    assert trace["state"] == "rejected"
    assert trace["reasons"]
    assert trace["dead_letter_id"]
    assert trace["deliveries"] == []


def test_the_human_trace_shows_the_timeline_with_the_recipient_redacted(
    app: NotifierCelery, settings: Settings, smtp_sink: SmtpSink
) -> None:
    event = samples.user_registered()
    publish(event, app=app)
    smtp_sink.wait_for(1, timeout=15)
    eventually(lambda: _trace(settings, event["event_id"]), timeout=15, what="the trace")

    done = notifier(settings, "trace", event["event_id"])

    assert done.returncode == 0, done.stderr
    assert "a***@example.com" in done.stdout
    assert "ada@example.com" not in done.stdout
    assert "queued" in done.stdout


def test_notifier_status_returns_the_trace_json(
    app: NotifierCelery, settings: Settings, smtp_sink: SmtpSink
) -> None:
    event = samples.user_registered()
    publish(event, app=app)
    smtp_sink.wait_for(1, timeout=15)
    trace = eventually(lambda: _trace(settings, event["event_id"]), timeout=15, what="the trace")

    done = notifier(
        settings,
        code=(
            "import json, notifier\n"
            f"print(json.dumps(notifier.status({event['event_id']!r}).model_dump(mode='json')))\n"
            "print(notifier.status('no-such-event'))\n"
        ),
    )

    assert done.returncode == 0, done.stderr
    found, unknown = done.stdout.splitlines()
    assert json.loads(found) == trace
    assert unknown == "None"


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        (["trace", "no-such-event"], 1),
        (["trace", "--delivery", "no-such-delivery"], 1),
        (["trace"], 2),
        (["trace", "an-event", "--delivery", "a-delivery"], 2),
    ],
)
def test_trace_exit_codes(settings: Settings, arguments: list[str], code: int) -> None:
    done = notifier(settings, *arguments)

    assert done.returncode == code
    assert done.stderr.startswith("error: ")


def test_became_final_is_true_once_under_concurrent_receipts(settings: Settings) -> None:
    client = redis_client(settings)
    store = StatusStore(client, ttl=600)
    sms = next(d for d in plan(parse_event(samples.booking_created())) if d.channel == "sms")
    store.write([store.transition_call(sms, "queued")])
    store.write(
        [store.transition_call(sms, "sent", provider_id="SMrace", sent_final=False, sid=True)]
    )
    states = ["delivered", "undelivered"] * 16

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: store.receipt("SMrace", s, ""), states))
    client.close()

    assert sum(r.became_final for r in results) == 1
    assert len({r.state for r in results}) == 1
