"""Retries, failover, SMS-to-email fallback, dead letters and replay, with real parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
import redis

from notifier import keys
from notifier.app import NotifierCelery
from notifier.client import publish
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn
from tests import samples
from tests.polling import eventually

pytestmark = pytest.mark.integration


def notifier_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``notifier`` command as an operator would, against the test Redis."""
    environment = {**os.environ, "REDIS_URL": settings.redis_url, "NOTIFIER_LOG_FORMAT": "console"}
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def _gaps(at: list[str]) -> list[float]:
    moments = [datetime.fromisoformat(stamp) for stamp in at]
    return [(later - earlier).total_seconds() for earlier, later in pairwise(moments)]


def test_with_the_hold_off_an_smtp_outage_ends_in_dead_letters_that_replay_delivers_once(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    settings = settings_for(
        notifier_retry_max_attempts=4,
        notifier_retry_backoff_base=0.1,
        notifier_retry_backoff_max=0.5,
        # No hold, no circuit: every attempt tries the server, then a dead letter.
        notifier_outage_hold_max=0,
        notifier_circuit_cooldown=0,
    )
    app = worker_for(settings)
    smtp_sink.stop()
    events = [samples.user_registered(), samples.booking_cancelled()]
    for event in events:
        publish(event, app=app)

    entries = eventually(
        lambda: list(dead_letters) if len(list(dead_letters)) == 3 else None,
        timeout=20,
        what="3 dead",
    )
    for entry in entries:
        assert isinstance(entry, DeadLetter)
        assert entry.attempts == 4
        assert [record.attempt for record in entry.history] == [1, 2, 3, 4]
        for retry, gap in enumerate(_gaps([r.at for r in entry.history]), start=1):
            ceiling = min(0.5, 0.1 * 2 ** (retry - 1))
            assert gap <= ceiling + 0.5, f"gap {gap:.3f}s before retry {retry} > {ceiling}s"
        assert "ProviderUnavailableError" in entry.error

    smtp_sink.start()
    first = notifier_cli(settings, "dlq", "replay", "--all", "--yes")
    assert first.returncode == 0, first.stderr
    assert "3 replayed" in first.stdout
    received = smtp_sink.wait_for(3, timeout=15)
    second = notifier_cli(settings, "dlq", "replay", "--all", "--yes")
    assert "0 replayed" in second.stdout

    assert sorted(m.rcpt_tos[0] for m in received) == sorted(
        ["ada@example.com", "ada@example.com", "grace@example.com"]
    )
    assert dead_letters.count() == 0


def test_an_smtp_outage_holds_the_emails_and_sends_them_when_the_server_is_back(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    settings = settings_for(
        notifier_retry_max_attempts=2,
        notifier_retry_backoff_base=0.1,
        notifier_retry_backoff_max=0.2,
        notifier_circuit_cooldown=0.5,  # the watch probes about every 0.5 s
    )
    app = worker_for(settings)
    smtp_sink.stop()
    for event in [samples.user_registered(), samples.booking_cancelled()]:
        publish(event, app=app)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        eventually(lambda: client.zcard(keys.HOLD_SINCE) == 3, timeout=20, what="3 held")
        smtp_sink.start()
        received = smtp_sink.wait_for(3, timeout=20)
        eventually(lambda: client.zcard(keys.HOLD_SINCE) == 0, timeout=10, what="the hold empty")
    finally:
        client.close()

    assert sorted(m.rcpt_tos[0] for m in received) == sorted(
        ["ada@example.com", "ada@example.com", "grace@example.com"]
    )
    assert dead_letters.count() == 0


def test_replaying_a_delivery_that_was_sent_meanwhile_sends_nothing(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, settings: Settings
) -> None:
    smtp_sink.reject_recipient("ada@example.com")
    publish(samples.user_registered(), app=app)
    [entry] = eventually(lambda: list(dead_letters), what="a dead letter")
    smtp_sink.clear()
    assert entry.delivery is not None
    # Replay the same entry twice from two copies, as two operators at once would.
    dead_letters.restore(entry)
    result = notifier_cli(settings, "dlq", "replay", entry.id)
    assert result.returncode == 0, result.stderr
    smtp_sink.wait_for(1, timeout=15)
    dead_letters.restore(entry)
    notifier_cli(settings, "dlq", "replay", entry.id)
    publish(samples.password_reset_requested(), app=app)  # a marker behind the replay

    received = smtp_sink.wait_for(2, timeout=15)
    subjects = [m.message()["Subject"] for m in received]
    assert subjects.count("Welcome to Appointment Booking System") == 1


def test_two_concurrent_replays_send_each_delivery_once(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, settings: Settings
) -> None:
    smtp_sink.reject_recipient("ada@example.com")
    for _ in range(5):
        publish(samples.user_registered(), app=app)
    eventually(lambda: dead_letters.count() == 5, what="5 dead letters")
    smtp_sink.clear()

    environment = {**os.environ, "REDIS_URL": settings.redis_url}
    command = [sys.executable, "-m", "notifier", "dlq", "replay", "--all", "--yes"]
    replays = [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in replays]

    received = smtp_sink.wait_for(5, timeout=15)
    publish(samples.password_reset_requested(), app=app)
    received = smtp_sink.wait_for(6, timeout=15)
    assert len(received) == 6
    counts = [int(out.strip().splitlines()[-1].split()[0]) for out in outputs]
    assert sum(counts) == 5


def test_a_replayed_delivery_that_fails_again_comes_back_with_its_history(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, settings: Settings
) -> None:
    smtp_sink.reject_recipient("ada@example.com")
    publish(samples.user_registered(), app=app)
    [first] = eventually(lambda: list(dead_letters), what="a dead letter")
    assert isinstance(first, DeadLetter)

    notifier_cli(settings, "dlq", "replay", first.id)

    def back_with_two_attempts() -> DeadLetter | None:
        entry = dead_letters.get(first.id)
        if entry is None:
            return None
        assert isinstance(entry, DeadLetter)
        return entry if entry.attempts == 2 else None

    again = eventually(back_with_two_attempts, what="the entry back with two attempts")

    assert again.first_failed_at == first.first_failed_at
    assert len(again.history) == 2


def test_the_fallback_smtp_provider_delivers_when_the_primary_is_down(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    with SmtpSink() as primary:
        primary.stop()  # a port where nothing answers
        settings = settings_for(
            mail_server=primary.host,
            mail_port=primary.port,
            mail_fallback_server=smtp_sink.host,
            mail_fallback_port=smtp_sink.port,
            mail_fallback_use_tls=False,
            notifier_retry_max_attempts=1,  # no retry: failover happens within the attempt
        )
        app = worker_for(settings)
        publish(samples.user_registered(), app=app)
        smtp_sink.wait_for(1, timeout=15)
        client = redis.Redis.from_url(settings.redis_url)
        assert client.exists(keys.circuit("smtp-primary"))  # the next one skips the primary
        client.close()

        publish(samples.user_registered(), app=app)
        smtp_sink.wait_for(2, timeout=15)
    assert dead_letters.count() == 0


def test_a_permanently_failing_sms_falls_back_to_email(
    app: NotifierCelery,
    smtp_sink: SmtpSink,
    twilio: TwilioStandIn,
    dead_letters: DeadLetterStore,
) -> None:
    twilio.fail_next(400, 21211, "The 'To' number is not a valid phone number.")
    publish(samples.booking_created(), app=app)

    received = smtp_sink.wait_for(3, timeout=15)  # fan + admin emails + the SMS's fallback
    [fallback] = [m for m in received if "Your booking for Jazz Night" in m.data.decode()]
    assert fallback.rcpt_tos == ("ada@example.com",)
    message = fallback.message()
    assert message["Subject"] == "Booking Confirmation"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content().replace("\r\n", "\n")
    assert text.startswith("Appointment Booking Confirmation\nHello Ada Lovelace,")
    [entry] = list(dead_letters)
    assert entry.channel == "sms"
    assert entry.fallback is not None


def test_an_expired_reset_link_is_not_sent(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore
) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    event = samples.password_reset_requested(
        occurred_at=past.isoformat(), expires_at=(past + timedelta(hours=1)).isoformat()
    )
    publish(event, app=app)

    [entry] = eventually(lambda: list(dead_letters), what="an expired entry")
    assert entry.status == "expired"
    assert entry.attempts == 0
    assert smtp_sink.messages == []


def test_dlq_list_redacts_and_show_does_not(
    app: NotifierCelery, smtp_sink: SmtpSink, dead_letters: DeadLetterStore, settings: Settings
) -> None:
    smtp_sink.reject_recipient("ada@example.com")
    publish(samples.user_registered(), app=app)
    [entry] = eventually(lambda: list(dead_letters), what="a dead letter")

    listing = json.loads(notifier_cli(settings, "dlq", "list", "--json").stdout)
    shown = json.loads(notifier_cli(settings, "dlq", "show", entry.id, "--json").stdout)
    stats = json.loads(notifier_cli(settings, "dlq", "stats", "--json").stdout)

    assert listing[0]["recipient"] == "a***@example.com"
    assert "ada@example.com" not in json.dumps(listing)
    assert listing[0]["status"] == "failed"
    assert listing[0]["attempts"] == 1
    assert shown["recipient"] == "ada@example.com"
    assert shown["delivery"]["event"]["user"]["email"] == "ada@example.com"
    assert stats["total"] == 1
    assert stats["by_channel"] == {"email": 1}
