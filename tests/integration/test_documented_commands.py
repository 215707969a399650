"""The commands the README and docs/operations.md document, run as a newcomer or an
operator would run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.events import parse_event
from notifier.planner import plan
from notifier.settings import Settings
from notifier.testing import SmtpSink, TwilioStandIn, free_port
from tests import samples
from tests.integration.conftest import TWILIO_NUMBER

pytestmark = pytest.mark.integration


def _environment(settings: Settings, smtp_sink: SmtpSink, twilio: TwilioStandIn) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "MAIL_SERVER": smtp_sink.host,
        "MAIL_PORT": str(smtp_sink.port),
        "MAIL_USE_TLS": "false",
        "MAIL_DEFAULT_SENDER": "Bookings <bookings@example.com>",
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_PHONE_NUMBER": TWILIO_NUMBER,
        "TWILIO_API_BASE_URL": twilio.base_url,
        "NOTIFIER_SMS_MPS": "0",
        "NOTIFIER_METRICS_PORT": "0",
    }


@pytest.fixture
def celery_worker_process(
    settings: Settings, smtp_sink: SmtpSink, twilio: TwilioStandIn, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A worker worker -Q ...`` exactly as docs/operations.md says, prefork pool."""
    command = [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "-Q", "notifier.events,notifier.email,notifier.sms", "-c", "2",
    ]  # fmt: skip
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        command,
        env=_environment(settings, smtp_sink, twilio),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_the_documented_worker_command_delivers_every_event_type(
    celery_worker_process: subprocess.Popen[bytes],
    settings: Settings,
    smtp_sink: SmtpSink,
    twilio: TwilioStandIn,
    tmp_path: Path,
) -> None:
    events = [make() for make in samples.ALL.values()]
    deliveries = [d for event in events for d in plan(parse_event(event))]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(json.dumps(event) for event in events) + "\n")

    published = subprocess.run(
        [sys.executable, "-m", "notifier", "publish", str(source)],
        env={**os.environ, "REDIS_URL": settings.redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert published.returncode == 0, published.stderr
    assert published.stdout.split() == [event["event_id"] for event in events]
    emails = [d for d in deliveries if d.channel == "email"]
    texts = [d for d in deliveries if d.channel == "sms"]
    received = smtp_sink.wait_for(len(emails), timeout=60)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(d.address for d in emails)
    assert len(twilio.wait_for(len(texts), timeout=30)) == len(texts)
    # Prefork: each pool process keeps one SMTP connection, whatever the number of emails.
    assert smtp_sink.connections <= 2


def test_publish_of_an_unreachable_broker_exits_2(tmp_path: Path) -> None:
    source = tmp_path / "event.json"
    source.write_text(json.dumps(samples.user_registered()))

    result = subprocess.run(
        [sys.executable, "-m", "notifier", "publish", str(source)],
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert result.returncode == 2
    assert "broker did not accept" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("redis", ["embedded", "configured"])
def test_the_demo_delivers_everything_and_leaves_nothing_running(
    redis: str, settings: Settings, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0" if redis == "embedded" else settings.redis_url
    result = subprocess.run(
        [sys.executable, "-m", "notifier", "demo"],
        env={**os.environ, "REDIS_URL": url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "8/8 deliveries arrived." in result.stdout
    # The SMS end `delivered`: the stand-in's receipts reached the demo's web process.
    rows = result.stdout.splitlines()
    assert sum(" sms " in row and " delivered " in row for row in rows) == 2
    assert ("embedded" in result.stdout) == (redis == "embedded")
    assert len(list((tmp_path / "var" / "demo").glob("*/mail/*.eml"))) == 6
    assert len(list((tmp_path / "var" / "demo").glob("*/sms/*.json"))) == 2
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""
